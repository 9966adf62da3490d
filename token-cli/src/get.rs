//! `tokencache get`: settings (flags over profile), the credential, the
//! cache, and the printed token.
//!
//! Every credential's cache entries are bound to what it authenticates
//! with (see `fingerprint.rs` and the README's table): a keyed fingerprint
//! of a client secret or private key; a mutual-TLS certificate by the
//! thumbprint token-http puts in the id (its key must match it); an
//! assertion file by its path (assertions rotate); a refresh-token grant by
//! its client secret or key only (never the refresh token: it rotates, and
//! the stored refresh token's record key derives from the unbound id); a
//! managed identity by nothing (it has no secret).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use token_core::{AccessToken, CacheKey, Credential, Secret, TokenCache, TokenRequest};
use token_http::{
    AppServiceCredential, AzureImdsCredential, GcpMetadataCredential, ManagedIdentityId,
    OAuthCredential, PrivateKey, SigningAlgorithm, StoredRefreshToken,
};
use zeroize::Zeroizing;

use crate::cli::{Alg, AuthMethod, Format, GetArgs, ManagedKind};
use crate::client_auth;
use crate::config::{self, Profile};
use crate::discovery;
use crate::error::{self, CliError, Kind};
use crate::fingerprint::{Binding, Bound, FingerprintKey};
use crate::hot;
use crate::key;
use crate::store::{self, Entry, Opened, StoreSpec};
use crate::time::rfc3339;

/// Everything `get` needs, after flags were laid over the profile.
pub(crate) struct Settings {
    token_url: Option<String>,
    issuer: Option<String>,
    pub(crate) client_id: String,
    secret: Option<Secret>,
    /// The first refresh token (refresh-token grant).
    refresh_token: Option<Secret>,
    /// A managed identity instead of an IdP, and which of its identities.
    managed: Option<ManagedKind>,
    identity: Option<String>,
    private_key: Option<PathBuf>,
    key_id: Option<String>,
    assertion_file: Option<PathBuf>,
    certificate: Option<PathBuf>,
    x5t: bool,
    x5c: bool,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    alg: Option<Alg>,
    auth: Option<AuthMethod>,
    scopes: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    store: StoreSpec,
    format: Format,
    key_file: Option<PathBuf>,
    /// The credential comes from the environment (`--from-env`).
    from_env: bool,
    /// A profile was named: settings missing or contradictory are its
    /// configuration (3) rather than the command line's usage (2).
    profile_named: bool,
}

