//! Client authentication read from files that rotate: a client secret
//! file, a `private_key_jwt` key file (and its certificate file), a
//! mutual-TLS certificate and key. Each fetch gets the
//! [`ClientAuth`] of the files' current contents (see `watched.rs` for how
//! a change is noticed and what a bad file does).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use token_core::Secret;

use crate::certificate::{Certificate, ClientCertificate};
use crate::client_auth::ClientAuth;
use crate::error::ConfigError;
use crate::jwt::{PrivateKey, SigningAlgorithm};
use crate::transport;
use crate::watched::{parse_secret, Reread, WatchedFiles};

/// A `private_key_jwt` key read from a PEM file, re-read when the file
/// changes (key rotation without a restart), with the algorithm, key id and
/// certificate options of a [`PrivateKey`].
///
/// ```
/// use token_http::{PrivateKeyFile, SigningAlgorithm};
///
/// let key = PrivateKeyFile::new("/var/run/secrets/client/key.pem", SigningAlgorithm::Rs256)
///     .with_key_id("2026-12")
///     .with_certificate_file("/var/run/secrets/client/cert.pem");
/// # let _ = key;
/// ```
///
/// The key id stays the same across rotations: give the new key the same
/// `kid` at the server, or none. With a certificate file, the key and the
/// certificate are read and replaced together, so a rotation that writes
/// one file before the other keeps the last matching pair until both agree.
#[derive(Clone)]
pub struct PrivateKeyFile {
    path: PathBuf,
    alg: SigningAlgorithm,
    kid: Option<String>,
    certificate: Option<PathBuf>,
    x5t: bool,
    x5c: bool,
}

impl PrivateKeyFile {
    /// The key at `path` (PEM; as [`PrivateKey::from_pem`] reads it), for
    /// `alg`.
    pub fn new(path: impl Into<PathBuf>, alg: SigningAlgorithm) -> Self {
        Self {
            path: path.into(),
            alg,
            kid: None,
            certificate: None,
            x5t: false,
            x5c: false,
        }
    }

    /// Sets the key id (`kid`), as [`PrivateKey::with_key_id`].
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Names the certificate in `path` (PEM chain, leaf first; it may be the
    /// key's own file) in every assertion's header, as
    /// [`PrivateKey::with_certificate`]; re-read with the key.
    pub fn with_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.certificate = Some(path.into());
        self
    }

    /// Also sends `x5t`, as [`PrivateKey::with_x5t`]. Defaults to off.
    pub fn with_x5t(mut self, on: bool) -> Self {
        self.x5t = on;
        self
    }

    /// Also sends `x5c`, as [`PrivateKey::with_x5c`]. Defaults to off.
    pub fn with_x5c(mut self, on: bool) -> Self {
        self.x5c = on;
        self
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> impl Fn(&[&[u8]]) -> Result<PrivateKey, String> + Send + Sync + 'static {
        let spec = self.clone();
        move |contents| {
            let text = |i: usize| {
                std::str::from_utf8(contents.get(i).copied().unwrap_or_default())
                    .map_err(|_| "it is not UTF-8 text (PEM)".to_owned())
            };
            let mut key = PrivateKey::from_pem(text(0)?, spec.alg).map_err(|e| e.to_string())?;
            if let Some(kid) = &spec.kid {
                key = key.with_key_id(kid.clone());
            }
            if spec.certificate.is_some() {
                let certificate = Certificate::from_pem(text(1)?).map_err(|e| e.to_string())?;
                key = key
                    .with_certificate(certificate)
                    .map_err(|e| e.to_string())?
                    .with_x5t(spec.x5t)
                    .with_x5c(spec.x5c);
            }
            Ok(key)
        }
    }
}

impl fmt::Debug for PrivateKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyFile")
            .field("path", &self.path)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// What the builder was told: files, not read yet.
#[derive(Clone, Debug)]
pub(crate) enum FileAuthSpec {
    ClientSecret {
        post: bool,
        path: PathBuf,
    },
    PrivateKeyJwt(PrivateKeyFile),
    Mtls {
        self_signed: bool,
        certificate: PathBuf,
        key: PathBuf,
    },
}

impl FileAuthSpec {
    pub(crate) fn is_mtls(&self) -> bool {
        matches!(self, Self::Mtls { .. })
    }

