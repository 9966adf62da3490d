//! [`ProfileSpec::resolve`]: from a spec to a [`Resolved`] profile whose
//! settings make exactly one credential, with its secrets read; every
//! problem one sentence.

use std::path::Path;

use token_core::Secret;
use zeroize::Zeroizing;

use crate::error::{Error, Missing};
use crate::spec::{Format, ManagedKind, ProfileSpec};
use crate::store::StoreSpec;

/// How errors name settings: as the file's keys (`client_secret_env`) or
/// as a command line's flags (`--client-secret-env`). A command that lays
/// flags over no profile says [`Naming::Flags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Naming {
    /// `client_secret_env`, as in the profiles file.
    #[default]
    FileKeys,
    /// `--client-secret-env`, as on `tokencache get`'s command line.
    Flags,
}

impl Naming {
    /// `key` (a file key) in this naming.
    pub fn key(self, key: &str) -> String {
        match self {
            Self::FileKeys => key.to_owned(),
            Self::Flags => format!("--{}", key.replace('_', "-")),
        }
    }
}

/// A profile whose settings make one credential: the spec (flags laid
/// over), its secrets read from their environment variables or files, and
/// the store it names. Built by [`ProfileSpec::resolve`]; turned into a
/// cache by [`build`](crate::build).
#[derive(Clone)]
pub struct Resolved {
    pub(crate) spec: ProfileSpec,
    pub(crate) naming: Naming,
    /// The token endpoint once known (given, discovered, or from the
    /// environment).
    pub(crate) token_url: Option<String>,
    pub(crate) client_id: String,
    pub(crate) secret: Option<Secret>,
    /// The first refresh token (refresh-token grant).
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) store: StoreSpec,
    /// The DPoP key read from `dpop_key_file`.
    pub(crate) dpop: Option<token_http::DpopKey>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .field("store", &self.store)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// How its errors name settings (flags when no profile was named).
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The spec it was resolved from.
    pub fn spec(&self) -> &ProfileSpec {
        &self.spec
    }

    /// The client id (for a managed identity, `managed-identity:KIND:ID`,
    /// what `inspect` shows).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The store the profile caches in.
    pub fn store(&self) -> &StoreSpec {
        &self.store
    }

    /// How `tokencache get` prints the token.
    pub fn format(&self) -> Format {
        self.spec.format.unwrap_or(Format::Token)
    }

    /// The DPoP key tokens are bound to (`dpop_key_file`), for signing
    /// proofs of resource requests.
    pub fn dpop_key(&self) -> Option<&token_http::DpopKey> {
        self.dpop.as_ref()
    }

    /// The managed identity, when the profile uses one.
    pub fn managed_identity(&self) -> Option<ManagedKind> {
        self.spec.managed_identity
    }
}

impl ProfileSpec {
    /// Checks that the settings make one credential and reads its secrets.
    /// `naming` says how errors name settings.
    pub fn resolve(self, naming: Naming) -> Result<Resolved, Error> {
        let key = |k: &str| naming.key(k);
        let store = match &self.store {
            Some(s) => StoreSpec::parse(s)?,
            None => StoreSpec::Sled(None),
        };
        if let Some(kind) = self.managed_identity {
            if let Some(name) = self.not_for_managed_identity() {
                return Err(Error::config(format!(
                    "the profile sets {name}, which a managed identity does not use: remove it, \
                     or do not use {} with this profile",
                    key("managed_identity")
                )));
            }
            let client_id = format!(
                "managed-identity:{kind}:{}",
                self.identity.as_deref().unwrap_or("default")
            );
            return Ok(Resolved {
                spec: self,
                naming,
                token_url: None,
                client_id,
                secret: None,
                refresh_token: None,
                store,
                dpop: None,
            });
        }
        if self.from_env && (self.token_url.is_some() || self.issuer.is_some()) {
            return Err(Error::config(format!(
                "from_env takes the token endpoint from the environment: drop {}/{}, or {}",
                key("token_url"),
                key("issuer"),
                key("from_env")
            )));
        }
        if self.token_url.is_some() && self.issuer.is_some() {
            return Err(Error::incomplete(
                None,
                format!(
                    "{} and {} are two ways to name the token endpoint: give one",
                    key("token_url"),
                    key("issuer")
                ),
            ));
        }
        if self.token_url.is_none() && self.issuer.is_none() && !self.from_env {
            return Err(Error::incomplete(
                Some(Missing::TokenEndpoint),
                format!(
                    "no token endpoint: give {} URL, {} URL or {}",
                    key("token_url"),
                    key("issuer"),
                    key("from_env")
                ),
            ));
        }
        let client_id = match &self.client_id {
            Some(id) => id.clone(),
            // Known once the credential is built from the environment.
            None if self.from_env => String::new(),
            None => {
                return Err(Error::incomplete(
                    Some(Missing::ClientId),
                    format!("no client id: give {} ID", key("client_id")),
                ))
            }
        };
        let secret = match (&self.client_secret_env, &self.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(Error::incomplete(
                    None,
                    format!(
                        "{} and {} are two sources of one client secret: give one",
                        key("client_secret_env"),
                        key("client_secret_file")
                    ),
                ))
            }
            (Some(var), None) => Some(secret_from_env(var, &key("client_secret_env"))?),
            (None, Some(path)) => Some(secret_from_file(path, "client secret")?),
            (None, None) => None,
        };
        let refresh_token = match (&self.refresh_token_env, &self.refresh_token_file) {
            (Some(_), Some(_)) => {
                return Err(Error::incomplete(
                    None,
                    format!(
                        "{} and {} are two sources of one refresh token: give one",
                        key("refresh_token_env"),
                        key("refresh_token_file")
                    ),
                ))
            }
            (Some(var), None) => Some(secret_from_env(var, &key("refresh_token_env"))?),
            (None, Some(path)) => Some(secret_from_file(path, "refresh token")?),
            (None, None) => None,
        };
        if self.from_env && refresh_token.is_some() {
            return Err(Error::config(
                "from_env builds a client credentials credential: it does not take a refresh token",
            ));
        }
        if self.from_env && (self.dpop_key_file.is_some() || self.dpop_generate_key.is_some()) {
            return Err(Error::config(format!(
                "DPoP ({}) is not supported with from_env; name the endpoint and client instead",
                key("dpop_key_file")
            )));
        }
        let dpop = match (&self.dpop_key_file, &self.dpop_generate_key) {
            (Some(_), Some(_)) => {
                return Err(Error::config(format!(
                    "{} and {} are two sources of one DPoP key: give one",
                    key("dpop_key_file"),
                    key("dpop_generate_key")
                )))
            }
            (Some(path), None) => {
                let dpop = token_http::DpopKey::from_file(path)
                    .map_err(|e| Error::config(format!("{e} (from {})", key("dpop_key_file"))))?;
                if let Some(warning) = readable_by_others(path, "DPoP key") {
                    crate::error::notices().warning(warning);
                }
                Some(dpop)
            }
            (None, Some(alg)) => {
                let alg = token_http::DpopAlgorithm::parse(alg).ok_or_else(|| {
                    Error::config(format!(
                        "{} `{alg}` is not one of: ES256, Ed25519",
                        key("dpop_generate_key")
                    ))
                })?;
                Some(token_http::DpopKey::generate(alg).map_err(|e| Error::config(e.to_string()))?)
            }
            (None, None) => None,
        };
        Ok(Resolved {
            token_url: self.token_url.clone(),
            spec: self,
            naming,
            client_id,
            secret,
            refresh_token,
            store,
            dpop,
        })
    }
}

