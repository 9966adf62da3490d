//! `tokencache get`: settings (flags over profile), the credential, the
//! cache, and the printed token.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use std::sync::Arc;

use token_core::{Credential, Secret, Token, TokenCache, TokenRequest};
use token_http::{
    AppServiceCredential, AzureImdsCredential, GcpMetadataCredential, ManagedIdentityId,
    OAuthCredential, PrivateKey, ServerMetadata, SigningAlgorithm, StoredRefreshToken,
};
use zeroize::Zeroizing;

use crate::cli::{Alg, AuthMethod, Format, GetArgs, ManagedKind};
use crate::client_auth;
use crate::config::{self, Profile};
use crate::error::{self, CliError, Kind};
use crate::store::{self, Entry, StoreSpec};
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
    pub(crate) scopes: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) store: StoreSpec,
    format: Format,
    pub(crate) key_file: Option<PathBuf>,
    /// The credential comes from the environment (`--from-env`).
    from_env: bool,
}

pub(crate) fn settings(args: GetArgs) -> Result<Settings, CliError> {
    let profile = match &args.profile {
        Some(name) => {
            let path = config::config_path(args.locations.config.as_deref())?;
            config::load_profile(&path, name)?
        }
        None => Profile::default(),
    };
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
    if token_url.is_none() && issuer.is_none() && !from_env {
        return Err(CliError::config(
            "no token endpoint: give --token-url URL or --issuer URL (or a --profile that has one, \
             or --from-env)",
        ));
    }
    let client_id = match args.client_id.or(profile.client_id) {
        Some(id) => id,
        // Known once the credential is built from the environment.
        None if from_env => String::new(),
        None => {
            return Err(CliError::config(
                "no client id: give --client-id ID (or a --profile that has one)",
            ))
        }
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
    })
}

/// Settings for `--managed-identity`: no IdP, client or secret (a flag for
/// one conflicts on the command line; the profile must not mix them either).
fn managed_settings(
    args: GetArgs,
    profile: Profile,
    managed: Option<ManagedKind>,
) -> Result<Settings, CliError> {
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
    })
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

fn private_key(s: &Settings, path: &std::path::Path) -> Result<PrivateKey, CliError> {
    let pem = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            CliError::config(format!(
                "cannot read the private key {}: {e}",
                path.display()
            ))
        })?;
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
    Ok(match &s.key_id {
        Some(kid) => key.with_key_id(kid.clone()),
        None => key,
    })
}

/// `--from-env`: the credential as `OAuthCredential::from_env` builds it.
async fn credential_from_env(s: &mut Settings) -> Result<OAuthCredential, CliError> {
    let credential = OAuthCredential::from_env().await.map_err(|e| match e {
        token_http::ConfigError::Discovery { .. } => {
            CliError::new(Kind::IdpUnavailable, e.to_string())
        }
        e => CliError::config(format!("--from-env: {e}")),
    })?;
    s.client_id = credential.client_id().to_owned();
    s.token_url = Some(credential.token_url().to_owned());
    Ok(credential)
}

pub(crate) async fn credential(s: &mut Settings) -> Result<OAuthCredential, CliError> {
    let token_url = match (&s.token_url, &s.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => ServerMetadata::discover(issuer)
            .await
            .map_err(|e| CliError::new(Kind::IdpUnavailable, e.to_string()))?
            .token_endpoint()
            .to_owned(),
        (None, None) if s.from_env => return credential_from_env(s).await,
        (None, None) => return Err(CliError::config("no token endpoint")),
    };
    s.token_url = Some(token_url.clone());
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
    let auth = match s.auth {
        Some(a) => a,
        // A refresh-token grant without client authentication: a public
        // client (RFC 6749 §6), as native apps and CLIs are.
        None if s.refresh_token.is_some() && given.is_empty() => {
            return builder
                .build()
                .map_err(|e| CliError::config(format!("invalid settings: {e}")))
        }
        None => client_auth::infer(&given)?,
    };
    let builder = match auth {
        AuthMethod::Basic | AuthMethod::Post => {
            let secret = s.secret.clone().ok_or_else(|| {
                CliError::config(
                    "--auth basic/post needs a client secret: give --client-secret-env VAR or \
                     --client-secret-file PATH",
                )
            })?;
            if auth == AuthMethod::Basic {
                builder.client_secret(secret)
            } else {
                builder.client_secret_post(secret)
            }
        }
        AuthMethod::PrivateKeyJwt => builder.private_key_jwt(match &s.certificate {
            Some(cert) => {
                let key = s.private_key.as_deref().map(|p| private_key(s, p)).transpose()?;
                client_auth::certificate_key(cert, key, s.key_id.as_deref(), s.x5t, s.x5c)?
            }
            None => {
                let path = s.private_key.clone().ok_or_else(|| {
                    CliError::config(
                        "--auth private-key-jwt needs --private-key-file PEM or --certificate-file PEM",
                    )
                })?;
                private_key(s, &path)?
            }
        }),
        AuthMethod::ClientAssertion => {
            let path = s.assertion_file.clone().ok_or_else(|| {
                CliError::config("--auth client-assertion needs --client-assertion-file PATH")
            })?;
            // Checked now for a clear start-up error; read again at every fetch.
            client_auth::check_assertion_file(&path)?;
            builder.client_assertion_file(path)
        }
        AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
            let certificate = client_auth::client_certificate(
                s.client_certificate.as_deref(),
                s.client_key.as_deref(),
            )?;
            if auth == AuthMethod::TlsClientAuth {
                builder.tls_client_auth(certificate)
            } else {
                builder.self_signed_tls_client_auth(certificate)
            }
        }
    };
    let builder = match &s.ca_file {
        Some(path) => {
            builder.root_certificate_pem(client_auth::read_pem("CA file", path)?.as_str())
        }
        None => builder,
    };
    builder
        .build()
        .map_err(|e| CliError::config(format!("invalid settings: {e}")))
}