/// Lays the flags over the profile and reads the secrets.
pub(crate) fn settings(args: GetArgs) -> Result<Settings, CliError> {
    let profile = match &args.profile {
        Some(name) => {
            let path = config::config_path(args.locations.config.as_deref())?;
            config::load_profile(&path, name)?
        }
        None => Profile::default(),
    };
    let profile_named = args.profile.is_some();
    let managed = match (args.managed_identity, profile.managed_identity.as_deref()) {
        (Some(m), _) => Some(m),
        (None, None) => None,
        (None, Some(m)) => Some(parse_enum::<ManagedKind>("managed_identity", m)?),
    };
    if managed.is_some() {
        return managed_settings(args, profile, managed);
    }
    // A flag replaces the profile's value; both secret sources are one
    // setting, so a flag for one drops the profile's other.
    let (secret_env, secret_file) =
        if args.client_secret_env.is_some() || args.client_secret_file.is_some() {
            (args.client_secret_env, args.client_secret_file)
        } else {
            (profile.client_secret_env, profile.client_secret_file)
        };
    let (token_url, issuer) = if args.token_url.is_some() || args.issuer.is_some() {
        (args.token_url, args.issuer)
    } else {
        (profile.token_url, profile.issuer)
    };
    let from_env = args.from_env || profile.from_env;
    if from_env && (token_url.is_some() || issuer.is_some()) {
        return Err(CliError::config(
            "from_env takes the token endpoint from the environment: drop token_url/issuer from \
             the profile, or from_env",
        ));
    }
    // Missing from the command line with no profile named is a usage
    // error (2); missing from a named profile is its configuration (3).
    let missing = |what: &str| match &args.profile {
        None => CliError::usage(format!(
            "{what} (or --profile NAME); see `tokencache get --help`"
        )),
        Some(name) => CliError::config(format!(
            "{what}: the profile {name} has none, and no flag gives one"
        )),
    };
    if token_url.is_none() && issuer.is_none() && !from_env {
        return Err(missing(
            "no token endpoint: give --token-url URL, --issuer URL or --from-env",
        ));
    }
    let client_id = match args.client_id.or(profile.client_id) {
        Some(id) => id,
        // Known once the credential is built from the environment.
        None if from_env => String::new(),
        None => return Err(missing("no client id: give --client-id ID")),
    };
    let secret = match (secret_env, secret_file) {
        (Some(var), _) => Some(secret_from_env(&var, "--client-secret-env")?),
        (None, Some(path)) => Some(secret_from_file(&path, "client secret")?),
        (None, None) => None,
    };
    let (refresh_env, refresh_file) =
        if args.refresh_token_env.is_some() || args.refresh_token_file.is_some() {
            (args.refresh_token_env, args.refresh_token_file)
        } else {
            (profile.refresh_token_env, profile.refresh_token_file)
        };
    let refresh_token = match (refresh_env, refresh_file) {
        (Some(var), _) => Some(secret_from_env(&var, "--refresh-token-env")?),
        (None, Some(path)) => Some(secret_from_file(&path, "refresh token")?),
        (None, None) => None,
    };
    if from_env && refresh_token.is_some() {
        return Err(CliError::config(
            "from_env builds a client credentials credential: it does not take a refresh token",
        ));
    }
    let alg = match (args.alg, profile.alg.as_deref()) {
        (Some(a), _) => Some(a),
        (None, None) => None,
        (None, Some(a)) => Some(parse_enum::<Alg>("alg", a)?),
    };
    let auth = match (args.auth, profile.auth.as_deref()) {
        (Some(a), _) => Some(a),
        (None, None) => None,
        (None, Some(a)) => Some(parse_enum::<AuthMethod>("auth", a)?),
    };
    let format = match (args.format, profile.format.as_deref()) {
        (Some(f), _) => f,
        (None, None) => Format::Token,
        (None, Some(f)) => parse_enum::<Format>("format", f)?,
    };
    let store = match args.store.or(profile.store) {
        Some(s) => StoreSpec::parse(&s)?,
        None => StoreSpec::Sled(None),
    };
    Ok(Settings {
        token_url,
        issuer,
        client_id,
        secret,
        refresh_token,
        managed: None,
        identity: None,
        private_key: args.private_key_file.or(profile.private_key_file),
        key_id: args.key_id.or(profile.key_id),
        assertion_file: args.client_assertion_file.or(profile.client_assertion_file),
        certificate: args.certificate_file.or(profile.certificate_file),
        x5t: args.x5t || profile.x5t,
        x5c: args.x5c || profile.x5c,
        client_certificate: args
            .client_certificate_file
            .or(profile.client_certificate_file),
        client_key: args.client_key_file.or(profile.client_key_file),
        ca_file: args.ca_file.or(profile.ca_file),
        alg,
        auth,
        scopes: if args.scopes.is_empty() {
            profile.scopes
        } else {
            args.scopes
        },
        audience: args.audience.or(profile.audience),
        resource: args.resource.or(profile.resource),
        store,
        format,
        key_file: args.locations.key_file.or(profile.key_file),
        from_env,
        profile_named,
    })
}

/// Settings for `--managed-identity`: no IdP, client or secret (a flag for
/// one conflicts on the command line; the profile must not mix them either).
fn managed_settings(
    args: GetArgs,
    profile: Profile,
    managed: Option<ManagedKind>,
) -> Result<Settings, CliError> {
    let profile_named = args.profile.is_some();
    let mixed = [
        ("token_url", profile.token_url.is_some()),
        ("issuer", profile.issuer.is_some()),
        ("client_id", profile.client_id.is_some()),
        ("client_secret_env", profile.client_secret_env.is_some()),
        ("client_secret_file", profile.client_secret_file.is_some()),
        ("private_key_file", profile.private_key_file.is_some()),
        ("refresh_token_env", profile.refresh_token_env.is_some()),
        ("refresh_token_file", profile.refresh_token_file.is_some()),
        ("auth", profile.auth.is_some()),
        (
            "client_assertion_file",
            profile.client_assertion_file.is_some(),
        ),
        ("certificate_file", profile.certificate_file.is_some()),
        (
            "client_certificate_file",
            profile.client_certificate_file.is_some(),
        ),
        ("from_env", profile.from_env),
    ];
    if let Some((name, _)) = mixed.iter().find(|(_, set)| *set) {
        return Err(CliError::config(format!(
            "the profile sets {name}, which a managed identity does not use: remove it, or do not \
             use --managed-identity with this profile"
        )));
    }
    let format = match (args.format, profile.format.as_deref()) {
        (Some(f), _) => f,
        (None, None) => Format::Token,
        (None, Some(f)) => parse_enum::<Format>("format", f)?,
    };
    let store = match args.store.or(profile.store) {
        Some(s) => StoreSpec::parse(&s)?,
        None => StoreSpec::Sled(None),
    };
    let identity = args.identity.or(profile.identity);
    let kind = managed.map_or("", |k| match k {
        ManagedKind::AzureImds => "azure-imds",
        ManagedKind::AppService => "app-service",
        ManagedKind::Gcp => "gcp",
    });
    Ok(Settings {
        token_url: None,
        issuer: None,
        // What `inspect` shows and `purge --client-id` matches.
        client_id: format!(
            "managed-identity:{kind}:{}",
            identity.as_deref().unwrap_or("default")
        ),
        secret: None,
        refresh_token: None,
        managed,
        identity,
        private_key: None,
        key_id: None,
        assertion_file: None,
        certificate: None,
        x5t: false,
        x5c: false,
        client_certificate: None,
        client_key: None,
        ca_file: None,
        alg: None,
        auth: None,
        scopes: if args.scopes.is_empty() {
            profile.scopes
        } else {
            args.scopes
        },
        audience: args.audience.or(profile.audience),
        resource: args.resource.or(profile.resource),
        store,
        format,
        key_file: args.locations.key_file.or(profile.key_file),
        from_env: false,
        profile_named,
    })
}

