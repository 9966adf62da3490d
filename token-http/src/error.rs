//! Errors in configuration and start-up (token fetch failures are
//! `token_core::CredentialError`s).

/// Why a credential could not be configured or discovered.
///
/// No variant ever contains a secret or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL could not be parsed, or is not `http`/`https`.
    #[error("invalid {what} URL: {reason}")]
    InvalidUrl {
        /// Which URL (token endpoint, issuer).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key could not be read or used.
    #[error("private key: {0}")]
    Key(String),
    /// A certificate could not be read, or does not match its key.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
    /// Discovery (OIDC / RFC 8414 metadata) failed.
    #[error("discovery at {issuer} failed: {reason}")]
    Discovery {
        /// The issuer asked.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
    /// A secret, key or certificate file is missing, unreadable or invalid.
    /// The reason names what is wrong, never the file's contents.
    #[error("{reason}")]
    File {
        /// The file (the first one, when several are read together).
        path: std::path::PathBuf,
        /// What is wrong with it; it names the file.
        reason: String,
    },
    /// A setting is missing or contradicts another one.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
