//! `OAuthCredential`: the client credentials, refresh token and token
//! exchange grants over HTTP, as a `token_core::Credential`.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use ring::digest::{digest, SHA256};
use token_core::{
    AccessToken, Clock, Credential, CredentialError, FailureCause, Secret, SystemClock,
    TokenRequest, TokenType,
};
use zeroize::Zeroizing;

use crate::assertion::{AssertionFile, AssertionSource};
use crate::certificate::ClientCertificate;
use crate::client_auth::{form_encode, AuthContext, ClientAuth};
use crate::discovery::{check_url, ServerMetadata};
use crate::dpop::{count_nonce_retry, DpopKey, DpopRole, DPOP};
use crate::error::ConfigError;
use crate::file_auth::{CurrentAuth, FileAuth, FileAuthSpec, PrivateKeyFile};
use crate::grant::Grant;
use crate::jwt::{PrivateKey, DEFAULT_ASSERTION_LIFETIME};
use crate::response::{parse_redacting, ClockSkew, TokenResponse, TOKEN_ENDPOINT};
use crate::transport::{self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

/// A clock difference at least this large is logged (once per credential)
/// as a warning: beyond it, tokens may be refused by resource servers whose
/// clocks agree with the authorization server.
pub const DEFAULT_SKEW_WARNING: Duration = Duration::from_secs(30);

const NO_SKEW: i64 = i64::MIN;

/// An OAuth 2.0 client that obtains tokens from a token endpoint over HTTP
/// (reqwest with rustls): client credentials, refresh token or token
/// exchange, with `client_secret_basic`, `client_secret_post`,
/// `private_key_jwt` or no client authentication.
///
/// Put it in front of a [`TokenCache`](token_core::TokenCache); the cache
/// decides when to fetch. Each fetch sends the request's scopes (`scope`),
/// `audience`, resource indicators (`resource`, RFC 8707) and extra
/// parameters, together with the credential's own extra parameters.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use token_core::{TokenCache, TokenRequest};
/// use token_http::OAuthCredential;
///
/// let credential = OAuthCredential::client_credentials("https://idp.example/oauth/token", "my-service")
///     .client_secret("from-the-vault")
///     .build()?;
/// let cache = TokenCache::builder(credential).build();
/// let token = cache.get_token(&TokenRequest::builder().scope("orders.read").build()).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// # Identity
///
/// [`id`](Credential::id) is `<grant>|<token URL>|<client id>|<auth method>`
/// plus, where they change the token, the token-exchange types, the
/// credential's extra parameters and, for a refresh-token grant, a SHA-256
/// prefix of the configured refresh token. It never contains a secret.
///
/// # Clock skew
///
/// Every response's `Date` header is compared with the local clock; the
/// last difference beyond the tolerance is available from
/// [`clock_skew`](Self::clock_skew) and the first one over
/// [`DEFAULT_SKEW_WARNING`] is logged once as a warning. How the lifetime is
/// kept safe despite it is described at
/// [`parse_token_response`](crate::parse_token_response).
pub struct OAuthCredential {
    id: String,
    grant: Grant,
    token_url: String,
    client_id: String,
    /// The client authentication at build time (its id part is in `id`).
    auth: ClientAuth,
    /// Where the authentication is read from when it lives in files.
    file_auth: Option<FileAuth>,
    params: Vec<(String, String)>,
    client: reqwest::Client,
    request_timeout: Duration,
    assertion_lifetime: Duration,
    assertion_audience: Option<String>,
    clock: Arc<dyn Clock>,
    /// The newest refresh token this process has seen (refresh grant only).
    latest_refresh: Mutex<Option<Secret>>,
    skew_millis: AtomicI64,
    skew_warned: AtomicBool,
    /// DPoP keys (RFC 9449) a request may be bound to, by thumbprint.
    dpop_keys: Vec<DpopKey>,
}

/// How many times one token request is sent again because the server asked
/// for a DPoP nonce (`use_dpop_nonce`) and gave a new one: once, as RFC 9449
/// §8 describes; a server that asks again right after is not obeyed in a
/// loop.
pub(crate) const MAX_DPOP_NONCE_RETRIES: usize = 1;

impl OAuthCredential {
    /// A client credentials grant against `token_url`. Set the client
    /// authentication on the builder.
    pub fn client_credentials(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> OAuthCredentialBuilder {
        OAuthCredentialBuilder::new(Grant::ClientCredentials, token_url.into(), client_id.into())
    }

    /// A refresh-token grant starting from `refresh_token`.
    pub fn refresh_token(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        refresh_token: impl Into<Secret>,
    ) -> OAuthCredentialBuilder {
        OAuthCredentialBuilder::new(
            Grant::RefreshToken(refresh_token.into()),
            token_url.into(),
            client_id.into(),
        )
    }

    /// A token exchange (RFC 8693) of access tokens; change the types with
    /// [`OAuthCredentialBuilder::grant`].
    pub fn token_exchange(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> OAuthCredentialBuilder {
        OAuthCredentialBuilder::new(Grant::token_exchange(), token_url.into(), client_id.into())
    }

    /// A credential for `grant` at the token endpoint named by `metadata`
    /// (see [`ServerMetadata::discover`]).
    pub fn from_metadata(
        metadata: &ServerMetadata,
        grant: Grant,
        client_id: impl Into<String>,
    ) -> OAuthCredentialBuilder {
        let mut builder = OAuthCredentialBuilder::new(
            grant,
            metadata.token_endpoint().to_owned(),
            client_id.into(),
        );
        builder.mtls_token_url = metadata.mtls_token_endpoint().map(str::to_owned);
        builder
    }

    /// Discovers `issuer`'s token endpoint (OIDC discovery, then RFC 8414)
    /// and starts a credential for `grant` there.
    pub async fn discover(
        issuer: &str,
        grant: Grant,
        client_id: impl Into<String>,
    ) -> Result<OAuthCredentialBuilder, ConfigError> {
        let metadata = ServerMetadata::discover(issuer).await?;
        Ok(Self::from_metadata(&metadata, grant, client_id))
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Every file this credential re-reads when it changes (client secret,
    /// key, certificate files; see
    /// [`OAuthCredentialBuilder::client_secret_file`]), for a layer that
    /// watches configuration. Empty when the authentication was given in
    /// memory. A client assertion file ([`AssertionFile`]) is not listed:
    /// it is read at every fetch anyway.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.file_auth
            .as_ref()
            .map(FileAuth::paths)
            .unwrap_or_default()
    }

    /// The SHA-256 thumbprint (`x5t#S256`) of the certificate this
    /// credential uses now: presented in mutual TLS, or named in
    /// `private_key_jwt` assertions. With certificate files, it is the
    /// certificate of the contents last read (at the last fetch), which may
    /// differ from the one in [`id`](Credential::id); see
    /// [`binding_changed`](Self::binding_changed).
    pub fn certificate_thumbprint(&self) -> Option<String> {
        let current = self.file_auth.as_ref().map(FileAuth::loaded);
        let auth = current.as_ref().map_or(&self.auth, |c| &c.auth);
        match auth {
            ClientAuth::PrivateKeyJwt(key) => key.certificate(),
            other => other.tls_certificate().map(ClientCertificate::certificate),
        }
        .map(|c| c.thumbprint_sha256().to_owned())
    }

    /// Whether the mutual-TLS certificate now presented (read again from
    /// its files after a rotation) is not the one whose thumbprint is in
    /// [`id`](Credential::id).
    ///
    /// The id, hence every cache key, keeps the thumbprint of the
    /// certificate read at build time, so that keys stay stable; but tokens
    /// the server issues from now on are bound (RFC 8705 §3) to the new
    /// certificate. When this returns `true`, build the credential again
    /// (its id then names the new certificate) and replace the cache or
    /// profile that uses this one; until then, a token bound to the new
    /// certificate is cached under the old certificate's key. Always
    /// `false` for other client authentication (a `private_key_jwt`
    /// assertion is not a binding).
    pub fn binding_changed(&self) -> bool {
        let Some(built) = self.auth.tls_certificate() else {
            return false;
        };
        self.certificate_thumbprint().as_deref() != Some(built.certificate().thumbprint_sha256())
    }

    /// The last clock difference with the authorization server beyond the
    /// tolerance, from the most recent response with a `Date` header that
    /// showed one.
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        match self.skew_millis.load(Ordering::Relaxed) {
            NO_SKEW => None,
            millis => Some(ClockSkew::from_millis(millis)),
        }
    }

    /// The DPoP keys requests may be bound to (see
    /// [`OAuthCredentialBuilder::dpop_key`]).
    pub fn dpop_keys(&self) -> &[DpopKey] {
        &self.dpop_keys
    }

    /// The DPoP key `request` is bound to: none for an unbound request to a
    /// credential without keys; an error when the two disagree (a request
    /// bound to a key this credential does not hold, or an unbound request
    /// to a DPoP credential: its token would be cached under a key without
    /// `jkt`, shared with Bearer tokens).
    fn dpop_key_for(&self, request: &TokenRequest) -> Result<Option<&DpopKey>, CredentialError> {
        match request.dpop_thumbprint() {
            None if self.dpop_keys.is_empty() => Ok(None),
            None => Err(CredentialError::permanent(format!(
                "this credential is DPoP-bound (key {}) but the request has no dpop_thumbprint; build it with TokenRequest::builder().dpop_thumbprint(key.thumbprint())",
                self.dpop_keys[0].thumbprint()
            ))
            .with_cause(FailureCause::Local)),
            Some(jkt) => self
                .dpop_keys
                .iter()
                .find(|k| k.thumbprint() == jkt)
                .map(Some)
                .ok_or_else(|| {
                    CredentialError::permanent(format!(
                        "the request is bound to the DPoP key with thumbprint {jkt}, which this credential does not hold (add it with dpop_key)"
                    ))
                    .with_cause(FailureCause::Local)
                }),
        }
    }

    fn record_skew(&self, response: &TokenResponse) {
        let Some(skew) = response.clock_skew() else {
            return;
        };
        self.skew_millis.store(skew.as_millis(), Ordering::Relaxed);
        if skew.magnitude() >= DEFAULT_SKEW_WARNING
            && !self.skew_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                token_url = %self.token_url,
                skew_ms = skew.as_millis(),
                "{skew}: token lifetimes are shortened when the local clock is ahead; fix the clock (NTP)"
            );
        }
    }

    /// The form body of one token request: the grant's fields, the client
    /// authentication's, then the credential's and the request's extra
    /// parameters. Values that are secrets end up only in the returned
    /// (wiped) body and in `redact`.
    async fn request_parts(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
        auth: &ClientAuth,
    ) -> Result<RequestParts, CredentialError> {
        let grant = self.grant.fields(request, |configured| {
            let latest = self
                .latest_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Grant::pick_refresh_token(previous, latest.as_ref(), configured)
        })?;
        let auth = auth
            .authenticate(&AuthContext {
                client_id: &self.client_id,
                audience: self
                    .assertion_audience
                    .as_deref()
                    .unwrap_or(&self.token_url),
                now: self.clock.now(),
                assertion_lifetime: self.assertion_lifetime,
            })
            .await?;
        let fields = grant
            .form
            .iter()
            .chain(auth.form.iter())
            .map(|(k, v)| (*k, v.as_str()));
        let extra = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(
                request
                    .params()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose())),
            );
        let mut body = Zeroizing::new(String::new());
        for (i, (k, v)) in fields.chain(extra).enumerate() {
            if i > 0 {
                body.push('&');
            }
            body.push_str(&form_encode(k));
            body.push('=');
            body.push_str(&Zeroizing::new(form_encode(v)));
        }
        let mut redact = grant.redact;
        redact.extend(auth.redact);
        Ok(RequestParts {
            body,
            authorization: auth.header,
            used_refresh: grant.used_refresh,
            redact,
        })
    }
}

