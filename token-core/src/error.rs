//! The engine's error, and the boxed error type every crate of the
//! workspace uses for a cause from below (a driver, an HTTP client, a file).

use std::time::Duration;

/// An error from below token-cache (a driver, an HTTP client, the file
/// system), kept as the `source` of the error that explains it. The one
/// boxed-error type of the workspace: backends and token-http use this one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

use crate::credential::CredentialError;
use crate::policy::ScheduleError;

/// Why [`TokenCache`](crate::TokenCache) could not hand out a token.
///
/// Cheap to clone: every caller that waited on one fetch gets the same error.
/// No variant ever contains a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential failed; transient or permanent, as it said, unchanged.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The fetch did not finish within the policy's fetch timeout.
    #[error("token fetch timed out after {0:?} (the cache's own fetch timeout)")]
    FetchTimeout(Duration),
    /// The credential panicked. The fetch was abandoned and nothing was
    /// cached; the next call tries again.
    #[error("the credential panicked while fetching a token; nothing was cached and the next call tries again")]
    FetchPanicked,
    /// The task running the fetch was dropped before it finished, which
    /// happens when the runtime shuts down.
    #[error("the token fetch was cancelled before it finished (is the runtime shutting down?)")]
    FetchCancelled,
    /// The IdP returned a token that cannot be used (already expired).
    #[error(transparent)]
    InvalidToken(#[from] ScheduleError),
    /// The call needs a Tokio runtime (with timers enabled) to run fetches in
    /// the background.
    #[error("token-cache needs a Tokio runtime with timers enabled: call it from within one")]
    NoRuntime,
}

impl Error {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Credential(e) => e.is_transient(),
            Self::FetchTimeout(_) | Self::FetchPanicked | Self::FetchCancelled => true,
            Self::InvalidToken(_) | Self::NoRuntime => false,
        }
    }

    /// How long the IdP asked us to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Credential(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Whether this failure starts (or extends) the key's backoff. Panics and
    /// cancellations do not: the next call tries again at once.
    pub(crate) fn backs_off(&self) -> bool {
        !matches!(
            self,
            Self::FetchPanicked | Self::FetchCancelled | Self::NoRuntime
        )
    }
}