    /// Reads and checks the files (build time).
    pub(crate) fn load(
        self,
        connect_timeout: Duration,
        root_pems: &[String],
    ) -> Result<FileAuth, ConfigError> {
        let invalid = |path: &Path, reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        match self {
            Self::ClientSecret { post, path } => {
                let file = WatchedFiles::load(
                    "client secret file",
                    vec![path.clone()],
                    Arc::new(parse_secret),
                )
                .map_err(|e| invalid(&path, e))?;
                Ok(FileAuth::ClientSecret { post, file })
            }
            Self::PrivateKeyJwt(spec) => {
                let mut paths = vec![spec.path.clone()];
                paths.extend(spec.certificate.clone());
                let what = if spec.certificate.is_some() {
                    "private key and certificate files"
                } else {
                    "private key file"
                };
                let file = WatchedFiles::load(what, paths, Arc::new(spec.parse()))
                    .map_err(|e| invalid(&spec.path, e))?;
                Ok(FileAuth::PrivateKeyJwt(file))
            }
            Self::Mtls {
                self_signed,
                certificate,
                key,
            } => {
                let roots = root_pems.to_vec();
                let parse = move |contents: &[&[u8]]| {
                    let text = |i: usize| {
                        std::str::from_utf8(contents.get(i).copied().unwrap_or_default())
                            .map_err(|_| "it is not UTF-8 text (PEM)".to_owned())
                    };
                    let certificate = ClientCertificate::from_pem_parts(text(0)?, text(1)?)
                        .map_err(|e| e.to_string())?;
                    let client =
                        transport::build_client(connect_timeout, Some(&certificate), &roots)
                            .map_err(|e| e.to_string())?;
                    Ok(MtlsIdentity {
                        certificate,
                        client,
                    })
                };
                let file = WatchedFiles::load(
                    "mutual-TLS certificate and key files",
                    vec![certificate.clone(), key],
                    Arc::new(parse),
                )
                .map_err(|e| invalid(&certificate, e))?;
                Ok(FileAuth::Mtls { self_signed, file })
            }
        }
    }
}

/// A mutual-TLS certificate and the HTTP client that presents it, replaced
/// together.
pub(crate) struct MtlsIdentity {
    certificate: ClientCertificate,
    client: reqwest::Client,
}

/// Client authentication whose secret, key or certificate lives in files.
#[derive(Debug)]
pub(crate) enum FileAuth {
    ClientSecret {
        post: bool,
        file: WatchedFiles<Secret>,
    },
    PrivateKeyJwt(WatchedFiles<PrivateKey>),
    Mtls {
        self_signed: bool,
        file: WatchedFiles<MtlsIdentity>,
    },
}

/// The authentication for one fetch, and for mutual TLS the client that
/// presents the certificate.
pub(crate) struct CurrentAuth {
    pub(crate) auth: ClientAuth,
    pub(crate) client: Option<reqwest::Client>,
    /// Which contents of the files it was made from.
    pub(crate) generation: u64,
}

impl FileAuth {
    /// The authentication of the contents in use, without looking at the
    /// files.
    pub(crate) fn loaded(&self) -> CurrentAuth {
        match self {
            Self::ClientSecret { post, file } => secret_auth(*post, file.snapshot()),
            Self::PrivateKeyJwt(file) => key_auth(file.snapshot()),
            Self::Mtls { self_signed, file } => mtls_auth(*self_signed, file.snapshot()),
        }
    }

    /// The authentication for a fetch: files whose `stat` changed are read
    /// again first.
    pub(crate) async fn current(&self) -> CurrentAuth {
        match self {
            Self::ClientSecret { post, file } => secret_auth(*post, file.current_snapshot().await),
            Self::PrivateKeyJwt(file) => key_auth(file.current_snapshot().await),
            Self::Mtls { self_signed, file } => {
                mtls_auth(*self_signed, file.current_snapshot().await)
            }
        }
    }

    /// Reads the files whatever their `stat` says (after the server refused
    /// the client): whether the contents in use now are other than those of
    /// generation `used` (the ones the refused request was made from).
    pub(crate) async fn reread(&self, used: u64) -> bool {
        let outcome = match self {
            Self::ClientSecret { file, .. } => file.reread_since(used).await,
            Self::PrivateKeyJwt(file) => file.reread_since(used).await,
            Self::Mtls { file, .. } => file.reread_since(used).await,
        };
        outcome == Reread::Changed
    }

    /// Every file read.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let mut paths = match self {
            Self::ClientSecret { file, .. } => file.paths().to_vec(),
            Self::PrivateKeyJwt(file) => file.paths().to_vec(),
            Self::Mtls { file, .. } => file.paths().to_vec(),
        };
        paths.dedup();
        paths
    }
}

fn secret_auth(post: bool, (secret, generation): (Arc<Secret>, u64)) -> CurrentAuth {
    let secret = Secret::clone(&secret);
    CurrentAuth {
        auth: if post {
            ClientAuth::ClientSecretPost(secret)
        } else {
            ClientAuth::ClientSecretBasic(secret)
        },
        client: None,
        generation,
    }
}

fn key_auth((key, generation): (Arc<PrivateKey>, u64)) -> CurrentAuth {
    CurrentAuth {
        auth: ClientAuth::PrivateKeyJwt(PrivateKey::clone(&key)),
        client: None,
        generation,
    }
}

fn mtls_auth(self_signed: bool, (identity, generation): (Arc<MtlsIdentity>, u64)) -> CurrentAuth {
    let certificate = identity.certificate.clone();
    CurrentAuth {
        auth: if self_signed {
            ClientAuth::SelfSignedTlsClientAuth(certificate)
        } else {
            ClientAuth::TlsClientAuth(certificate)
        },
        client: Some(identity.client.clone()),
        generation,
    }
}