/// An error from before the request was sent (the grant cannot honour the
/// request, an assertion could not be read or signed) says so, unless its
/// source (an assertion callback) gave a cause of its own.
fn nothing_sent(e: CredentialError) -> CredentialError {
    match e.cause() {
        FailureCause::Other => e.with_cause(FailureCause::Local),
        _ => e,
    }
}

/// One token request, ready to send.
struct RequestParts {
    body: Zeroizing<String>,
    authorization: Option<HeaderValue>,
    used_refresh: Option<Secret>,
    redact: Vec<Secret>,
}

#[async_trait]
impl Credential for OAuthCredential {
    fn id(&self) -> &str {
        &self.id
    }

    /// One token request; with client authentication from files, at most
    /// two (see [`OAuthCredentialBuilder::client_secret_file`]): when the
    /// server refuses the client (`invalid_client` or `unauthorized_client`
    /// with 400 or 401, or a bare 401) and the files' contents changed since
    /// they were read, once more with the new contents.
    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let token = self.fetch_once(request, previous).await?;
        Ok(crate::exchange::cap_expiry(request, token))
    }
}

impl OAuthCredential {
    async fn fetch_once(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let Some(files) = &self.file_auth else {
            return self
                .attempt(request, previous, &self.auth, &self.client)
                .await
                .map_err(|f| f.error);
        };
        let CurrentAuth {
            auth,
            client,
            generation,
        } = files.current().await;
        let client = client.as_ref().unwrap_or(&self.client);
        match self.attempt(request, previous, &auth, client).await {
            Ok(token) => Ok(token),
            Err(failure) if failure.client_refused && files.reread(generation).await => {
                tracing::info!(
                    token_url = %self.token_url,
                    client_id = %self.client_id,
                    code = failure.error.code(),
                    "the token endpoint refused the client and its credential files changed since they were read; retrying once with their new contents"
                );
                let CurrentAuth { auth, client, .. } = files.loaded();
                let client = client.as_ref().unwrap_or(&self.client);
                self.attempt(request, previous, &auth, client)
                    .await
                    .map_err(|f| f.error)
            }
            Err(failure) => Err(failure.error),
        }
    }
}

