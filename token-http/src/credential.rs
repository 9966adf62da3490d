//! `OAuthCredential`: the client credentials, refresh token and token
//! exchange grants over HTTP, as a `token_core::Credential`.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use ring::digest::{digest, SHA256};
use token_core::{
    AccessToken, Actor, Clock, Credential, CredentialError, Secret, SystemClock, TokenRequest,
};
use zeroize::Zeroizing;

use crate::client_auth::{basic_header, form_encode, ClientAuth, JWT_BEARER_ASSERTION_TYPE};
use crate::discovery::{check_url, ServerMetadata};
use crate::error::ConfigError;
use crate::jwt::{PrivateKey, DEFAULT_ASSERTION_LIFETIME};
use crate::response::{parse_redacting, ClockSkew, TokenResponse};
use crate::transport::{self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

/// A clock difference at least this large is logged (once per credential)
/// as a warning: beyond it, tokens may be refused by resource servers whose
/// clocks agree with the authorization server.
pub const DEFAULT_SKEW_WARNING: Duration = Duration::from_secs(30);

/// The default `subject_token_type` of a token exchange: the caller's
/// incoming access token is exchanged for one to call the next service.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

const NO_SKEW: i64 = i64::MIN;

/// Which OAuth 2.0 grant a credential uses.
#[derive(Clone)]
#[non_exhaustive]
pub enum Grant {
    /// Client credentials (RFC 6749 §4.4): the client acts for itself.
    ClientCredentials,
    /// Refresh token (RFC 6749 §6), starting from this refresh token. The
    /// newest refresh token known for the key (from the cached token) is
    /// used when there is one; a rotated refresh token from the server
    /// replaces the old one on the cached token.
    RefreshToken(Secret),
    /// Token exchange (RFC 8693): the request's [`Actor::Assertion`] is the
    /// `subject_token`.
    TokenExchange {
        /// `subject_token_type`. Defaults to [`ACCESS_TOKEN_TYPE`].
        subject_token_type: String,
        /// `requested_token_type`, when a specific type is wanted.
        requested_token_type: Option<String>,
    },
}

impl Grant {
    /// A token exchange of access tokens (the common on-behalf-of case).
    pub fn token_exchange() -> Self {
        Self::TokenExchange {
            subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            requested_token_type: None,
        }
    }

    fn grant_type(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken(_) => "refresh_token",
            Self::TokenExchange { .. } => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }

    fn short_name(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken(_) => "refresh_token",
            Self::TokenExchange { .. } => "token_exchange",
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientCredentials => f.write_str("ClientCredentials"),
            Self::RefreshToken(_) => f.write_str("RefreshToken(***)"),
            Self::TokenExchange {
                subject_token_type,
                requested_token_type,
            } => f
                .debug_struct("TokenExchange")
                .field("subject_token_type", subject_token_type)
                .field("requested_token_type", requested_token_type)
                .finish(),
        }
    }
}

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
    auth: ClientAuth,
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
}

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
        OAuthCredentialBuilder::new(
            grant,
            metadata.token_endpoint().to_owned(),
            client_id.into(),
        )
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

    /// The last clock difference with the authorization server beyond the
    /// tolerance, from the most recent response with a `Date` header that
    /// showed one.
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        match self.skew_millis.load(Ordering::Relaxed) {
            NO_SKEW => None,
            millis => Some(ClockSkew::from_millis(millis)),
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

    /// The refresh token to redeem: the cached token's (newest across the
    /// fleet), else the newest this process saw, else the configured one.
    fn refresh_token_for(&self, previous: Option<&AccessToken>, configured: &Secret) -> Secret {
        if let Some(rt) = previous.and_then(AccessToken::refresh_token) {
            return rt.clone();
        }
        let latest = self
            .latest_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        latest.clone().unwrap_or_else(|| configured.clone())
    }

    /// The form parameters of one token request. Values that are secrets
    /// end up only in the returned (wiped) body.
    fn form(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
        used_refresh: &mut Option<Secret>,
        secrets: &mut Vec<Secret>,
    ) -> Result<Zeroizing<String>, CredentialError> {
        let unsupported = |what: &str| {
            CredentialError::permanent(format!(
                "this {} credential cannot honour the request's {what}; it would return a token that was not asked for",
                self.grant.short_name()
            ))
        };
        if request.tenant().is_some() {
            return Err(unsupported("tenant (use one credential per tenant)"));
        }
        if request.dpop_thumbprint().is_some() {
            return Err(unsupported("DPoP key binding"));
        }
        let mut form: Vec<(&str, Zeroizing<String>)> = Vec::new();
        let plain = |s: &str| Zeroizing::new(s.to_owned());
        form.push(("grant_type", plain(self.grant.grant_type())));
        match &self.grant {
            Grant::ClientCredentials | Grant::RefreshToken(_) => {
                if request.actor().is_some() {
                    return Err(unsupported(
                        "actor (on-behalf-of needs a token exchange credential)",
                    ));
                }
            }
            Grant::TokenExchange {
                subject_token_type,
                requested_token_type,
            } => {
                let Some(Actor::Assertion(subject)) = request.actor() else {
                    return Err(CredentialError::permanent(
                        "a token exchange needs the request's actor to be an Actor::Assertion holding the subject token",
                    ));
                };
                secrets.push(subject.clone());
                form.push(("subject_token", plain(subject.expose())));
                form.push(("subject_token_type", plain(subject_token_type)));
                if let Some(t) = requested_token_type {
                    form.push(("requested_token_type", plain(t)));
                }
            }
        }
        if let Grant::RefreshToken(configured) = &self.grant {
            let rt = self.refresh_token_for(previous, configured);
            secrets.push(rt.clone());
            form.push(("refresh_token", plain(rt.expose())));
            *used_refresh = Some(rt);
        }
        if !request.scopes().is_empty() {
            form.push(("scope", plain(&request.scope_string())));
        }
        if let Some(aud) = request.audience() {
            form.push(("audience", plain(aud)));
        }
        for r in request.resources() {
            form.push(("resource", plain(r)));
        }
        match &self.auth {
            ClientAuth::ClientSecretBasic(_) => {}
            ClientAuth::ClientSecretPost(secret) => {
                form.push(("client_id", plain(&self.client_id)));
                form.push(("client_secret", plain(secret.expose())));
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let audience = self
                    .assertion_audience
                    .as_deref()
                    .unwrap_or(&self.token_url);
                let jwt = key
                    .assertion(
                        &self.client_id,
                        audience,
                        self.clock.now(),
                        self.assertion_lifetime,
                    )
                    .map_err(|e| CredentialError::permanent(e.to_string()))?;
                form.push(("client_id", plain(&self.client_id)));
                form.push(("client_assertion_type", plain(JWT_BEARER_ASSERTION_TYPE)));
                form.push(("client_assertion", jwt));
            }
            ClientAuth::None => form.push(("client_id", plain(&self.client_id))),
        }
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
        let pairs = form.iter().map(|(k, v)| (*k, v.as_str())).chain(extra);
        for (i, (k, v)) in pairs.enumerate() {
            if i > 0 {
                body.push('&');
            }
            body.push_str(&form_encode(k));
            body.push('=');
            let encoded = Zeroizing::new(form_encode(v));
            body.push_str(&encoded);
        }
        Ok(body)
    }
}

