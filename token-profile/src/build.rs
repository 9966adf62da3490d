//! [`build`]: a [`Resolved`] profile made into what serves it: the
//! credential (bound to its secret's fingerprint; a refresh-token grant
//! kept in the store), the store, the request, the cache, and every entry
//! the store's index should list. `tokencache get`, `tokencache serve` and
//! embedders all build here.
//!
//! Every credential's cache entries are bound to what it authenticates
//! with (see `fingerprint.rs`): a keyed fingerprint of a client secret or
//! private key; a mutual-TLS certificate by the thumbprint token-http puts
//! in the id; an assertion file by its path (assertions rotate); a
//! refresh-token grant by its client secret or key only (never the refresh
//! token: it rotates, and the stored refresh token's record key derives
//! from the unbound id); a managed identity by nothing (it has no secret).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use token_core::{CacheKey, Credential, TokenCache, TokenRequest};
use token_http::{
    AppServiceCredential, AzureImdsCredential, GcpMetadataCredential, ManagedIdentityId,
    OAuthCredential, PrivateKey, SigningAlgorithm, StoredRefreshToken,
};
use zeroize::Zeroizing;

use crate::client_auth;
use crate::discovery::{self, EndpointSource};
use crate::error::{Error, ErrorKind, Missing};
use crate::fingerprint::{Binding, Bound, FingerprintKey};
use crate::key;
use crate::resolve::Resolved;
use crate::spec::{Alg, AuthMethod, ManagedKind};
use crate::store::{self, IndexEntry, OpenedStore, RedisStartup, StoreSpec};
use crate::warm;

/// The stores opened in this process, so that profiles naming the same
/// store share one (sled allows one opener per process). Keep it for as
/// long as profiles may be built: a reload builds into the same set.
#[derive(Debug, Default, Clone)]
pub struct Stores {
    open: Vec<(StoreSpec, Option<PathBuf>, OpenedStore, FingerprintKey)>,
    redis_startup: RedisStartup,
    memory_fallback: bool,
}

impl Stores {
    /// No store open yet; an unreachable Redis is an error
    /// ([`RedisStartup::FailFast`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// What opening a Redis store does when Redis cannot be reached.
    /// Defaults to [`RedisStartup::FailFast`]; a long-running process
    /// (`tokencache serve`) wants [`RedisStartup::Background`].
    pub fn with_redis_startup(mut self, startup: RedisStartup) -> Self {
        self.redis_startup = startup;
        self
    }

    /// Whether the default sled store (`store` unset or `sled`) falls back
    /// to an in-process memory store, with a warning, when its default
    /// location cannot be used (no state directory, and no HOME or an
    /// unwritable one). Defaults to `false` (an error naming
    /// `--state-dir` / `TOKENCACHE_STATE_DIR`); `tokencache serve` sets it:
    /// a sidecar that keeps tokens in memory only fetches them again after
    /// a restart, which beats not starting. An explicit `sled:DIR` never
    /// falls back.
    pub fn with_memory_fallback(mut self, fallback: bool) -> Self {
        self.memory_fallback = fallback;
        self
    }

    /// The store `spec` names with the key from `key_file`, opened now or
    /// earlier, and the key that binds cache entries to secrets.
    pub async fn open(
        &mut self,
        spec: &StoreSpec,
        key_file: Option<&Path>,
    ) -> Result<(OpenedStore, FingerprintKey), Error> {
        let found = self
            .open
            .iter()
            .find(|(s, k, ..)| s == spec && k.as_deref() == key_file);
        if let Some((_, _, store, fingerprints)) = found {
            return Ok((store.clone(), fingerprints.clone()));
        }
        let fallback = match spec {
            StoreSpec::Sled(None)
                if self.memory_fallback && crate::paths::state_dir().is_none() =>
            {
                store::default_sled_unusable(key_file)
            }
            _ => None,
        };
        let (store, fingerprints) = match fallback {
            Some(why) => {
                crate::error::notices().warning(format_args!(
                    "the default token store cannot be used ({why}); keeping tokens in memory \
                     only (fetched again after a restart). Give tokencache a writable state \
                     directory with --state-dir DIR or {}=DIR",
                    crate::paths::STATE_DIR_ENV
                ));
                store::open_with(&StoreSpec::Memory, key_file, self.redis_startup).await?
            }
            None => store::open_with(spec, key_file, self.redis_startup).await?,
        };
        self.open.push((
            spec.clone(),
            key_file.map(Path::to_owned),
            store.clone(),
            fingerprints.clone(),
        ));
        Ok((store, fingerprints))
    }
}

