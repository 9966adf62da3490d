//! `tokencache get`: settings (flags over profile), the credential, the
//! cache, and the printed token.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use token_core::{Secret, Token, TokenCache, TokenRequest};
use token_http::{OAuthCredential, PrivateKey, ServerMetadata, SigningAlgorithm};
use zeroize::Zeroizing;

use crate::cli::{Alg, AuthMethod, Format, GetArgs};
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
    private_key: Option<PathBuf>,
    key_id: Option<String>,
    alg: Option<Alg>,
    auth: Option<AuthMethod>,
    pub(crate) scopes: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) store: StoreSpec,
    format: Format,
    pub(crate) key_file: Option<PathBuf>,
}

pub(crate) fn settings(args: GetArgs) -> Result<Settings, CliError> {
    let profile = match &args.profile {
        Some(name) => {
            let path = config::config_path(args.locations.config.as_deref())?;
            config::load_profile(&path, name)?
        }
        None => Profile::default(),
    };
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
    if token_url.is_none() && issuer.is_none() {
        return Err(CliError::config(
            "no token endpoint: give --token-url URL or --issuer URL (or a --profile that has one)",
        ));
    }
    let client_id = args.client_id.or(profile.client_id).ok_or_else(|| {
        CliError::config("no client id: give --client-id ID (or a --profile that has one)")
    })?;
    let secret = match (secret_env, secret_file) {
        (Some(var), _) => Some(secret_from_env(&var)?),
        (None, Some(path)) => Some(secret_from_file(&path)?),
        (None, None) => None,
    };
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
        private_key: args.private_key_file.or(profile.private_key_file),
        key_id: args.key_id.or(profile.key_id),
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

fn secret_from_env(var: &str) -> Result<Secret, CliError> {
    match std::env::var_os(var) {
        None => Err(CliError::config(format!(
            "the environment variable {var} (from --client-secret-env) is not set"
        ))),
        Some(v) => {
            let v = v.into_string().map_err(|_| {
                CliError::config(format!(
                    "the environment variable {var} is not valid Unicode"
                ))
            })?;
            if v.is_empty() {
                return Err(CliError::config(format!(
                    "the environment variable {var} (from --client-secret-env) is empty"
                )));
            }
            Ok(Secret::new(v))
        }
    }
}

fn secret_from_file(path: &std::path::Path) -> Result<Secret, CliError> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            CliError::config(format!(
                "cannot read the client secret file {}: {e}",
                path.display()
            ))
        })?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(CliError::config(format!(
            "the client secret file {} is empty",
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

pub(crate) async fn credential(s: &mut Settings) -> Result<OAuthCredential, CliError> {
    let token_url = match (&s.token_url, &s.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => ServerMetadata::discover(issuer)
            .await
            .map_err(|e| CliError::new(Kind::IdpUnavailable, e.to_string()))?
            .token_endpoint()
            .to_owned(),
        (None, None) => return Err(CliError::config("no token endpoint")),
    };
    s.token_url = Some(token_url.clone());
    let builder = OAuthCredential::client_credentials(token_url, s.client_id.clone());
    let auth = match (s.auth, &s.secret, &s.private_key) {
        (Some(a), _, _) => a,
        (None, Some(_), None) => AuthMethod::Basic,
        (None, None, Some(_)) => AuthMethod::PrivateKeyJwt,
        (None, Some(_), Some(_)) => {
            return Err(CliError::config(
                "both a client secret and a private key were given: choose one with --auth",
            ))
        }
        (None, None, None) => {
            return Err(CliError::config(
                "no client authentication: give --client-secret-env VAR, --client-secret-file \
                 PATH or --private-key-file PEM",
            ))
        }
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
        AuthMethod::PrivateKeyJwt => {
            let path = s.private_key.clone().ok_or_else(|| {
                CliError::config("--auth private-key-jwt needs --private-key-file PEM")
            })?;
            builder.private_key_jwt(private_key(s, &path)?)
        }
    };
    builder
        .build()
        .map_err(|e| CliError::config(format!("invalid settings: {e}")))
}

/// Runs `get`.
pub(crate) async fn run(args: GetArgs) -> Result<(), CliError> {
    let mut s = settings(args)?;
    let credential = credential(&mut s).await?;
    let token_url = credential.token_url().to_owned();
    let opened = store::open(&s.store, s.key_file.as_deref()).await?;

    let request = token_request(&s);

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