#[async_trait]
impl Credential for OAuthCredential {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let mut used_refresh = None;
        let mut secrets = Vec::new();
        let body = self.form(request, previous, &mut used_refresh, &mut secrets)?;
        let mut http = self
            .client
            .post(&self.token_url)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let ClientAuth::ClientSecretBasic(secret) = &self.auth {
            let mut value = HeaderValue::from_str(basic_header(&self.client_id, secret).expose())
                .map_err(|_| {
                CredentialError::permanent(
                    "the Basic authorization header is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            http = http.header(AUTHORIZATION, value);
        }
        // The body is copied into reqwest's buffer, which is not wiped; ours is.
        let http = http.body(body.as_str().to_owned());
        drop(body);
        let sent_at = self.clock.now();
        let received = transport::send(http, &self.token_url, self.request_timeout).await?;
        let mut redact: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        redact.extend(self.auth.secret());
        let result = parse_redacting(
            received.status,
            &received.headers,
            &received.body,
            sent_at,
            &redact,
        );
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
                return Err(e);
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
            .field("request_timeout", &self.request_timeout)
            .field("clock_skew", &self.clock_skew())
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuthCredential`].
pub struct OAuthCredentialBuilder {
    grant: Grant,
    token_url: String,
    client_id: String,
    auth: Option<ClientAuth>,
    params: Vec<(String, String)>,
    client: Option<reqwest::Client>,
    connect_timeout: Duration,
    request_timeout: Duration,
    assertion_lifetime: Duration,
    assertion_audience: Option<String>,
    clock: Arc<dyn Clock>,
}

impl OAuthCredentialBuilder {
    fn new(grant: Grant, token_url: String, client_id: String) -> Self {
        Self {
            grant,
            token_url,
            client_id,
            auth: None,
            params: Vec::new(),
            client: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
            assertion_audience: None,
            clock: Arc::new(SystemClock),
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

    /// Sets the client authentication. Defaults to none configured: a
    /// client credentials or token exchange grant then fails to build,
    /// a refresh-token grant acts as a public client (`none`).
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = Some(auth);
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
    pub fn build(self) -> Result<OAuthCredential, ConfigError> {
        check_url("token endpoint", &self.token_url)?;
        if self.client_id.is_empty() {
            return Err(ConfigError::Invalid("the client id is empty".into()));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "timeouts must be longer than zero".into(),
            ));
        }
        let auth = match (self.auth, &self.grant) {
            (Some(auth), _) => auth,
            (None, Grant::RefreshToken(_)) => ClientAuth::None,
            (None, grant) => {
                return Err(ConfigError::Invalid(format!(
                    "a {} grant needs client authentication: set client_secret, client_secret_post or private_key_jwt",
                    grant.short_name()
                )))
            }
        };
        let client = match self.client {
            Some(c) => c,
            None => transport::build_client(self.connect_timeout)?,
        };
        let mut id = format!(
            "{}|{}|{}|{}",
            self.grant.short_name(),
            self.token_url,
            self.client_id,
            auth.method()
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
            params: self.params,
            client,
            request_timeout: self.request_timeout,
            assertion_lifetime: self.assertion_lifetime,
            assertion_audience: self.assertion_audience,
            clock: self.clock,
            latest_refresh: Mutex::new(None),
            skew_millis: AtomicI64::new(NO_SKEW),
            skew_warned: AtomicBool::new(false),
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
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}