/// A profile built: everything needed to serve its tokens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Built {
    /// The cache, on the profile's store, fetching with its credential.
    pub cache: TokenCache,
    /// The token request the profile describes.
    pub request: TokenRequest,
    /// The profile's key in the cache.
    pub key: CacheKey,
    /// The store, opened.
    pub store: OpenedStore,
    /// The token endpoint (errors name it).
    pub token_url: String,
    /// Where the token endpoint came from.
    pub endpoint_source: EndpointSource,
    /// Every entry the store's index lists for this profile once a token
    /// was fetched: the token's, and a refresh-token grant's record of its
    /// newest refresh token (so `inspect` lists it and `purge` forgets it).
    pub entries: Vec<IndexEntry>,
    /// The profile, resolved.
    pub resolved: Resolved,
}

impl Built {
    /// Records [`entries`](Self::entries) in the store's index.
    pub async fn record(&self) -> Result<(), Error> {
        for entry in &self.entries {
            self.store.record(entry).await?;
        }
        Ok(())
    }

    /// After a failed fetch: a discovered token endpoint from the cache that
    /// turned out not to be one is forgotten, so the next build discovers
    /// afresh. Call it with whether the failure was a configuration error
    /// (the endpoint is not a token endpoint).
    pub async fn forget_endpoint_if_wrong(&self, endpoint_is_wrong: bool) {
        if let (true, EndpointSource::Cached, Some(issuer)) = (
            endpoint_is_wrong,
            self.endpoint_source,
            &self.resolved.spec.issuer,
        ) {
            discovery::forget(&self.store, issuer).await;
        }
    }
}

/// Builds `profile`: opens (or reuses, from `stores`) its store, discovers
/// its token endpoint when it names an issuer, builds the credential and
/// the cache. No token is fetched.
pub async fn build(mut profile: Resolved, stores: &mut Stores) -> Result<Built, Error> {
    let key_file = profile.spec.key_file.clone();
    let (store, fingerprints) = stores.open(&profile.store, key_file.as_deref()).await?;
    let mut endpoint_source = EndpointSource::Given;
    // The credential, unbound (a refresh-token grant's stored record key
    // derives from this id), its binding, and its endpoint.
    let (credential, binding, token_url): (Arc<dyn Credential>, Binding, String) =
        match profile.spec.managed_identity {
            Some(kind) => {
                let (c, url) = managed_credential(kind, profile.spec.identity.as_deref())?;
                (c, Binding::None, url)
            }
            None => {
                let (oauth, binding) = match (&profile.token_url, &profile.spec.issuer) {
                    (None, None) if profile.spec.from_env => {
                        credential_from_env(&mut profile, &fingerprints).await?
                    }
                    (None, None) => {
                        return Err(Error::internal("a resolved profile names an endpoint"))
                    }
                    (Some(url), _) => {
                        let url = url.clone();
                        credential(&profile, &url, &fingerprints)?
                    }
                    (None, Some(issuer)) => {
                        let issuer = issuer.clone();
                        let (url, source) = discovery::token_endpoint(&store, &issuer).await?;
                        endpoint_source = source;
                        profile.token_url = Some(url.clone());
                        credential(&profile, &url, &fingerprints)?
                    }
                };
                let url = oauth.token_url().to_owned();
                (Arc::new(oauth), binding, url)
            }
        };
    // A refresh-token grant keeps its newest (rotated) refresh token in the
    // store, redeemed under that record's lease by one process at a time.
    let (credential, refresh_record): (Arc<dyn Credential>, Option<CacheKey>) =
        if profile.refresh_token.is_some() {
            let stored = StoredRefreshToken::new(credential, store.as_dyn());
            let record = stored.record_key().clone();
            (Arc::new(stored), Some(record))
        } else {
            (credential, None)
        };
    let credential: Arc<dyn Credential> = Arc::new(Bound::new(credential, binding));
    let request = token_request(&profile);
    let cache = TokenCache::builder_arc(credential)
        .store_arc(store.as_dyn())
        .build();
    let key = cache.cache_key(&request);
    let entry = |key: &CacheKey, scopes: Vec<String>, with_request: bool| IndexEntry {
        key: key.as_str().to_owned(),
        client_id: profile.client_id.clone(),
        token_url: token_url.clone(),
        scopes,
        audience: with_request
            .then(|| profile.spec.audience.clone())
            .flatten(),
        resource: with_request
            .then(|| profile.spec.resource.clone())
            .flatten(),
    };
    let mut entries = vec![entry(&key, request.scopes().to_vec(), true)];
    if let Some(record) = &refresh_record {
        entries.push(entry(record, Vec::new(), false));
    }
    Ok(Built {
        cache,
        request,
        key,
        store,
        token_url,
        endpoint_source,
        entries,
        resolved: profile,
    })
}