/// Why one token request failed, and whether the server refused the
/// client's authentication (which a rotated file may explain).
struct Failure {
    error: CredentialError,
    client_refused: bool,
    /// The server asked for a DPoP nonce and gave one we had not used.
    new_dpop_nonce: bool,
}

impl Failure {
    fn other(error: CredentialError) -> Self {
        Self {
            error,
            client_refused: false,
            new_dpop_nonce: false,
        }
    }
}

/// `invalid_client` (RFC 6749 §5.2: authentication failed) or
/// `unauthorized_client` (some servers say so for a wrong secret) with 400
/// or 401, or a 401 without an OAuth error.
fn refuses_the_client(status: http::StatusCode, error: &CredentialError) -> bool {
    let status = status.as_u16();
    match error.code() {
        Some("invalid_client" | "unauthorized_client") => status == 400 || status == 401,
        None => status == 401,
        Some(_) => false,
    }
}

impl OAuthCredential {
    /// One token request with `auth`, sent by `client`; for a DPoP-bound
    /// request, sent again (at most [`MAX_DPOP_NONCE_RETRIES`] times, with
    /// a fresh proof and client assertion) when the server asks for a nonce
    /// it has just given.
    async fn attempt(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
        auth: &ClientAuth,
        client: &reqwest::Client,
    ) -> Result<AccessToken, Failure> {
        let dpop = self.dpop_key_for(request).map_err(Failure::other)?;
        let mut retries = 0;
        loop {
            match self
                .attempt_once(request, previous, auth, client, dpop)
                .await
            {
                Err(failure) if failure.new_dpop_nonce && retries < MAX_DPOP_NONCE_RETRIES => {
                    retries += 1;
                    count_nonce_retry(DpopRole::AuthorizationServer);
                    tracing::debug!(
                        token_url = %self.token_url,
                        "the token endpoint asked for a DPoP nonce (use_dpop_nonce); retrying once with it"
                    );
                }
                Err(mut failure) if failure.new_dpop_nonce => {
                    failure.error = CredentialError::transient(format!(
                        "the token endpoint asked for a new DPoP nonce again after {retries} retry with the nonce it gave (use_dpop_nonce); not retrying further"
                    ))
                    .with_code("use_dpop_nonce")
                    .with_endpoint(&self.token_url)
                    .with_service(TOKEN_ENDPOINT);
                    return Err(failure);
                }
                other => return other,
            }
        }
    }

