//! Where tokens come from: the `Credential` trait and its error.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::request::TokenRequest;
use crate::token::AccessToken;

/// Something that obtains access tokens from an IdP: a client-credentials
/// grant, a refresh-token grant, a token exchange, a test double.
///
/// Usable as `Arc<dyn Credential>`. The engine calls [`fetch`](Self::fetch)
/// at most once per key at a time in a process (and, with a shared store,
/// once per key across the fleet), under its own timeout.
///
/// # Contract
///
/// - [`id`](Self::id) is stable across processes and restarts for the same
///   client configuration, differs between configurations that could yield
///   different tokens (token URL, client id, grant), and contains no secret.
///   It is the first part of every [`CacheKey`](crate::CacheKey).
/// - `fetch` returns a token for exactly `request`: its scopes, audience,
///   resources and actor. It sets `obtained_at` to the moment the request was
///   *sent* and the expiry from what the IdP said; when the IdP said nothing,
///   it leaves the expiry unset and the engine's policy decides.
/// - `previous` is the newest token the engine knows for this key (re-read
///   from the store by whoever holds the refresh lease), so a refresh-token
///   grant redeems the current refresh token, never a rotated-away one.
/// - Errors say whether retrying can help: [`CredentialError::transient`]
///   for network failures, timeouts, 5xx and 429 (with `Retry-After` when
///   known); [`CredentialError::permanent`] for `invalid_client`,
///   `invalid_scope` and the like. The engine retries only the first kind.
/// - Errors carry their facts as fields: what failed
///   ([`CredentialError::with_cause`]), the HTTP status, the IdP's code and
///   the endpoint called, so callers never parse the message.
/// - Nothing a `fetch` returns or logs contains a secret, errors included.
/// - A panic inside `fetch` is contained by the engine and reported to the
///   waiting callers, but it is still a bug.
#[async_trait]
pub trait Credential: Send + Sync + fmt::Debug {
    /// Stable, secret-free identity of this credential's configuration.
    fn id(&self) -> &str;

    /// Obtains a new token for `request`.
    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError>;
}

#[async_trait]
impl<T: Credential + ?Sized> Credential for Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        (**self).fetch(request, previous).await
    }
}

/// Whether retrying a failed fetch can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Network trouble, timeouts, 5xx, 429: try again later.
    Transient,
    /// The request itself is wrong (bad client, bad scope): retrying gives the
    /// same answer until someone changes the configuration.
    Permanent,
}

/// What failed, where that matters to a caller choosing what to do or say:
/// the connection, the wait for an answer, the answer's HTTP status, or the
/// answer's content.
///
/// Set by the credential with [`CredentialError::with_cause`]; an error built
/// without one has [`FailureCause::Other`]. It complements [`FailureKind`]
/// (whether to retry): a `503` and a refused connection are both transient,
/// but only one of them means the endpoint was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureCause {
    /// No connection could be made (refused, unresolvable host, TLS
    /// handshake): the endpoint was never reached.
    Connect,
    /// The endpoint did not answer within the credential's request timeout.
    Timeout,
    /// The connection broke while the request was sent or the answer read.
    Network,
    /// The endpoint answered an error status
    /// ([`status`](CredentialError::status)), with an OAuth `error` code
    /// ([`code`](CredentialError::code)) when it sent one.
    HttpStatus,
    /// The endpoint answered, but not with a usable token response (not
    /// JSON, no `access_token`, a malformed field, not the service expected).
    InvalidResponse,
    /// The answer's body was larger than the credential accepts.
    BodyTooLarge,
    /// Nothing was sent: the request cannot be expressed for this
    /// credential, or a local input (assertion file, key, header value)
    /// could not be used.
    Local,
    /// A store the credential keeps state in (a rotated refresh token)
    /// failed or stayed locked.
    Store,
    /// Anything else, and errors built without a cause.
    Other,
}