/// Checks what building `profile` would check without opening its store or
/// calling anyone: its key, certificate and assertion files are read and
/// must be usable, its client authentication must be one method. (An
/// `issuer` is discovered and `from_env` read only by [`build`].)
pub fn check(profile: &Resolved) -> Result<(), Error> {
    if let Some(kind) = profile.spec.managed_identity {
        return managed_credential(kind, profile.spec.identity.as_deref()).map(|_| ());
    }
    match &profile.token_url {
        Some(url) => credential(profile, url, &FingerprintKey::random()).map(|_| ()),
        None => Ok(()),
    }
}

/// The token request the profile describes.
pub fn token_request(profile: &Resolved) -> TokenRequest {
    let mut request = TokenRequest::builder().scopes(&profile.spec.scopes);
    if let Some(a) = &profile.spec.audience {
        request = request.audience(a.clone());
    }
    if let Some(r) = &profile.spec.resource {
        request = request.resource(r.clone());
    }
    // DPoP: the key's thumbprint is part of the cache key (`jkt`), so a
    // rotated key file starts a new partition and a Bearer token is never
    // served for it.
    if let Some(key) = &profile.dpop {
        request = request.dpop_thumbprint(key.thumbprint());
    }
    request.build()
}

/// The warm path (see `warm.rs`): on a sled store, the fresh token of
/// `profile` read without opening sled, or `None` when there is none (or
/// the path does not apply; the full path then runs and reports whatever
/// stopped this one). Needs no async runtime.
///
/// It builds the very credential [`build`] builds, so its cache key
/// (binding included) is the one the full path would look up: it can only
/// return what the full path would serve from the cache. Declined for a
/// managed identity and `from_env`, which the full path handles (the latter
/// may need the network to discover its endpoint).
pub fn warm_token(profile: &Resolved) -> Option<(CacheKey, token_core::AccessToken)> {
    if profile.spec.managed_identity.is_some() || profile.spec.from_env {
        return None;
    }
    let dir = profile.store.sled_dir().ok()??;
    if !dir.join(warm::DIR).is_dir() {
        return None;
    }
    let loaded = key::load(profile.spec.key_file.as_deref(), true).ok()?;
    let token_url = match (&profile.token_url, &profile.spec.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => discovery::cached_in_dir(&dir, issuer)?,
        (None, None) => return None,
    };
    let (credential, binding) = credential(profile, &token_url, &loaded.fingerprint).ok()?;
    // A refresh-token grant's id is its inner credential's
    // (`StoredRefreshToken` adds nothing), so the bound id is the same.
    let credential = Bound::new(credential, binding);
    let key = CacheKey::new(credential.id(), &token_request(profile));
    let token = warm::read(&dir, &loaded.keyring, &key)?;
    Some((key, token))
}