    /// One token request, sent once.
    async fn attempt_once(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
        auth: &ClientAuth,
        client: &reqwest::Client,
        dpop: Option<&DpopKey>,
    ) -> Result<AccessToken, Failure> {
        let RequestParts {
            body,
            authorization,
            used_refresh,
            redact: secrets,
        } = self
            .request_parts(request, previous, auth)
            .await
            .map_err(|e| Failure::other(nothing_sent(e)))?;
        let mut http = client
            .post(&self.token_url)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(value) = authorization {
            http = http.header(AUTHORIZATION, value);
        }
        if let Some(key) = dpop {
            let proof = key
                .proof_header(DpopRole::AuthorizationServer, "POST", &self.token_url, None)
                .map_err(|e| {
                    Failure::other(
                        CredentialError::permanent(e.to_string()).with_cause(FailureCause::Local),
                    )
                })?;
            http = http.header(DPOP, proof);
        }
        // The body is copied into reqwest's buffer, which is not wiped; ours is.
        let http = http.body(body.as_str().to_owned());
        drop(body);
        let sent_at = self.clock.now();
        let received = transport::send(http, &self.token_url, self.request_timeout)
            .await
            .map_err(|error| Failure {
                // A server may refuse a client certificate in the TLS
                // handshake itself.
                client_refused: auth.tls_certificate().is_some(),
                error: error.with_service(TOKEN_ENDPOINT),
                new_dpop_nonce: false,
            })?;
        // RFC 9449 §8: a nonce may come with any answer, a success included.
        let new_nonce = dpop.is_some_and(|key| {
            key.learn_nonce(
                DpopRole::AuthorizationServer,
                &self.token_url,
                &received.headers,
            )
        });
        let redact: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        let result = parse_redacting(
            received.status,
            &received.headers,
            &received.body,
            sent_at,
            &redact,
        )
        .map_err(|e| e.with_endpoint(&self.token_url));
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(
                    token_url = %self.token_url,
                    grant = self.grant.short_name(),
                    status = received.status.as_u16(),
                    transient = e.is_transient(),
                    code = e.code(),
                    "token request failed"
                );
                let client_refused = refuses_the_client(received.status, &e);
                let new_dpop_nonce = new_nonce && e.code() == Some("use_dpop_nonce");
                return Err(Failure {
                    error: e,
                    client_refused,
                    new_dpop_nonce,
                });
            }
        };
        self.record_skew(&response);
        tracing::debug!(
            token_url = %self.token_url,
            grant = self.grant.short_name(),
            expires_in = ?response.expires_in(),
            "token obtained"
        );
        let mut token = response.into_token();
        if let Some(key) = dpop {
            if *token.token_type() != TokenType::DPoP {
                return Err(Failure::other(
                    CredentialError::permanent(format!(
                        "the token endpoint answered a DPoP-bound request (key {}) with a `{}` token instead of a DPoP one; refusing the downgrade (does the server support DPoP for this client?)",
                        key.thumbprint(),
                        token.token_type().as_str()
                    ))
                    .with_endpoint(&self.token_url)
                    .with_service(TOKEN_ENDPOINT),
                ));
            }
        }
        if let Some(used) = used_refresh {
            match token.refresh_token() {
                // Rotated: remember the new one in case the cached token is
                // dropped (a 401) before the next refresh.
                Some(rotated) => {
                    *self
                        .latest_refresh
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(rotated.clone());
                }
                // Not rotated: keep the one just redeemed on the token, so
                // the cache holds it for the next refresh.
                None => token = token.with_refresh_token(used),
            }
        }
        Ok(token)
    }
}