impl FailureCause {
    /// True when the endpoint was reached and answered (an error status,
    /// an unusable body or a body too large).
    pub fn endpoint_answered(self) -> bool {
        matches!(
            self,
            Self::HttpStatus | Self::InvalidResponse | Self::BodyTooLarge
        )
    }
}

/// Why a [`Credential`] could not produce a token.
///
/// Its facts are fields, set by the credential with the `with_` methods and
/// read back by callers that choose what to do or say from them, never from
/// the text: whether retrying helps ([`kind`](Self::kind)), what failed
/// ([`cause`](Self::cause)), the HTTP status the endpoint answered, the IdP's
/// `error` code (RFC 6749 §5.2), the endpoint called (without query string or
/// user info), a `Retry-After`, and a human detail ([`message`](Self::message)).
/// [`Display`](fmt::Display) renders one sentence from them. Nothing in it is
/// a secret.
///
/// Cheap to clone (one reference count), so the engine can hand the same
/// error to every caller that waited on one fetch; and one pointer wide, so
/// that `Result<Token, Error>` stays small on the hit path.
///
/// ```
/// use token_core::{CredentialError, FailureCause};
///
/// let e = CredentialError::permanent("bad secret")
///     .with_cause(FailureCause::HttpStatus)
///     .with_status(401)
///     .with_code("invalid_client")
///     .with_service("the token endpoint")
///     .with_endpoint("https://idp.example/token?tenant=a");
/// assert_eq!(e.status(), Some(401));
/// assert_eq!(e.endpoint(), Some("https://idp.example/token"));
/// assert_eq!(
///     e.to_string(),
///     "the token endpoint at https://idp.example/token answered 401 Unauthorized: invalid_client: bad secret"
/// );
/// ```
#[derive(Clone)]
pub struct CredentialError(Arc<Details>);

#[derive(Clone)]
struct Details {
    kind: FailureKind,
    cause: FailureCause,
    status: Option<u16>,
    code: Option<String>,
    service: Option<String>,
    endpoint: Option<String>,
    message: String,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl CredentialError {
    /// A failure that may succeed if tried again later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Transient, message)
    }

    /// A failure that will repeat until the configuration changes.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Permanent, message)
    }

    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self(Arc::new(Details {
            kind,
            cause: FailureCause::Other,
            status: None,
            code: None,
            service: None,
            endpoint: None,
            message: message.into(),
            retry_after: None,
            source: None,
        }))
    }

    /// Attaches the IdP's `error` code, e.g. `invalid_client`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).code = Some(code.into());
        self
    }

    /// Attaches what failed. Defaults to [`FailureCause::Other`].
    pub fn with_cause(mut self, cause: FailureCause) -> Self {
        Arc::make_mut(&mut self.0).cause = cause;
        self
    }

    /// Attaches the HTTP status the endpoint answered, e.g. `401`.
    pub fn with_status(mut self, status: u16) -> Self {
        Arc::make_mut(&mut self.0).status = Some(status);
        self
    }

    /// Attaches the endpoint called. Only its scheme, host, port and path
    /// are kept: user info, query string and fragment are dropped, since
    /// they may carry a secret.
    pub fn with_endpoint(mut self, endpoint: impl AsRef<str>) -> Self {
        Arc::make_mut(&mut self.0).endpoint = Some(endpoint_without_secrets(endpoint.as_ref()));
        self
    }

    /// Attaches what the endpoint is, in words, for the message: `the token
    /// endpoint`, `Azure IMDS`. It must not hold a secret.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).service = Some(service.into());
        self
    }

    /// Makes the failure transient or permanent, e.g. when a protocol
    /// documents as passing a status that is otherwise permanent.
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        Arc::make_mut(&mut self.0).kind = kind;
        self
    }

    /// Attaches how long the server asked us to wait (`Retry-After`).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        Arc::make_mut(&mut self.0).retry_after = Some(after);
        self
    }

    /// Attaches the underlying error. It must not print secrets.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.0).source = Some(Arc::new(source));
        self
    }

    /// Transient or permanent.
    pub fn kind(&self) -> FailureKind {
        self.0.kind
    }

    /// True when retrying later can help.
    pub fn is_transient(&self) -> bool {
        self.0.kind == FailureKind::Transient
    }

    /// What failed; [`FailureCause::Other`] when the credential did not say.
    pub fn cause(&self) -> FailureCause {
        self.0.cause
    }

    /// The HTTP status the endpoint answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        self.0.status
    }

    /// [`status`](Self::status) as a message shows it: `404 Not Found`.
    pub fn status_text(&self) -> Option<HttpStatusText> {
        self.0.status.map(HttpStatusText)
    }

    /// The IdP's `error` code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The endpoint called (scheme, host, port and path only), when known.
    pub fn endpoint(&self) -> Option<&str> {
        self.0.endpoint.as_deref()
    }

    /// What the endpoint is, in words (`the token endpoint`), when known.
    pub fn service(&self) -> Option<&str> {
        self.0.service.as_deref()
    }

    /// True when the endpoint answered like no endpoint of its kind: a
    /// redirect, `404`, `405`, `410` or `501` without an OAuth error code.
    /// The URL is wrong (a configuration mistake, or a discovered endpoint
    /// that moved), not the IdP refusing.
    pub fn endpoint_is_wrong(&self) -> bool {
        self.0.cause == FailureCause::HttpStatus
            && self.0.code.is_none()
            && self
                .0
                .status
                .is_some_and(|s| matches!(s, 404 | 405 | 410 | 501) || (300..400).contains(&s))
    }

    /// The human detail: the IdP's `error_description`, a description of
    /// the body, the network's reason (`connection refused`), or for an
    /// error without fields the whole description. Use
    /// [`Display`](fmt::Display) for the sentence with every field.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// How long the server asked to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }
}