fn parse_enum<T: clap::ValueEnum>(what: &str, value: &str) -> Result<T, CliError> {
    T::from_str(value, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        CliError::config(format!(
            "the profile's {what} `{value}` is not one of: {}",
            names.join(", ")
        ))
    })
}

fn secret_from_env(var: &str, flag: &str) -> Result<Secret, CliError> {
    match std::env::var_os(var) {
        None => Err(CliError::config(format!(
            "the environment variable {var} (from {flag}) is not set"
        ))),
        Some(v) => {
            let v = v.into_string().map_err(|_| {
                CliError::config(format!(
                    "the environment variable {var} is not valid Unicode"
                ))
            })?;
            if v.is_empty() {
                return Err(CliError::config(format!(
                    "the environment variable {var} (from {flag}) is empty"
                )));
            }
            Ok(Secret::new(v))
        }
    }
}

fn secret_from_file(path: &std::path::Path, what: &str) -> Result<Secret, CliError> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            CliError::config(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(CliError::config(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed))
}

/// The private key at `path`, and its PEM text (to fingerprint).
fn private_key(s: &Settings, path: &Path) -> Result<(PrivateKey, Zeroizing<String>), CliError> {
    let pem = client_auth::read_pem("private key", path)?;
    let bad = |e: token_http::ConfigError| {
        CliError::config(format!(
            "the private key {} is not usable: {e}",
            path.display()
        ))
    };
    let key = match s.alg {
        Some(Alg::Rs256) => PrivateKey::from_pem(&pem, SigningAlgorithm::Rs256).map_err(bad)?,
        Some(Alg::Es256) => PrivateKey::from_pem(&pem, SigningAlgorithm::Es256).map_err(bad)?,
        None => PrivateKey::from_pem(&pem, SigningAlgorithm::Rs256)
            .or_else(|_| PrivateKey::from_pem(&pem, SigningAlgorithm::Es256))
            .map_err(bad)?,
    };
    let key = match &s.key_id {
        Some(kid) => key.with_key_id(kid.clone()),
        None => key,
    };
    Ok((key, pem))
}

/// `--from-env`: the credential as `OAuthCredential::from_env` builds it,
/// and its binding: the fingerprint of the secret or key in the file its
/// variables name (read here from the same file, by the same precedence),
/// nothing more for an assertion file (its path is in the id).
async fn credential_from_env(
    s: &mut Settings,
    fingerprints: &FingerprintKey,
) -> Result<(OAuthCredential, Binding), CliError> {
    let credential = OAuthCredential::from_env().await.map_err(|e| match e {
        token_http::ConfigError::Discovery { .. } => {
            CliError::new(Kind::IdpUnavailable, e.to_string())
        }
        e => CliError::config(format!("--from-env: {e}")),
    })?;
    s.client_id = credential.client_id().to_owned();
    s.token_url = Some(credential.token_url().to_owned());
    let binding = env_binding(|name| std::env::var(name).ok(), fingerprints)?;
    Ok((credential, binding))
}