impl fmt::Debug for OAuthCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredential")
            .field("id", &self.id)
            .field("grant", &self.grant)
            .field("auth", &self.auth)
            .field("watched_files", &self.watched_files())
            .field("request_timeout", &self.request_timeout)
            .field("clock_skew", &self.clock_skew())
            .field("dpop_keys", &self.dpop_keys)
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuthCredential`].
pub struct OAuthCredentialBuilder {
    grant: Grant,
    token_url: String,
    client_id: String,
    auth: Option<ClientAuth>,
    /// Client authentication from files (replaces `auth`, and vice versa).
    file_auth: Option<FileAuthSpec>,
    params: Vec<(String, String)>,
    client: Option<reqwest::Client>,
    connect_timeout: Duration,
    request_timeout: Duration,
    assertion_lifetime: Duration,
    assertion_audience: Option<String>,
    clock: Arc<dyn Clock>,
    root_pems: Vec<String>,
    /// From discovery: the token endpoint for mTLS clients (RFC 8705 §5).
    mtls_token_url: Option<String>,
    dpop_keys: Vec<DpopKey>,
}

impl OAuthCredentialBuilder {
    fn new(grant: Grant, token_url: String, client_id: String) -> Self {
        Self {
            grant,
            token_url,
            client_id,
            auth: None,
            file_auth: None,
            params: Vec::new(),
            client: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
            assertion_audience: None,
            clock: Arc::new(SystemClock),
            root_pems: Vec::new(),
            mtls_token_url: None,
            dpop_keys: Vec::new(),
        }
    }

    /// Authenticates with a client secret by `client_secret_basic`, the
    /// method every server must support (RFC 6749 §2.3.1).
    pub fn client_secret(self, secret: impl Into<Secret>) -> Self {
        self.auth(ClientAuth::ClientSecretBasic(secret.into()))
    }

    /// Authenticates with a client secret in the form body
    /// (`client_secret_post`).
    pub fn client_secret_post(self, secret: impl Into<Secret>) -> Self {
        self.auth(ClientAuth::ClientSecretPost(secret.into()))
    }

    /// Authenticates with a signed JWT (`private_key_jwt`).
    pub fn private_key_jwt(self, key: PrivateKey) -> Self {
        self.auth(ClientAuth::PrivateKeyJwt(key))
    }

    /// Authenticates with a client secret read from the file at `path`, by
    /// `client_secret_basic`; the file is read again when it changes, so a
    /// rotated secret is used without a restart.
    ///
    /// The file holds the secret alone; surrounding whitespace (a trailing
    /// newline) is ignored. It is read and checked by
    /// [`build`](Self::build): a missing, unreadable, empty or multi-line
    /// file is a [`ConfigError::File`] naming the path.
    ///
    /// # Rotation
    ///
    /// Before each token request the file is `stat`ed (length, modification
    /// and change times, inode); when that differs from the last read, the
    /// file is read again and its contents, if valid and different, are
    /// used from this request on. A file that is missing, empty or invalid
    /// then (half written) leaves the last good secret in use, with a
    /// warning naming the file, and is tried again at the next request.
    /// When the server refuses the client (`invalid_client` or
    /// `unauthorized_client`), the file is read again whatever its `stat`
    /// says; if the secret changed the request is retried once with the new
    /// one, never more, and never when nothing changed.
    ///
    /// The credential's [`id`](Credential::id) does not change with the
    /// secret: a token obtained with the old one stays cached until its
    /// refresh time. The same applies to the other `*_file` methods.
    pub fn client_secret_file(self, path: impl Into<PathBuf>) -> Self {
        self.file_auth(FileAuthSpec::ClientSecret {
            post: false,
            path: path.into(),
        })
    }

    /// As [`client_secret_file`](Self::client_secret_file), sending the
    /// secret in the form body (`client_secret_post`).
    pub fn client_secret_post_file(self, path: impl Into<PathBuf>) -> Self {
        self.file_auth(FileAuthSpec::ClientSecret {
            post: true,
            path: path.into(),
        })
    }

    /// Authenticates with `private_key_jwt`, the key (and the certificate
    /// named in assertions, when set) read from files that are read again
    /// when they change; see [`PrivateKeyFile`] and, for how a change is
    /// noticed, [`client_secret_file`](Self::client_secret_file). The key is
    /// checked by [`build`](Self::build) as
    /// [`private_key_jwt`](Self::private_key_jwt) checks it. The id names
    /// the certificate read at build time.
    pub fn private_key_jwt_file(self, key: PrivateKeyFile) -> Self {
        self.file_auth(FileAuthSpec::PrivateKeyJwt(key))
    }

    /// Authenticates by mutual TLS (`tls_client_auth`) with the certificate
    /// chain (PEM, leaf first) and private key read from these files (the
    /// same path twice for one PEM holding both), read again when they
    /// change; the HTTP client presenting them is then rebuilt and replaced.
    /// The pair is replaced only when the key matches the certificate, so a
    /// rotation that writes one file before the other keeps the last good
    /// pair meanwhile.
    ///
    /// The id keeps the thumbprint of the certificate read at build time;
    /// [`OAuthCredential::binding_changed`] says when the certificate
    /// presented is no longer that one. Otherwise as
    /// [`tls_client_auth`](Self::tls_client_auth) and, for rotation,
    /// [`client_secret_file`](Self::client_secret_file).
    pub fn tls_client_auth_files(
        self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.file_auth(FileAuthSpec::Mtls {
            self_signed: false,
            certificate: certificate.into(),
            key: key.into(),
        })
    }

    /// As [`tls_client_auth_files`](Self::tls_client_auth_files) for a
    /// self-signed certificate (`self_signed_tls_client_auth`).
    pub fn self_signed_tls_client_auth_files(
        self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.file_auth(FileAuthSpec::Mtls {
            self_signed: true,
            certificate: certificate.into(),
            key: key.into(),
        })
    }

    fn file_auth(mut self, spec: FileAuthSpec) -> Self {
        self.auth = None;
        self.file_auth = Some(spec);
        self
    }

    /// Authenticates with a client assertion read from `path` at every
    /// token request (workload identity federation: a Kubernetes projected
    /// service-account token, `AZURE_FEDERATED_TOKEN_FILE`, a SPIFFE
    /// JWT-SVID), so an assertion that rotates on disk is picked up by the
    /// next fetch. See [`AssertionFile`].
    pub fn client_assertion_file(self, path: impl Into<PathBuf>) -> Self {
        self.client_assertion(AssertionFile::new(path))
    }

    /// Authenticates with a client assertion from `source`, asked at every
    /// token request (a callback: [`AssertionFn`](crate::AssertionFn)).
    pub fn client_assertion(self, source: impl AssertionSource) -> Self {
        self.auth(ClientAuth::ClientAssertion(Arc::new(source)))
    }

    /// Authenticates by mutual TLS with a CA-issued certificate
    /// (`tls_client_auth`, RFC 8705 §2.1). The token URL should be the
    /// server's mTLS endpoint when it has one; a credential built
    /// [`from_metadata`](OAuthCredential::from_metadata) takes it from
    /// `mtls_endpoint_aliases` itself. The certificate's thumbprint is part of
    /// the credential id, so certificate-bound tokens are never shared
    /// between certificates.
    pub fn tls_client_auth(self, certificate: ClientCertificate) -> Self {
        self.auth(ClientAuth::TlsClientAuth(certificate))
    }

    /// Authenticates by mutual TLS with a self-signed certificate
    /// registered with the server (`self_signed_tls_client_auth`, RFC 8705
    /// §2.2). As [`tls_client_auth`](Self::tls_client_auth) otherwise.
    pub fn self_signed_tls_client_auth(self, certificate: ClientCertificate) -> Self {
        self.auth(ClientAuth::SelfSignedTlsClientAuth(certificate))
    }

    /// Trusts this CA (PEM, one or more certificates) for the token
    /// endpoint's TLS certificate, besides the system's roots (a private
    /// PKI). Ignored with [`http_client`](Self::http_client).
    pub fn root_certificate_pem(mut self, pem: impl Into<String>) -> Self {
        self.root_pems.push(pem.into());
        self
    }

    /// Sets the client authentication. Defaults to none configured: a
    /// client credentials or token exchange grant then fails to build,
    /// a refresh-token grant acts as a public client (`none`).
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.file_auth = None;
        self.auth = Some(auth);
        self
    }

    /// Binds tokens to this DPoP key (RFC 9449): a request whose
    /// `dpop_thumbprint` is this key's [`thumbprint`](DpopKey::thumbprint)
    /// is sent with a fresh DPoP proof signed by it (whatever the grant),
    /// the server's nonces are learned and a `use_dpop_nonce` answer is
    /// retried once, and the answer must be a `DPoP` token (a `Bearer` one
    /// is an error, not a silent downgrade).
    ///
    /// May be called more than once (for instance an old and a new key
    /// during a rotation): each request picks the key it names. Once a key
    /// is set, a request without a thumbprint is refused, so DPoP and
    /// Bearer tokens never share a cache key.
    pub fn dpop_key(mut self, key: DpopKey) -> Self {
        if !self
            .dpop_keys
            .iter()
            .any(|k| k.thumbprint() == key.thumbprint())
        {
            self.dpop_keys.push(key);
        }
        self
    }

    /// Replaces the grant (for example a token exchange with other token
    /// types).
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grant = grant;
        self
    }

    /// Adds a non-secret form parameter sent with every request. It is part
    /// of the credential's id.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Time to connect to the token endpoint. Defaults to
    /// [`DEFAULT_CONNECT_TIMEOUT`]. Ignored with [`http_client`](Self::http_client)
    /// (configure it on that client).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time for a whole token request. Defaults to [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Uses this reqwest client instead of building one. Defaults to a
    /// client with the connect timeout and redirects disabled; a custom
    /// client should disable redirects too, or a redirect may carry the
    /// client's credentials elsewhere.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How long a `private_key_jwt` assertion is valid. Defaults to
    /// [`DEFAULT_ASSERTION_LIFETIME`].
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.assertion_lifetime = lifetime;
        self
    }

    /// The `aud` of `private_key_jwt` assertions. Defaults to the token
    /// endpoint URL, as RFC 7523 §3 and OIDC Core §9 say; some servers want
    /// their issuer identifier instead.
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// The clock for `sent_at` and assertion times. Defaults to
    /// [`SystemClock`]; tests share a `ManualClock` with the cache.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// [`clock`](Self::clock) for a shared clock.
    pub fn clock_arc(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the credential.
    pub fn build(mut self) -> Result<OAuthCredential, ConfigError> {
        if matches!(
            self.auth,
            Some(ClientAuth::TlsClientAuth(_) | ClientAuth::SelfSignedTlsClientAuth(_))
        ) || self.file_auth.as_ref().is_some_and(FileAuthSpec::is_mtls)
        {
            if let Some(alias) = self.mtls_token_url.take() {
                self.token_url = alias;
            }
        }
        check_url("token endpoint", &self.token_url)?;
        if self.client_id.is_empty() {
            return Err(ConfigError::Invalid("the client id is empty".into()));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "timeouts must be longer than zero".into(),
            ));
        }
        let file_auth = match self.file_auth {
            Some(spec) => {
                if spec.is_mtls() && self.client.is_some() {
                    return Err(ConfigError::Invalid(
                        "mutual-TLS client authentication needs the credential's own HTTP client (it presents the certificate); do not set http_client".into(),
                    ));
                }
                Some(spec.load(self.connect_timeout, &self.root_pems)?)
            }
            None => None,
        };
        let loaded = file_auth.as_ref().map(FileAuth::loaded);
        let (file_client, file_auth_now) = match loaded {
            Some(CurrentAuth { auth, client, .. }) => (client, Some(auth)),
            None => (None, None),
        };
        let auth = match (file_auth_now.or(self.auth), &self.grant) {
            (Some(auth), _) => auth,
            (None, Grant::RefreshToken(_)) => ClientAuth::None,
            (None, grant) => {
                return Err(ConfigError::Invalid(format!(
                    "a {} grant needs client authentication: set client_secret(_file), client_secret_post(_file), private_key_jwt(_file), client_assertion_file or tls_client_auth(_files)",
                    grant.short_name()
                )))
            }
        };
        let client = match file_client.or(self.client) {
            Some(c) if file_auth.is_some() => c,
            Some(_) if auth.tls_certificate().is_some() => {
                return Err(ConfigError::Invalid(
                    "mutual-TLS client authentication needs the credential's own HTTP client (it presents the certificate); do not set http_client".into(),
                ))
            }
            Some(c) => c,
            None => transport::build_client(
                self.connect_timeout,
                auth.tls_certificate(),
                &self.root_pems,
            )?,
        };
        let mut id = format!(
            "{}|{}|{}|{}",
            self.grant.short_name(),
            self.token_url,
            self.client_id,
            auth.id_part()
        );
        match &self.grant {
            Grant::TokenExchange {
                subject_token_type,
                requested_token_type,
            } => {
                let _ = write!(id, "|stt={subject_token_type}");
                if let Some(t) = requested_token_type {
                    let _ = write!(id, "|rtt={t}");
                }
            }
            Grant::RefreshToken(rt) => {
                let sum = digest(&SHA256, rt.expose().as_bytes());
                id.push_str("|rt#");
                for b in &sum.as_ref()[..8] {
                    let _ = write!(id, "{b:02x}");
                }
            }
            Grant::ClientCredentials => {}
        }
        for (k, v) in &self.params {
            let _ = write!(id, "|p.{k}={v}");
        }
        Ok(OAuthCredential {
            id,
            grant: self.grant,
            token_url: self.token_url,
            client_id: self.client_id,
            auth,
            file_auth,
            params: self.params,
            client,
            request_timeout: self.request_timeout,
            assertion_lifetime: self.assertion_lifetime,
            assertion_audience: self.assertion_audience,
            clock: self.clock,
            latest_refresh: Mutex::new(None),
            skew_millis: AtomicI64::new(NO_SKEW),
            skew_warned: AtomicBool::new(false),
            dpop_keys: self.dpop_keys,
        })
    }
}

impl fmt::Debug for OAuthCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentialBuilder")
            .field("grant", &self.grant)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("file_auth", &self.file_auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("dpop_keys", &self.dpop_keys)
            .finish_non_exhaustive()
    }
}
