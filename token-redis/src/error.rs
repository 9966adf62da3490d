//! The crate's error and its conversion into [`StoreError`].

use std::time::Duration;

use token_core::StoreError;

/// What went wrong talking to Redis. Converts into [`StoreError`]; never
/// contains a token, a password or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The configuration is unusable (a bad URL, a bad key prefix).
    #[error("invalid Redis store configuration: {0}")]
    InvalidConfig(String),
    /// Connecting failed (refused, unreachable, authentication failed).
    #[error("cannot connect to Redis at {target}")]
    Connect {
        /// Where, with passwords hidden.
        target: String,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// The server could not be reached at start-up and the store is still
    /// connecting in the background: calls fail at once until it answers
    /// (see `RedisConfig::with_connect_at_start`).
    #[error("Redis at {target} is not connected yet (connecting in the background)")]
    NotConnected {
        /// Where, with passwords hidden.
        target: String,
    },
    /// A command could not be sent or its reply was lost (connection
    /// dropped, I/O error).
    #[error("Redis is unavailable ({what})")]
    Unavailable {
        /// Which operation.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// The server answered with an error.
    #[error("Redis refused {what}")]
    Command {
        /// Which operation.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// The server did not answer in time.
    #[error("Redis did not answer {what} within {timeout:?}")]
    Timeout {
        /// Which operation.
        what: &'static str,
        /// The command timeout.
        timeout: Duration,
    },
    /// Too many recent failures: calls fail at once until the circuit's
    /// next probe.
    #[error("Redis circuit breaker is open after repeated failures; retrying in {retry_in:?}")]
    CircuitOpen {
        /// Until the next probe.
        retry_in: Duration,
    },
    /// A reply had an unexpected shape.
    #[error("unexpected reply from Redis to {0}")]
    UnexpectedReply(&'static str),
    /// Newer-wins put lost its compare-and-set too many times in a row.
    #[error("put gave up after {0} compare-and-set attempts under contention")]
    Contention(u32),
}

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Timeout { timeout, .. } => StoreError::Timeout(timeout),
            RedisStoreError::InvalidConfig(_) => StoreError::Rejected(e.to_string()),
            other => StoreError::Unavailable {
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
