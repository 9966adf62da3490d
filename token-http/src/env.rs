//! The environment variables [`OAuthCredential::from_env`] reads: one
//! documented set, ours (`TOKEN_CACHE_*`) and the Azure-standard ones
//! (`AZURE_*`, as the Azure SDKs' environment and workload identity
//! credentials read them).

use std::path::{Path, PathBuf};

use token_core::Secret;

use crate::certificate::Certificate;
use crate::credential::{OAuthCredential, OAuthCredentialBuilder};
use crate::discovery::ServerMetadata;
use crate::error::ConfigError;
use crate::file_auth::PrivateKeyFile;
use crate::grant::Grant;
use crate::jwt::PrivateKey;

/// The token endpoint URL.
pub const ENV_TOKEN_URL: &str = "TOKEN_CACHE_TOKEN_URL";
/// The issuer, whose token endpoint is discovered (OIDC, then RFC 8414);
/// an alternative to [`ENV_TOKEN_URL`].
pub const ENV_ISSUER: &str = "TOKEN_CACHE_ISSUER";
/// The client id.
pub const ENV_CLIENT_ID: &str = "TOKEN_CACHE_CLIENT_ID";
/// A file holding the client secret (`client_secret_basic`), read once.
pub const ENV_CLIENT_SECRET_FILE: &str = "TOKEN_CACHE_CLIENT_SECRET_FILE";
/// A file holding a client assertion, re-read at every fetch.
pub const ENV_CLIENT_ASSERTION_FILE: &str = "TOKEN_CACHE_CLIENT_ASSERTION_FILE";
/// A PEM with the client certificate (chain, leaf first) and, unless
/// [`ENV_PRIVATE_KEY_FILE`] is set, its private key: `private_key_jwt`
/// naming the certificate by `x5t#S256`.
pub const ENV_CERTIFICATE_FILE: &str = "TOKEN_CACHE_CERTIFICATE_FILE";
/// The private key PEM for [`ENV_CERTIFICATE_FILE`] when it is kept apart,
/// or on its own for a plain `private_key_jwt` (the key's `kid` from
/// [`ENV_KEY_ID`]).
pub const ENV_PRIVATE_KEY_FILE: &str = "TOKEN_CACHE_PRIVATE_KEY_FILE";
/// The `kid` of a `private_key_jwt` key.
pub const ENV_KEY_ID: &str = "TOKEN_CACHE_KEY_ID";
/// Azure: the client (application) id; used when [`ENV_CLIENT_ID`] is unset.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Azure: the tenant; with no token URL or issuer set, the token endpoint
/// is `<authority host>/<tenant>/oauth2/v2.0/token`.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Azure workload identity: the federated token file (a client assertion,
/// re-read at every fetch); used when [`ENV_CLIENT_ASSERTION_FILE`] is unset.
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// Azure: the authority host. Defaults to [`AZURE_PUBLIC_CLOUD`].
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// Azure: a PEM with the client certificate and key; used when
/// [`ENV_CERTIFICATE_FILE`] is unset. Sends `x5t` as well, as Entra ID
/// looks certificates up by it.
pub const AZURE_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
/// Azure: `true` sends the certificate chain (`x5c`), for subject
/// name/issuer authentication.
pub const AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: &str = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN";

/// The Azure public cloud's authority host, the default of
/// [`AZURE_AUTHORITY_HOST`].
pub const AZURE_PUBLIC_CLOUD: &str = "https://login.microsoftonline.com";

/// A client secret file larger than this is refused.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

impl OAuthCredential {
    /// A client credentials credential configured by the process
    /// environment; see [`from_env_with`](Self::from_env_with) for the
    /// variables.
    pub async fn from_env() -> Result<OAuthCredential, ConfigError> {
        Self::from_env_with(|name| std::env::var(name).ok())
            .await?
            .build()
    }