/// The private key at `path`, and its PEM text (to fingerprint).
fn private_key(profile: &Resolved, path: &Path) -> Result<(PrivateKey, Zeroizing<String>), Error> {
    let pem = client_auth::read_pem("private key", path)?;
    let bad = |e: token_http::ConfigError| {
        Error::config(format!(
            "the private key {} is not usable: {e}",
            path.display()
        ))
    };
    let key = match profile.spec.alg {
        Some(Alg::Rs256) => PrivateKey::from_pem(&pem, SigningAlgorithm::Rs256).map_err(bad)?,
        Some(Alg::Es256) => PrivateKey::from_pem(&pem, SigningAlgorithm::Es256).map_err(bad)?,
        None => PrivateKey::from_pem(&pem, SigningAlgorithm::Rs256)
            .or_else(|_| PrivateKey::from_pem(&pem, SigningAlgorithm::Es256))
            .map_err(bad)?,
    };
    let key = match &profile.spec.key_id {
        Some(kid) => key.with_key_id(kid.clone()),
        None => key,
    };
    Ok((key, pem))
}

/// `from_env`: the credential as `OAuthCredential::from_env` builds it,
/// and its binding: the fingerprint of the secret or key in the file its
/// variables name (read here from the same file, by the same precedence),
/// nothing more for an assertion file (its path is in the id).
async fn credential_from_env(
    profile: &mut Resolved,
    fingerprints: &FingerprintKey,
) -> Result<(OAuthCredential, Binding), Error> {
    let credential = OAuthCredential::from_env().await.map_err(|e| match e {
        token_http::ConfigError::Discovery { .. } => {
            Error::new(ErrorKind::IdpUnavailable, e.to_string())
        }
        e => Error::config(format!("{}: {e}", profile.naming.key("from_env"))),
    })?;
    profile.client_id = credential.client_id().to_owned();
    profile.token_url = Some(credential.token_url().to_owned());
    let binding = env_binding(|name| std::env::var(name).ok(), fingerprints)?;
    Ok((credential, binding))
}

/// The binding of the credential `OAuthCredential::from_env_with(var)`
/// builds (see token-http's `env.rs` for the variables and precedence).
fn env_binding(
    var: impl Fn(&str) -> Option<String>,
    fingerprints: &FingerprintKey,
) -> Result<Binding, Error> {
    use token_http::env::{
        AZURE_CLIENT_CERTIFICATE_PATH, ENV_CERTIFICATE_FILE, ENV_CLIENT_SECRET_FILE,
        ENV_PRIVATE_KEY_FILE,
    };
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let read = |name: &str, path: &str| {
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| Error::config(format!("from_env: {name}: cannot read {path}: {e}")))
    };
    if let Some(path) = get(ENV_CLIENT_SECRET_FILE) {
        let secret = read(ENV_CLIENT_SECRET_FILE, &path)?;
        return Ok(Binding::fingerprint(
            "cs",
            fingerprints,
            secret.trim().as_bytes(),
        ));
    }
    let certificate = get(ENV_CERTIFICATE_FILE)
        .map(|p| (ENV_CERTIFICATE_FILE, p))
        .or_else(|| get(AZURE_CLIENT_CERTIFICATE_PATH).map(|p| (AZURE_CLIENT_CERTIFICATE_PATH, p)));
    // The key file when it is apart, else the certificate's PEM (holding
    // the key); a key file alone is a plain private_key_jwt.
    let key = get(ENV_PRIVATE_KEY_FILE)
        .map(|p| (ENV_PRIVATE_KEY_FILE, p))
        .or(certificate);
    match key {
        Some((name, path)) => {
            let pem = read(name, &path)?;
            Ok(Binding::fingerprint(
                "pk",
                fingerprints,
                pem.trim().as_bytes(),
            ))
        }
        // An assertion file: bound by its path, which is in the id.
        None => Ok(Binding::None),
    }
}