fn secret_from_env(var: &str, setting: &str) -> Result<Secret, Error> {
    match std::env::var_os(var) {
        None => Err(Error::config(format!(
            "the environment variable {var} (from {setting}) is not set"
        ))),
        Some(v) => {
            let v = Zeroizing::new(v.into_string().map_err(|_| {
                Error::config(format!(
                    "the environment variable {var} is not valid Unicode"
                ))
            })?);
            if v.is_empty() {
                return Err(Error::config(format!(
                    "the environment variable {var} (from {setting}) is empty"
                )));
            }
            Ok(Secret::new(v.as_str()))
        }
    }
}

pub(crate) fn secret_from_file(path: &Path, what: &str) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            Error::config(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(Error::config(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    if let Some(warning) = readable_by_others(path, what) {
        crate::error::notices().warning(warning);
    }
    Ok(Secret::new(trimmed))
}

/// A warning when the secret file at `path` can be read by its group or by
/// others (mode `& 0o044`): anyone on the host with that access holds the
/// secret. `None` when only its owner can, or off Unix.
pub fn readable_by_others(path: &Path, what: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o044 != 0).then(|| {
            format!(
                "the {what} file {} is readable by {} (mode {:03o}); make it readable by its owner only (chmod 600)",
                path.display(),
                if mode & 0o004 != 0 { "everyone" } else { "its group" },
                mode & 0o777
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, what);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_settings_are_named_as_flags_or_file_keys() {
        let e = ProfileSpec::default()
            .resolve(Naming::Flags)
            .expect_err("no endpoint");
        assert_eq!(e.missing(), Some(Missing::TokenEndpoint));
        assert!(e.message().contains("--token-url"), "{e}");
        let e = ProfileSpec::default()
            .resolve(Naming::FileKeys)
            .expect_err("no endpoint");
        assert!(
            e.message().contains("token_url") && !e.message().contains("--"),
            "{e}"
        );
        let spec = ProfileSpec {
            token_url: Some("http://127.0.0.1:1/token".into()),
            ..ProfileSpec::default()
        };
        let e = spec.resolve(Naming::FileKeys).expect_err("no client id");
        assert_eq!(e.missing(), Some(Missing::ClientId));
    }

    #[test]
    fn a_managed_identity_refuses_client_settings_by_name() {
        let spec = ProfileSpec {
            managed_identity: Some(ManagedKind::Gcp),
            token_url: Some("http://127.0.0.1:1/token".into()),
            ..ProfileSpec::default()
        };
        let e = spec.resolve(Naming::FileKeys).expect_err("mixed");
        assert!(e.message().contains("the profile sets token_url"), "{e}");
    }

    #[test]
    fn a_secret_file_is_read_without_its_newline_and_never_debug_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\n").expect("write");
        let spec = ProfileSpec {
            token_url: Some("http://127.0.0.1:1/token".into()),
            client_id: Some("c".into()),
            client_secret_file: Some(path),
            ..ProfileSpec::default()
        };
        let r = spec.resolve(Naming::FileKeys).expect("resolves");
        assert_eq!(r.secret.as_ref().map(Secret::expose), Some("s3cr3t-value"));
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_readable_by_group_or_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        let set = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        set(0o600);
        assert_eq!(readable_by_others(&path, "client secret"), None);
        set(0o640);
        let w = readable_by_others(&path, "client secret").expect("warned");
        assert!(
            w.contains("its group") && w.contains("640") && !w.contains("s3cret"),
            "{w}"
        );
        set(0o644);
        let w = readable_by_others(&path, "client secret").expect("warned");
        assert!(w.contains("everyone"), "{w}");
    }
}