/// `url` with its user info, query string and fragment removed.
fn endpoint_without_secrets(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    format!("{scheme}{host}{path}")
}

/// The reason phrase of the statuses a token or metadata endpoint answers
/// (RFC 9110 §15), so messages read `404 Not Found` without an HTTP crate.
fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

/// An HTTP status as a message shows it, with its reason phrase when known:
/// `404 Not Found`, `599`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpStatusText(pub u16);

impl fmt::Display for HttpStatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match reason_phrase(self.0) {
            Some(reason) => write!(f, "{} {reason}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Display for CredentialError {
    /// One sentence: what was called and what happened (from the cause,
    /// service, endpoint and status), then the code, the detail and the
    /// `Retry-After`. An error without a service or endpoint renders as
    /// its code and detail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.0;
        let mut wrote = true;
        match (&d.service, &d.endpoint) {
            (None, None) => wrote = false,
            (service, endpoint) => {
                let subject = Subject {
                    service: service.as_deref(),
                    endpoint: endpoint.as_deref(),
                };
                match d.cause {
                    FailureCause::Connect => write!(f, "could not connect to {subject}")?,
                    FailureCause::Timeout => write!(f, "{subject} did not answer in time")?,
                    FailureCause::Network => write!(f, "the connection to {subject} failed")?,
                    _ => match d.status {
                        Some(status) => write!(f, "{subject} answered {}", HttpStatusText(status))?,
                        None => write!(f, "{subject}")?,
                    },
                }
            }
        }
        for part in [d.code.as_deref(), Some(d.message.as_str())]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
        {
            if wrote {
                f.write_str(": ")?;
            }
            f.write_str(part)?;
            wrote = true;
        }
        if let Some(after) = d.retry_after {
            write!(f, " (retry after {}s)", after.as_secs_f64())?;
        }
        Ok(())
    }
}

/// `the token endpoint at https://idp/token`, or whichever part is known.
struct Subject<'a> {
    service: Option<&'a str>,
    endpoint: Option<&'a str>,
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.service, self.endpoint) {
            (Some(s), Some(e)) => write!(f, "{s} at {e}"),
            (Some(s), None) => f.write_str(s),
            (None, Some(e)) => write!(f, "the endpoint {e}"),
            (None, None) => f.write_str("the endpoint"),
        }
    }
}