/// The credential for `token_url` as the profile describes it (not from
/// the environment, not a managed identity), unbound, and what to bind its
/// cache entries to (made with `fingerprints`).
fn credential(
    profile: &Resolved,
    token_url: &str,
    fingerprints: &FingerprintKey,
) -> Result<(OAuthCredential, Binding), Error> {
    let spec = &profile.spec;
    let naming = profile.naming;
    let builder = match &profile.refresh_token {
        Some(rt) => {
            OAuthCredential::refresh_token(token_url, profile.client_id.clone(), rt.clone())
        }
        None => OAuthCredential::client_credentials(token_url, profile.client_id.clone()),
    };
    let given = client_auth::Given {
        secret: profile.secret.is_some(),
        private_key: spec.private_key_file.is_some(),
        certificate: spec.certificate_file.is_some(),
        assertion_file: spec.client_assertion_file.is_some(),
        client_certificate: spec.client_certificate_file.is_some(),
    };
    let invalid = |e: token_http::ConfigError| Error::config(format!("invalid settings: {e}"));
    let auth = match spec.auth {
        Some(a) => a,
        // A refresh-token grant without client authentication: a public
        // client (RFC 6749 §6), as native apps and CLIs are. Nothing to
        // bind to: the refresh token itself is never fingerprinted.
        None if profile.refresh_token.is_some() && given.is_empty() => {
            let builder = with_ca(builder, spec.ca_file.as_deref())?;
            let builder = with_dpop(builder, profile);
            return Ok((builder.build().map_err(invalid)?, Binding::None));
        }
        None => client_auth::infer(&given, naming)?,
    };
    let needs = |what: &str| {
        Error::incomplete(
            Some(Missing::ClientAuth),
            format!("{} {auth} needs {what}", naming.key("auth")),
        )
    };
    let (builder, binding) = match auth {
        AuthMethod::Basic | AuthMethod::Post => {
            let secret = profile.secret.clone().ok_or_else(|| {
                needs(&format!(
                    "a client secret: give {} VAR or {} PATH",
                    naming.key("client_secret_env"),
                    naming.key("client_secret_file")
                ))
            })?;
            let binding = Binding::fingerprint("cs", fingerprints, secret.expose().as_bytes());
            // A secret file is re-read when it changes (rotation without a
            // restart); the binding stays the one of the secret read now.
            let builder = match (&spec.client_secret_file, auth == AuthMethod::Basic) {
                (Some(path), true) => builder.client_secret_file(path),
                (Some(path), false) => builder.client_secret_post_file(path),
                (None, true) => builder.client_secret(secret),
                (None, false) => builder.client_secret_post(secret),
            };
            (builder, binding)
        }
        AuthMethod::PrivateKeyJwt => {
            // The key apart, or in the certificate's own PEM. Checked now
            // (a clear start-up error, and the fingerprint to bind to);
            // then token-http re-reads both files when they change.
            let key_path = match (&spec.private_key_file, &spec.certificate_file) {
                (Some(key), _) => key.clone(),
                (None, Some(cert)) => cert.clone(),
                (None, None) => {
                    return Err(needs(&format!(
                        "{} PEM or {} PEM",
                        naming.key("private_key_file"),
                        naming.key("certificate_file")
                    )))
                }
            };
            let (key, key_pem) = match &spec.private_key_file {
                Some(p) => {
                    let (key, pem) = private_key(profile, p)?;
                    (Some(key), pem)
                }
                None => (None, client_auth::read_pem("certificate file", &key_path)?),
            };
            let binding = Binding::fingerprint("pk", fingerprints, key_pem.trim().as_bytes());
            let alg = match &spec.certificate_file {
                Some(cert) => client_auth::certificate_key(
                    cert,
                    key,
                    spec.key_id.as_deref(),
                    spec.x5t,
                    spec.x5c,
                    naming,
                )?
                .algorithm(),
                None => key
                    .map(|k| k.algorithm())
                    .ok_or_else(|| Error::internal("a private key was read"))?,
            };
            let mut file = token_http::PrivateKeyFile::new(key_path, alg);
            if let Some(kid) = &spec.key_id {
                file = file.with_key_id(kid.clone());
            }
            if let Some(cert) = &spec.certificate_file {
                file = file
                    .with_certificate_file(cert)
                    .with_x5t(spec.x5t)
                    .with_x5c(spec.x5c);
            }
            (builder.private_key_jwt_file(file), binding)
        }
        AuthMethod::ClientAssertion => {
            let path = spec
                .client_assertion_file
                .clone()
                .ok_or_else(|| needs(&format!("{} PATH", naming.key("client_assertion_file"))))?;
            // Checked now for a clear start-up error (and so that only a
            // caller who can read it finds its entries); read again at
            // every fetch. Bound by its path, which is in the id: the
            // content rotates.
            client_auth::check_assertion_file(&path)?;
            (builder.client_assertion_file(path), Binding::None)
        }
        AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
            // Bound by the certificate's thumbprint, which token-http puts
            // in the id; the key is checked against the certificate.
            // Checked now; re-read by token-http when the files change.
            client_auth::client_certificate(
                spec.client_certificate_file.as_deref(),
                spec.client_key_file.as_deref(),
                naming,
            )?;
            let cert = spec
                .client_certificate_file
                .clone()
                .ok_or_else(|| Error::internal("a client certificate was read"))?;
            let key = spec.client_key_file.clone().unwrap_or_else(|| cert.clone());
            let builder = if auth == AuthMethod::TlsClientAuth {
                builder.tls_client_auth_files(cert, key)
            } else {
                builder.self_signed_tls_client_auth_files(cert, key)
            };
            (builder, Binding::None)
        }
    };
    let builder = with_ca(builder, spec.ca_file.as_deref())?;
    let builder = with_dpop(builder, profile);
    Ok((builder.build().map_err(invalid)?, binding))
}