/// The binding of the credential `OAuthCredential::from_env_with(var)`
/// builds (see token-http's `env.rs` for the variables and precedence).
fn env_binding(
    var: impl Fn(&str) -> Option<String>,
    fingerprints: &FingerprintKey,
) -> Result<Binding, CliError> {
    use token_http::env::{
        AZURE_CLIENT_CERTIFICATE_PATH, ENV_CERTIFICATE_FILE, ENV_CLIENT_SECRET_FILE,
        ENV_PRIVATE_KEY_FILE,
    };
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let read = |name: &str, path: &str| {
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| CliError::config(format!("--from-env: {name}: cannot read {path}: {e}")))
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

/// The credential for `token_url` as the settings describe it (not from
/// the environment, not a managed identity), unbound, and what to bind
/// its cache entries to (made with `fingerprints`).
fn credential(
    s: &Settings,
    token_url: &str,
    fingerprints: &FingerprintKey,
) -> Result<(OAuthCredential, Binding), CliError> {
    let builder = match &s.refresh_token {
        Some(rt) => OAuthCredential::refresh_token(token_url, s.client_id.clone(), rt.clone()),
        None => OAuthCredential::client_credentials(token_url, s.client_id.clone()),
    };
    let given = client_auth::Given {
        secret: s.secret.is_some(),
        private_key: s.private_key.is_some(),
        certificate: s.certificate.is_some(),
        assertion_file: s.assertion_file.is_some(),
        client_certificate: s.client_certificate.is_some(),
    };
    let invalid = |e: token_http::ConfigError| CliError::config(format!("invalid settings: {e}"));
    let auth = match s.auth {
        Some(a) => a,
        // A refresh-token grant without client authentication: a public
        // client (RFC 6749 §6), as native apps and CLIs are. Nothing to
        // bind to: the refresh token itself is never fingerprinted.
        None if s.refresh_token.is_some() && given.is_empty() => {
            let builder = match &s.ca_file {
                Some(path) => {
                    builder.root_certificate_pem(client_auth::read_pem("CA file", path)?.as_str())
                }
                None => builder,
            };
            return Ok((builder.build().map_err(invalid)?, Binding::None));
        }
        // Two methods, or none, on the command line alone is a usage
        // error; with a profile, its configuration.
        None => client_auth::infer(&given).map_err(|e| {
            if s.profile_named {
                e
            } else {
                CliError::usage(e.to_string())
            }
        })?,
    };
    let (builder, binding) = match auth {
        AuthMethod::Basic | AuthMethod::Post => {
            let secret = s.secret.clone().ok_or_else(|| {
                CliError::config(
                    "--auth basic/post needs a client secret: give --client-secret-env VAR or \
                     --client-secret-file PATH",
                )
            })?;
            let binding = Binding::fingerprint("cs", fingerprints, secret.expose().as_bytes());
            let builder = if auth == AuthMethod::Basic {
                builder.client_secret(secret)
            } else {
                builder.client_secret_post(secret)
            };
            (builder, binding)
        }
        AuthMethod::PrivateKeyJwt => match &s.certificate {
            Some(cert) => {
                // The key apart, or in the certificate's own PEM.
                let (key, key_pem) = match s.private_key.as_deref() {
                    Some(p) => {
                        let (key, pem) = private_key(s, p)?;
                        (Some(key), pem)
                    }
                    None => (None, client_auth::read_pem("certificate file", cert)?),
                };
                let binding = Binding::fingerprint("pk", fingerprints, key_pem.trim().as_bytes());
                let key =
                    client_auth::certificate_key(cert, key, s.key_id.as_deref(), s.x5t, s.x5c)?;
                (builder.private_key_jwt(key), binding)
            }
            None => {
                let path = s.private_key.clone().ok_or_else(|| {
                    CliError::config(
                        "--auth private-key-jwt needs --private-key-file PEM or --certificate-file \
                         PEM",
                    )
                })?;
                let (key, pem) = private_key(s, &path)?;
                let binding = Binding::fingerprint("pk", fingerprints, pem.trim().as_bytes());
                (builder.private_key_jwt(key), binding)
            }
        },
        AuthMethod::ClientAssertion => {
            let path = s.assertion_file.clone().ok_or_else(|| {
                CliError::config("--auth client-assertion needs --client-assertion-file PATH")
            })?;
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
            let certificate = client_auth::client_certificate(
                s.client_certificate.as_deref(),
                s.client_key.as_deref(),
            )?;
            let builder = if auth == AuthMethod::TlsClientAuth {
                builder.tls_client_auth(certificate)
            } else {
                builder.self_signed_tls_client_auth(certificate)
            };
            (builder, Binding::None)
        }
    };
    let builder = match &s.ca_file {
        Some(path) => {
            builder.root_certificate_pem(client_auth::read_pem("CA file", path)?.as_str())
        }
        None => builder,
    };
    Ok((builder.build().map_err(invalid)?, binding))
}

/// The token request the settings describe.
pub(crate) fn token_request(s: &Settings) -> TokenRequest {
    let mut request = TokenRequest::builder().scopes(&s.scopes);
    if let Some(a) = &s.audience {
        request = request.audience(a.clone());
    }
    if let Some(r) = &s.resource {
        request = request.resource(r.clone());
    }
    request.build()
}

/// The warm path (see `hot.rs`): on a sled store, a fresh token printed
/// without opening sled. `Ok(false)` when it does not apply; then the full
/// path runs, and reports whatever stopped this one (a missing key, ...).
/// Needs no async runtime: `main` tries it before starting one.
///
/// It builds the very credential the full path builds, so its cache key
/// (binding included) is the one the full path would look up: it can only
/// print what the full path would print from the cache. Declined for a
/// managed identity and `--from-env`, which the full path handles (the
/// latter may need the network to discover its endpoint).
pub(crate) fn warm(s: &Settings) -> Result<bool, CliError> {
    if s.managed.is_some() || s.from_env {
        return Ok(false);
    }
    let Some(dir) = s.store.sled_dir()? else {
        return Ok(false);
    };
    if !dir.join(hot::DIR).is_dir() {
        return Ok(false);
    }
    let Ok(loaded) = key::load(s.key_file.as_deref(), true) else {
        return Ok(false);
    };
    let token_url = match (&s.token_url, &s.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => match discovery::cached_in_dir(&dir, issuer) {
            Some(url) => url,
            None => return Ok(false),
        },
        (None, None) => return Ok(false),
    };
    let Ok((credential, binding)) = credential(s, &token_url, &loaded.fingerprint) else {
        return Ok(false);
    };
    // A refresh-token grant's id is its inner credential's
    // (`StoredRefreshToken` adds nothing), so the bound id is the same.
    let credential = Bound::new(credential, binding);
    let key = CacheKey::new(credential.id(), &token_request(s));
    let Some(token) = hot::read(&dir, &loaded.keyring, &key) else {
        return Ok(false);
    };
    tracing::info!(key = %key, from_cache = true, "served from the cache (warm file)");
    print(&token, s.format, true)?;
    Ok(true)
}

/// The managed-identity credential and the endpoint it calls.
fn managed_credential(
    kind: ManagedKind,
    identity: Option<&str>,
) -> Result<(Arc<dyn Credential>, String), CliError> {
    let invalid = |e: token_http::ConfigError| CliError::config(format!("--managed-identity: {e}"));
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

/// A store opened in this process, for the settings that named it.
pub(crate) struct OpenStore {
    spec: StoreSpec,
    key_file: Option<PathBuf>,
    store: Opened,
    fingerprints: FingerprintKey,
}

/// What the settings build: the credential (bound to its secret's
/// fingerprint; a refresh-token grant kept in the store), its endpoint, and
/// the store it caches in.
pub(crate) struct Built {
    /// The credential the cache fetches with.
    pub(crate) credential: Arc<dyn Credential>,
    /// The endpoint errors name.
    pub(crate) token_url: String,
    /// The store, opened.
    pub(crate) store: Opened,
    /// Where the token endpoint came from (given, discovered, cached).
    endpoint_source: discovery::Source,
    /// The refresh-token grant's record of its newest refresh token.
    refresh_record: Option<CacheKey>,
}

/// Builds what the settings describe. `get` and `serve` both build their
/// credentials here; `opened` holds the stores already open in this process
/// (sled allows one opener), and gains the one these settings name.
pub(crate) async fn credential_and_store(
    s: &mut Settings,
    opened: &mut Vec<OpenStore>,
) -> Result<Built, CliError> {
    let found = opened
        .iter()
        .find(|o| o.spec == s.store && o.key_file == s.key_file);
    let (store, fingerprints) = match found {
        Some(o) => (o.store.clone(), o.fingerprints.clone()),
        None => {
            let (store, fingerprints) = store::open(&s.store, s.key_file.as_deref()).await?;
            opened.push(OpenStore {
                spec: s.store.clone(),
                key_file: s.key_file.clone(),
                store: store.clone(),
                fingerprints: fingerprints.clone(),
            });
            (store, fingerprints)
        }
    };
    let mut endpoint_source = discovery::Source::Given;
    // The credential, unbound (a refresh-token grant's stored record key
    // derives from this id), its binding, and its endpoint.
    let (credential, binding, token_url): (Arc<dyn Credential>, Binding, String) = match s.managed {
        Some(kind) => {
            let (c, url) = managed_credential(kind, s.identity.as_deref())?;
            (c, Binding::None, url)
        }
        None => {
            let (oauth, binding) = match (&s.token_url, &s.issuer) {
                (None, None) if s.from_env => credential_from_env(s, &fingerprints).await?,
                (None, None) => return Err(CliError::internal("settings always name an endpoint")),
                (Some(url), _) => {
                    let url = url.clone();
                    credential(s, &url, &fingerprints)?
                }
                (None, Some(issuer)) => {
                    let issuer = issuer.clone();
                    let (url, source) = discovery::token_endpoint(&store, &issuer).await?;
                    endpoint_source = source;
                    s.token_url = Some(url.clone());
                    credential(s, &url, &fingerprints)?
                }
            };
            let url = oauth.token_url().to_owned();
            (Arc::new(oauth), binding, url)
        }
    };
    // A refresh-token grant keeps its newest (rotated) refresh token in the
    // store, redeemed under that record's lease by one process at a time.
    let (credential, refresh_record): (Arc<dyn Credential>, Option<CacheKey>) =
        if s.refresh_token.is_some() {
            let stored = StoredRefreshToken::new(credential, store.as_dyn());
            let record = stored.record_key().clone();
            (Arc::new(stored), Some(record))
        } else {
            (credential, None)
        };
    Ok(Built {
        credential: Arc::new(Bound::new(credential, binding)),
        token_url,
        store,
        endpoint_source,
        refresh_record,
    })
}

/// Runs `get` the full way (after [`warm`] did not apply).
pub(crate) async fn run(mut s: Settings) -> Result<(), CliError> {
    let Built {
        credential,
        token_url,
        store: opened,
        endpoint_source,
        refresh_record,
    } = credential_and_store(&mut s, &mut Vec::new()).await?;
    let request = token_request(&s);

    let cache = TokenCache::builder_arc(credential)
        .store_arc(opened.as_dyn())
        .build();
    let key = cache.cache_key(&request);

    let mut token = match cache.get_token(&request).await {
        Ok(token) => token,
        Err(e) => {
            let e = error::from_engine(&e, &token_url);
            // A cached endpoint that is not one any more: discover afresh
            // next time.
            if let (Kind::Config, discovery::Source::Cached, Some(issuer)) =
                (e.kind(), endpoint_source, &s.issuer)
            {
                discovery::forget(&opened, issuer).await;
            }
            return Err(e);
        }
    };

    // A token in its refresh window is handed out at once and refreshed in
    // the background; this process would exit before the refresh lands, so
    // refresh it now and print the new token. A failed refresh leaves the
    // still-valid token (stale-if-error).
    if token.refresh_at().is_some_and(|at| SystemTime::now() >= at) {
        tracing::info!(key = %key, "the cached token is due for refresh; refreshing it now");
        match cache.refresh(&request).await {
            Ok(fresh) => token = fresh,
            Err(e) => {
                let until = token.expires_at().map(rfc3339).unwrap_or_default();
                crate::log::warning(format_args!(
                    "refreshing the token failed ({}); printing the cached token, valid until \
                     {until}",
                    error::from_engine(&e, &token_url)
                ));
            }
        }
    }

    let stats = cache.stats();
    if stats.store_corrupt_reads > 0 {
        crate::log::warning(
            "the cached entry could not be decrypted (damaged, or written with another key); a \
             new token was fetched",
        );
    }
    if stats.store_errors > 0 {
        crate::log::warning(
            "the token store failed during this call; the token was fetched from the IdP and may \
             not be cached",
        );
    }
    let from_cache = stats.idp_calls == 0;
    tracing::info!(
        key = %key,
        from_cache,
        idp_calls = stats.idp_calls,
        expires_at = %token.expires_at().map(rfc3339).unwrap_or_default(),
        "{}",
        if from_cache { "served from the cache" } else { "fetched from the IdP" }
    );
    if stats.idp_calls > 0 {
        opened
            .record(&Entry {
                key: key.as_str().to_owned(),
                client_id: s.client_id.clone(),
                token_url: token_url.clone(),
                scopes: request.scopes().to_vec(),
                audience: s.audience.clone(),
                resource: s.resource.clone(),
            })
            .await?;
        if let Some(record) = &refresh_record {
            // The newest refresh token's record, so that `inspect` lists it
            // and `purge --client-id` forgets it with the client's tokens.
            opened
                .record(&Entry {
                    key: record.as_str().to_owned(),
                    client_id: s.client_id.clone(),
                    token_url: token_url.clone(),
                    scopes: Vec::new(),
                    audience: None,
                    resource: None,
                })
                .await?;
        }
    }
    if let Opened::Sled(sled) = &opened {
        // What sled now holds for the key, kept for the warm path when it is
        // fresh (a token due for refresh goes through sled anyway).
        if token.refresh_at().is_some_and(|at| SystemTime::now() < at) {
            if let Ok(Some(envelope)) = sled.read_envelope(&key) {
                hot::write(sled.path(), &key, &envelope);
            }
        }
    }
    print(&token.to_access_token(), s.format, from_cache)
}

fn print(token: &AccessToken, format: Format, from_cache: bool) -> Result<(), CliError> {
    let mut out: Zeroizing<String> = Zeroizing::new(String::new());
    match format {
        Format::Token => out.push_str(token.secret().expose()),
        Format::Header => out.push_str(token.authorization_header().expose()),
        Format::Json => {
            let now = SystemTime::now();
            let expires_at = token.expires_at();
            let expires_in = expires_at
                .and_then(|at| at.duration_since(now).ok())
                .map_or(0, |d| d.as_secs());
            let quoted = Zeroizing::new(
                serde_json::to_string(token.secret().expose())
                    .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?,
            );
            let token_type = serde_json::to_string(token.token_type().as_str())
                .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?;
            let expires_at = expires_at
                .map(|at| format!("\"{}\"", rfc3339(at)))
                .unwrap_or_else(|| "null".to_owned());
            out.push_str("{\"access_token\":");
            out.push_str(&quoted);
            out.push_str(&format!(
                ",\"token_type\":{token_type},\"expires_at\":{expires_at},\"expires_in\":{expires_in},\"from_cache\":{from_cache}}}"
            ));
        }
    }
    out.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::internal(format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use token_core::EncryptionKey;

    use super::*;
    use crate::cli::{Cli, Command};

    const URL: &str = "http://127.0.0.1:9/token";

    fn keys() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../token-http/tests/keys")
    }

    fn fingerprints() -> FingerprintKey {
        FingerprintKey::derive(&EncryptionKey::from_bytes([3; 32]))
    }

    fn parse(args: &[&str]) -> Settings {
        let argv = ["tokencache", "get", "--client-id", "c", "--token-url", URL];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).expect("flags parse");
        match cli.command {
            Command::Get(args) => settings(*args).expect("settings"),
            _ => unreachable!("a get command"),
        }
    }

    fn file(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8").to_owned()
    }

    /// The bound id and the unbound one (what `StoredRefreshToken` keys
    /// its record by).
    fn ids(s: &Settings) -> (String, String) {
        let (credential, binding) = credential(s, URL, &fingerprints()).expect("credential");
        let inner = credential.id().to_owned();
        (Bound::new(credential, binding).id().to_owned(), inner)
    }

    #[test]
    fn a_refresh_token_grant_is_bound_to_its_client_secret_and_never_to_the_refresh_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt1 = file(dir.path(), "rt1", "first-refresh-token\n");
        let rt2 = file(dir.path(), "rt2", "another-refresh-token\n");
        let good = file(dir.path(), "good", "good-secret\n");
        let bad = file(dir.path(), "bad", "wrong-secret\n");
        let with = |rt: &str, secret: &str| {
            parse(&["--refresh-token-file", rt, "--client-secret-file", secret])
        };
        let (bound_good, inner_good) = ids(&with(&rt1, &good));
        let (bound_bad, inner_bad) = ids(&with(&rt1, &bad));
        assert!(bound_good.contains("|fp=cs:"), "{bound_good}");
        assert_ne!(bound_good, bound_bad, "another secret misses the cache");
        // The stored refresh token's record key derives from the unbound
        // id: a rotated client secret keeps finding the newest one.
        assert_eq!(inner_good, inner_bad);
        assert!(!inner_good.contains("fp="));
        // The binding is the secret's alone, whatever the refresh token.
        let binding = |s: &Settings| credential(s, URL, &fingerprints()).expect("credential").1;
        assert_eq!(binding(&with(&rt1, &good)), binding(&with(&rt2, &good)));
        assert!(!bound_good.contains("first-refresh-token"));
        assert!(!bound_good.contains("good-secret"));

        // A public client has nothing to bind to.
        let public = parse(&["--refresh-token-file", &rt1]);
        assert_eq!(binding(&public), Binding::None);
    }

    #[test]
    fn keys_and_certificate_keys_are_fingerprinted_mtls_and_assertions_are_bound_by_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = keys();
        let path = |name: &str| keys.join(name).to_str().expect("utf-8").to_owned();

        let (rsa, _) = ids(&parse(&["--private-key-file", &path("rsa-test-only.pem")]));
        let (ec, _) = ids(&parse(&["--private-key-file", &path("ec-test-only.pem")]));
        assert!(rsa.contains("|fp=pk:") && ec.contains("|fp=pk:"), "{rsa}");
        assert_ne!(rsa, ec);

        let (cert, _) = ids(&parse(&[
            "--certificate-file",
            &path("rsa-test-only.crt"),
            "--private-key-file",
            &path("rsa-test-only.pem"),
        ]));
        assert!(
            cert.contains("x5t#S256=") && cert.contains("|fp=pk:"),
            "{cert}"
        );

        let (mtls, _) = ids(&parse(&[
            "--client-certificate-file",
            &path("mtls-client-test-only.pem"),
        ]));
        let (other, _) = ids(&parse(&[
            "--client-certificate-file",
            &path("mtls-other-test-only.pem"),
        ]));
        assert!(
            mtls.contains("x5t#S256=") && !mtls.contains("fp="),
            "{mtls}"
        );
        assert_ne!(mtls, other);

        let assertion = file(dir.path(), "assertion", "eyJhbGciOi.assertion.one\n");
        let (first, _) = ids(&parse(&["--client-assertion-file", &assertion]));
        std::fs::write(&assertion, "eyJhbGciOi.assertion.two\n").expect("rotate");
        let (rotated, _) = ids(&parse(&["--client-assertion-file", &assertion]));
        assert_eq!(first, rotated, "a rotated assertion keeps its entries");
        assert!(first.contains(&assertion) && !first.contains("assertion.one"));
        // Its entries are found only by a caller who can read the file.
        std::fs::remove_file(&assertion).expect("remove");
        let s = parse(&["--client-assertion-file", &assertion]);
        assert!(credential(&s, URL, &fingerprints()).is_err());
    }

    #[test]
    fn two_client_authentications_are_a_usage_error_without_a_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = file(dir.path(), "secret", "s\n");
        let assertion = file(dir.path(), "assertion", "a\n");
        let s = parse(&[
            "--client-secret-file",
            &secret,
            "--client-assertion-file",
            &assertion,
        ]);
        let Err(e) = credential(&s, URL, &fingerprints()) else {
            panic!("two methods refused")
        };
        assert_eq!(e.kind(), Kind::Usage, "{e}");
        let Err(e) = credential(&parse(&[]), URL, &fingerprints()) else {
            panic!("no method refused")
        };
        assert_eq!(e.kind(), Kind::Usage, "{e}");
    }

    #[test]
    fn from_env_is_bound_to_the_secret_or_key_in_the_file_its_variables_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fk = fingerprints();
        let secret = file(dir.path(), "secret", "env-secret\n");
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let b = env_binding(vars(vec![("TOKEN_CACHE_CLIENT_SECRET_FILE", secret)]), &fk)
            .expect("binding");
        assert_eq!(b, Binding::fingerprint("cs", &fk, b"env-secret"));

        let key = keys().join("rsa-test-only.pem");
        let pem = std::fs::read_to_string(&key).expect("key");
        let key = key.to_str().expect("utf-8").to_owned();
        let cert = keys()
            .join("rsa-test-only.crt")
            .to_str()
            .expect("utf-8")
            .to_owned();
        let b = env_binding(
            vars(vec![
                ("AZURE_CLIENT_CERTIFICATE_PATH", cert.clone()),
                ("TOKEN_CACHE_PRIVATE_KEY_FILE", key.clone()),
            ]),
            &fk,
        )
        .expect("binding");
        assert_eq!(b, Binding::fingerprint("pk", &fk, pem.trim().as_bytes()));
        let b =
            env_binding(vars(vec![("TOKEN_CACHE_PRIVATE_KEY_FILE", key)]), &fk).expect("binding");
        assert_eq!(b, Binding::fingerprint("pk", &fk, pem.trim().as_bytes()));

        let b = env_binding(
            vars(vec![(
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/token".into(),
            )]),
            &fk,
        )
        .expect("binding");
        assert_eq!(b, Binding::None, "an assertion file is bound by its path");
    }

    #[test]
    fn the_warm_path_declines_managed_identities_and_from_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(hot::DIR)).expect("mkdir");
        let store = format!("sled:{}", dir.path().display());
        let cli = Cli::try_parse_from([
            "tokencache",
            "get",
            "--managed-identity",
            "gcp",
            "--store",
            &store,
        ])
        .expect("flags parse");
        let Command::Get(args) = cli.command else {
            unreachable!("a get command")
        };
        let s = settings(*args).expect("settings");
        assert!(!warm(&s).expect("warm"));
        let cli = Cli::try_parse_from(["tokencache", "get", "--from-env", "--store", &store])
            .expect("flags parse");
        let Command::Get(args) = cli.command else {
            unreachable!("a get command")
        };
        let s = settings(*args).expect("settings");
        assert!(!warm(&s).expect("warm"));
    }
}
