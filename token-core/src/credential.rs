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

/// Why a [`Credential`] could not produce a token.
///
/// Carries the IdP's `error` code (RFC 6749 §5.2) and a human description;
/// never a secret. Cheap to clone (one reference count), so the engine can
/// hand the same error to every caller that waited on one fetch; and one
/// pointer wide, so that `Result<Token, Error>` stays small on the hit path.
#[derive(Clone)]
pub struct CredentialError(Arc<Details>);

#[derive(Clone)]
struct Details {
    kind: FailureKind,
    code: Option<String>,
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
            code: None,
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

    /// The IdP's `error` code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The human-readable description.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// How long the server asked to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0.kind {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
        };
        write!(f, "{kind} credential error")?;
        if let Some(code) = &self.0.code {
            write!(f, " `{code}`")?;
        }
        write!(f, ": {}", self.0.message)?;
        if let Some(after) = self.0.retry_after {
            write!(f, " (retry after {}s)", after.as_secs_f64())?;
        }
        Ok(())
    }
}

impl fmt::Debug for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialError")
            .field("kind", &self.0.kind)
            .field("code", &self.0.code)
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
