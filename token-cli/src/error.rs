//! `CliError`: one sentence for stderr and the exit code that goes with it.

use std::fmt;
use std::process::ExitCode;

/// What kind of failure ended the command; each has its own exit code,
/// listed in `--help` ([`EXIT_CODES_HELP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anything not covered below (a bug, an I/O failure writing output).
    Internal,
    /// The settings are wrong or incomplete: flags, profile file, secret
    /// source.
    Config,
    /// The IdP refused the request (`invalid_client`, `invalid_scope`, ...)
    /// or answered with a token that cannot be used.
    IdpRejected,
    /// The IdP could not be reached or failed temporarily (network,
    /// timeout, 5xx, 429).
    IdpUnavailable,
    /// The token store could not be opened or used (locked, unreachable
    /// Redis, unreadable directory, newer format).
    Store,
    /// The encryption key is missing, malformed, or not the store's key.
    Key,
    /// `demo` finished, but its checks failed (errors or expired tokens).
    DemoFailed,
    /// `serve` could not listen on its address (in use, not permitted).
    Listen,
}

impl Kind {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Internal => 1,
            Self::Config => 3,
            Self::IdpRejected => 4,
            Self::IdpUnavailable => 5,
            Self::Store => 6,
            Self::Key => 7,
            Self::DemoFailed => 8,
            Self::Listen => 9,
        }
    }
}

/// The exit-code table, as a literal so that other help texts can
/// `concat!` it instead of copying it.
macro_rules! exit_codes_help {
    () => {
        "\
Exit codes:
  0  success
  1  internal error
  2  usage error (unknown flag, missing value)
  3  configuration error (flags, profile file, client secret source)
  4  the IdP refused the request (invalid_client, invalid_scope, ...)
  5  the IdP could not be reached or failed temporarily (network, timeout, 5xx)
  6  the token store could not be opened or used (locked, Redis down, newer format)
  7  the encryption key is missing, malformed or not the store's key
  8  demo: the run finished but its checks failed (errors or expired tokens)
  9  serve: cannot listen on the configured address (in use, not permitted)"
    };
}
pub(crate) use exit_codes_help;

/// Shown at the end of `--help`.
pub(crate) const EXIT_CODES_HELP: &str = exit_codes_help!();

/// A failure: one sentence naming the cause, never containing a token or
/// a secret.
#[derive(Debug)]
pub(crate) struct CliError {
    kind: Kind,
    message: String,
}

impl CliError {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    pub(crate) fn store(message: impl Into<String>) -> Self {
        Self::new(Kind::Store, message)
    }

    pub(crate) fn key(message: impl Into<String>) -> Self {
        Self::new(Kind::Key, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }

    /// What kind of failure this is.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Turns the engine's error into a sentence and an exit code.
pub(crate) fn from_engine(e: &token_core::Error, token_url: &str) -> CliError {
    use token_core::Error as E;
    match e {
        E::Credential(c) if c.is_transient() => CliError::new(
            Kind::IdpUnavailable,
            format!(
                "the IdP could not be reached or failed temporarily: {}",
                c.message()
            ),
        ),
        E::Credential(c) => {
            let code = c
                .code()
                .map(|code| format!(" with `{code}`"))
                .unwrap_or_default();
            CliError::new(
                Kind::IdpRejected,
                format!(
                    "the IdP at {token_url} refused the token request{code}: {}",
                    c.message()
                ),
            )
        }
        E::FetchTimeout(after) => CliError::new(
            Kind::IdpUnavailable,
            format!("the token endpoint {token_url} did not answer within {after:?}"),
        ),
        E::InvalidToken(why) => CliError::new(
            Kind::IdpRejected,
            format!("the IdP at {token_url} returned a token that cannot be used: {why}"),
        ),
        other => CliError::internal(format!("could not get a token: {other}")),
    }
}