/// Binds the credential to the profile's DPoP key, when it has one.
fn with_dpop(
    builder: token_http::OAuthCredentialBuilder,
    profile: &Resolved,
) -> token_http::OAuthCredentialBuilder {
    match &profile.dpop {
        Some(key) => builder.dpop_key(key.clone()),
        None => builder,
    }
}

fn with_ca(
    builder: token_http::OAuthCredentialBuilder,
    ca_file: Option<&Path>,
) -> Result<token_http::OAuthCredentialBuilder, Error> {
    Ok(match ca_file {
        Some(path) => {
            builder.root_certificate_pem(client_auth::read_pem("CA file", path)?.as_str())
        }
        None => builder,
    })
}

/// The managed-identity credential and the endpoint it calls.
fn managed_credential(
    kind: ManagedKind,
    identity: Option<&str>,
) -> Result<(Arc<dyn Credential>, String), Error> {
    let invalid = |e: token_http::ConfigError| Error::config(format!("managed_identity: {e}"));
    let azure_id = identity.map_or(ManagedIdentityId::SystemAssigned, |id| {
        ManagedIdentityId::ClientId(id.to_owned())
    });
    Ok(match kind {
        ManagedKind::AzureImds => {
            let c = AzureImdsCredential::builder()
                .identity(azure_id)
                .build()
                .map_err(invalid)?;
            let url = c.endpoint().to_owned();
            (Arc::new(c), url)
        }
        ManagedKind::AppService => {
            let c = AppServiceCredential::from_env()
                .and_then(|b| b.identity(azure_id).build())
                .map_err(invalid)?;
            let url = c.endpoint().to_owned();
            (Arc::new(c), url)
        }
        ManagedKind::Gcp => {
            let mut b = GcpMetadataCredential::builder();
            if let Some(account) = identity {
                b = b.service_account(account);
            }
            let c = b.build().map_err(invalid)?;
            let url = c.url().to_owned();
            (Arc::new(c), url)
        }
    })
}

#[cfg(test)]
mod tests;