    /// A client credentials credential configured by variables looked up
    /// with `var` (the process environment for [`from_env`](Self::from_env)),
    /// as a builder to adjust (timeouts, clock) before `build`.
    ///
    /// | what | variables, first set wins |
    /// |---|---|
    /// | token endpoint | [`ENV_TOKEN_URL`]; [`ENV_ISSUER`] (discovered); [`AZURE_TENANT_ID`] with [`AZURE_AUTHORITY_HOST`] (default [`AZURE_PUBLIC_CLOUD`]) |
    /// | client id | [`ENV_CLIENT_ID`]; [`AZURE_CLIENT_ID`] |
    /// | client authentication, exactly one | [`ENV_CLIENT_SECRET_FILE`]; [`ENV_CLIENT_ASSERTION_FILE`] or [`AZURE_FEDERATED_TOKEN_FILE`]; [`ENV_CERTIFICATE_FILE`] or [`AZURE_CLIENT_CERTIFICATE_PATH`] (with [`ENV_PRIVATE_KEY_FILE`] when the key is apart, [`AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`]); [`ENV_PRIVATE_KEY_FILE`] alone (with [`ENV_KEY_ID`]) |
    ///
    /// Empty values count as unset. Secrets are only ever read from files,
    /// never from the variables themselves; a client secret, key or
    /// certificate file is read again when it changes (see
    /// [`OAuthCredentialBuilder::client_secret_file`]), an assertion file at
    /// every fetch. Errors name the variable and
    /// the file; two authentication methods set at once is an error rather
    /// than a silent choice.
    pub async fn from_env_with(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<OAuthCredentialBuilder, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|&name| get(name).map(|value| (name, value)))
        };
        let (_, client_id) = first(&[ENV_CLIENT_ID, AZURE_CLIENT_ID]).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "no client id in the environment: set {ENV_CLIENT_ID} (or {AZURE_CLIENT_ID})"
            ))
        })?;
        let builder = if let Some(url) = get(ENV_TOKEN_URL) {
            OAuthCredential::client_credentials(url, client_id)
        } else if let Some(issuer) = get(ENV_ISSUER) {
            let metadata = ServerMetadata::discover(&issuer).await?;
            OAuthCredential::from_metadata(&metadata, Grant::ClientCredentials, client_id)
        } else if let Some(tenant) = get(AZURE_TENANT_ID) {
            if !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(ConfigError::Invalid(format!(
                    "{AZURE_TENANT_ID} is not a tenant id or domain: {tenant:?}"
                )));
            }
            let host = get(AZURE_AUTHORITY_HOST).unwrap_or_else(|| AZURE_PUBLIC_CLOUD.to_owned());
            let url = format!("{}/{tenant}/oauth2/v2.0/token", host.trim_end_matches('/'));
            OAuthCredential::client_credentials(url, client_id)
        } else {
            return Err(ConfigError::Invalid(format!(
                "no token endpoint in the environment: set {ENV_TOKEN_URL}, {ENV_ISSUER} or {AZURE_TENANT_ID}"
            )));
        };

        let secret = first(&[ENV_CLIENT_SECRET_FILE]);
        let assertion = first(&[ENV_CLIENT_ASSERTION_FILE, AZURE_FEDERATED_TOKEN_FILE]);
        let certificate = first(&[ENV_CERTIFICATE_FILE, AZURE_CLIENT_CERTIFICATE_PATH]);
        let key = first(&[ENV_PRIVATE_KEY_FILE]);
        let set: Vec<&str> = [&secret, &assertion, &certificate]
            .into_iter()
            .flatten()
            .map(|(name, _)| *name)
            .chain(
                key.as_ref()
                    .filter(|_| certificate.is_none())
                    .map(|(name, _)| *name),
            )
            .collect();
        if set.len() > 1 {
            return Err(ConfigError::Invalid(format!(
                "more than one client authentication in the environment ({}); set one",
                set.join(", ")
            )));
        }
        // Files are checked here, so errors name the variable; the
        // credential reads them again when they change (rotation).
        if let Some((_, path)) = secret {
            let path = PathBuf::from(path);
            read_file(&path, ENV_CLIENT_SECRET_FILE)?;
            return Ok(builder.client_secret_file(path));
        }
        if let Some((_, path)) = assertion {
            return Ok(builder.client_assertion_file(path));
        }
        if let Some((name, path)) = certificate {
            let pem = read_file(Path::new(&path), name)?;
            let key_pem = match &key {
                Some((key_var, key_path)) => read_file(Path::new(key_path), key_var)?,
                None => pem.clone(),
            };
            let in_file = |e: ConfigError| ConfigError::Invalid(format!("{name} ({path}): {e}"));
            let private_key = PrivateKey::from_any_pem(key_pem.expose())
                .map_err(in_file)?
                .with_certificate(Certificate::from_pem(pem.expose()).map_err(in_file)?)
                .map_err(in_file)?;
            let key_path = key.as_ref().map_or(&path, |(_, key_path)| key_path);
            let mut key_file = PrivateKeyFile::new(key_path, private_key.algorithm())
                .with_certificate_file(&path)
                .with_x5t(name == AZURE_CLIENT_CERTIFICATE_PATH)
                .with_x5c(
                    get(AZURE_CLIENT_SEND_CERTIFICATE_CHAIN)
                        .is_some_and(|v| matches!(v.trim(), "true" | "1" | "True" | "TRUE")),
                );
            if let Some(kid) = get(ENV_KEY_ID) {
                key_file = key_file.with_key_id(kid);
            }
            return Ok(builder.private_key_jwt_file(key_file));
        }
        if let Some((name, path)) = key {
            let pem = read_file(Path::new(&path), name)?;
            let private_key = PrivateKey::from_any_pem(pem.expose())
                .map_err(|e| ConfigError::Invalid(format!("{name} ({path}): {e}")))?;
            let mut key_file = PrivateKeyFile::new(&path, private_key.algorithm());
            if let Some(kid) = get(ENV_KEY_ID) {
                key_file = key_file.with_key_id(kid);
            }
            return Ok(builder.private_key_jwt_file(key_file));
        }
        Err(ConfigError::Invalid(format!(
            "no client authentication in the environment: set {ENV_CLIENT_SECRET_FILE}, {ENV_CLIENT_ASSERTION_FILE} (or {AZURE_FEDERATED_TOKEN_FILE}), {ENV_CERTIFICATE_FILE} (or {AZURE_CLIENT_CERTIFICATE_PATH}) or {ENV_PRIVATE_KEY_FILE}"
        )))
    }
}

/// A secret or PEM file, whole, trimmed; missing or empty is an error
/// naming the variable and the path.
fn read_file(path: &Path, var: &str) -> Result<Secret, ConfigError> {
    use std::io::Read as _;
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| ConfigError::Invalid(format!("{var}: could not open {shown}: {e}")))?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::Invalid(format!("{var}: could not read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(ConfigError::Invalid(format!(
            "{var}: {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ConfigError::Invalid(format!("{var}: {shown} is not UTF-8 text")))?
        .trim();
    if text.is_empty() {
        return Err(ConfigError::Invalid(format!("{var}: {shown} is empty")));
    }
    Ok(Secret::new(text))
}