impl fmt::Debug for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialError")
            .field("kind", &self.0.kind)
            .field("cause", &self.0.cause)
            .field("status", &self.0.status)
            .field("code", &self.0.code)
            .field("service", &self.0.service)
            .field("endpoint", &self.0.endpoint)
            .field("message", &self.0.message)
            .field("retry_after", &self.0.retry_after)
            .field("source", &self.0.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl StdError for CredentialError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_stays_one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<CredentialError>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn an_endpoint_keeps_no_user_info_query_or_fragment() {
        let e = CredentialError::transient("x")
            .with_endpoint("https://user:pa55@idp.example:8443/t/token?code=s3cret#frag");
        assert_eq!(e.endpoint(), Some("https://idp.example:8443/t/token"));
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("pa55") && !shown.contains("s3cret"),
            "{shown}"
        );
        let bare = CredentialError::transient("x").with_endpoint("http://idp/token");
        assert_eq!(bare.endpoint(), Some("http://idp/token"));
        let host_only = CredentialError::transient("x").with_endpoint("http://u@idp?q");
        assert_eq!(host_only.endpoint(), Some("http://idp"));
    }

    #[test]
    fn fields_read_back_as_set() {
        let e = CredentialError::transient("busy")
            .with_cause(FailureCause::HttpStatus)
            .with_status(503)
            .with_code("temporarily_unavailable")
            .with_retry_after(Duration::from_secs(7))
            .with_service("the token endpoint")
            .with_endpoint("http://idp/token");
        assert!(e.is_transient());
        assert_eq!(e.cause(), FailureCause::HttpStatus);
        assert!(e.cause().endpoint_answered());
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.code(), Some("temporarily_unavailable"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.service(), Some("the token endpoint"));
        assert_eq!(e.message(), "busy");
        let permanent = e.clone().with_kind(FailureKind::Permanent);
        assert!(!permanent.is_transient() && e.is_transient());
        assert_eq!(CredentialError::permanent("x").cause(), FailureCause::Other);
    }

    #[test]
    fn display_renders_one_sentence_from_the_fields() {
        let at = |cause| {
            CredentialError::transient("connection refused")
                .with_cause(cause)
                .with_service("the token endpoint")
                .with_endpoint("http://idp/token")
                .to_string()
        };
        assert_eq!(
            at(FailureCause::Connect),
            "could not connect to the token endpoint at http://idp/token: connection refused"
        );
        assert_eq!(
            at(FailureCause::Timeout),
            "the token endpoint at http://idp/token did not answer in time: connection refused"
        );
        let status = CredentialError::transient("")
            .with_cause(FailureCause::HttpStatus)
            .with_status(599)
            .with_endpoint("http://idp/token")
            .with_retry_after(Duration::from_secs(2));
        assert_eq!(
            status.to_string(),
            "the endpoint http://idp/token answered 599 (retry after 2s)"
        );
        let bare =
            CredentialError::permanent("client authentication failed").with_code("invalid_client");
        assert_eq!(
            bare.to_string(),
            "invalid_client: client authentication failed"
        );
    }

    #[test]
    fn messages_hold_no_run_of_spaces() {
        for cause in [
            FailureCause::Connect,
            FailureCause::Timeout,
            FailureCause::Network,
            FailureCause::HttpStatus,
            FailureCause::InvalidResponse,
            FailureCause::BodyTooLarge,
            FailureCause::Local,
            FailureCause::Store,
            FailureCause::Other,
        ] {
            let e = CredentialError::permanent("detail")
                .with_cause(cause)
                .with_status(404)
                .with_code("invalid_request")
                .with_service("Azure IMDS")
                .with_endpoint("http://169.254.169.254/token");
            let text = e.to_string();
            assert!(!text.contains("  "), "{cause:?}: {text}");
        }
    }
}