/// A store opened for some settings.
pub(crate) struct OpenStore {
    spec: StoreSpec,
    key_file: Option<PathBuf>,
    store: store::Opened,
}

/// The credential the settings describe (OAuth, managed identity, or a
/// refresh-token grant kept in the store), the token URL errors name, and
/// the opened store. `get` and `serve` both build theirs here; `opened`
/// holds stores already open in this process (sled allows one opener), and
/// gets the new one.
pub(crate) async fn credential_and_store(
    s: &mut Settings,
    opened: &mut Vec<OpenStore>,
) -> Result<(Arc<dyn Credential>, String, store::Opened), CliError> {
    let (oauth, managed) = match s.managed {
        Some(kind) => (None, Some(managed_credential(kind, s.identity.as_deref())?)),
        None => (Some(credential(s).await?), None),
    };
    let token_url = match (&oauth, &managed) {
        (Some(c), _) => c.token_url().to_owned(),
        (None, Some((_, url))) => url.clone(),
        (None, None) => return Err(CliError::internal("no credential")),
    };
    let opened = match opened
        .iter()
        .find(|o| o.spec == s.store && o.key_file == s.key_file)
    {
        Some(o) => o.store.clone(),
        None => {
            let store = store::open(&s.store, s.key_file.as_deref()).await?;
            opened.push(OpenStore {
                spec: s.store.clone(),
                key_file: s.key_file.clone(),
                store: store.clone(),
            });
            store
        }
    };
    // A refresh-token grant keeps its newest (rotated) refresh token in the
    // store, redeemed under that record's lease by one process at a time.
    let credential: Arc<dyn Credential> = match (oauth, managed) {
        (Some(c), _) if s.refresh_token.is_some() => {
            Arc::new(StoredRefreshToken::new(c, opened.as_dyn()))
        }
        (Some(c), _) => Arc::new(c),
        (None, Some((c, _))) => c,
        (None, None) => return Err(CliError::internal("no credential")),
    };
    Ok((credential, token_url, opened))
}

/// Runs `get`.
pub(crate) async fn run(args: GetArgs) -> Result<(), CliError> {
    let mut s = settings(args)?;
    let (credential, token_url, opened) = credential_and_store(&mut s, &mut Vec::new()).await?;
    let request = token_request(&s);
    let credential_id = credential.id().to_owned();
    let cache = TokenCache::builder(credential)
        .store_arc(opened.as_dyn())
        .build();
    let key = cache.cache_key(&request);

    let mut token = cache
        .get_token(&request)
        .await
        .map_err(|e| error::from_engine(&e, &token_url))?;

    // A token in its refresh window is handed out at once and refreshed in
    // the background; this process would exit before the refresh lands, so
    // refresh it now and print the new token. A failed refresh leaves the
    // still-valid token (stale-if-error).
    if token.refresh_at().is_some_and(|at| SystemTime::now() >= at) {
        match cache.refresh(&request).await {
            Ok(fresh) => token = fresh,
            Err(e) => {
                let until = token.expires_at().map(rfc3339).unwrap_or_default();
                eprintln!(
                    "tokencache: warning: refreshing the token failed ({}); printing the cached \
                     token, valid until {until}",
                    error::from_engine(&e, &token_url)
                );
            }
        }
    }

    let stats = cache.stats();
    if stats.store_corrupt_reads > 0 {
        eprintln!(
            "tokencache: warning: the cached entry could not be decrypted (damaged, or written with \
             another key); a new token was fetched"
        );
    }
    if stats.store_errors > 0 {
        eprintln!(
            "tokencache: warning: the token store failed during this call; the token was fetched \
             from the IdP and may not be cached"
        );
    }
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
        if s.refresh_token.is_some() {
            // The newest refresh token's record, so that `inspect` lists it
            // and `purge --client-id` forgets it with the client's tokens.
            opened
                .record(&Entry {
                    key: StoredRefreshToken::<OAuthCredential>::record_key_for(&credential_id)
                        .as_str()
                        .to_owned(),
                    client_id: s.client_id.clone(),
                    token_url: token_url.clone(),
                    scopes: Vec::new(),
                    audience: None,
                    resource: None,
                })
                .await?;
        }
    }
    print(&token, s.format, stats.idp_calls == 0)
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

fn print(token: &Token, format: Format, from_cache: bool) -> Result<(), CliError> {
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
