//! `CliError`: one sentence for stderr and the exit code that goes with it.

use std::fmt;
use std::process::ExitCode;

/// What kind of failure ended the command; each has its own exit code,
/// listed in `--help` ([`EXIT_CODES_HELP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anything not covered below (a bug, an I/O failure writing output).
    Internal,
    /// The command line is incomplete or contradictory (what clap itself
    /// reports with code 2, and the checks it cannot express).
    Usage,
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
            Self::Usage => 2,
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
  2  usage error (unknown flag, missing value, nothing to do)
  3  configuration error (flag values, profile file, client secret source, a URL
     that is not a token endpoint)
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

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
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

impl From<token_profile::Error> for CliError {
    /// The profile library's kind chooses the exit code.
    fn from(e: token_profile::Error) -> Self {
        use token_profile::ErrorKind as P;
        let kind = match e.kind() {
            P::Store => Kind::Store,
            P::Key => Kind::Key,
            P::IdpUnavailable => Kind::IdpUnavailable,
            P::Internal => Kind::Internal,
            // A missing setting on a command line with no profile is turned
            // into a usage error by `get` before it gets here.
            _ => Kind::Config,
        };
        Self::new(kind, e.message())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How `token-http` begins the message of an error response.
const ANSWERED: &str = "the token endpoint answered ";

/// The HTTP status at the start of a `token-http` error-response message
/// (`the token endpoint answered 404 Not Found ...`), if it is one.
fn answered_status(message: &str) -> Option<(u16, &str)> {
    let rest = message.strip_prefix(ANSWERED)?;
    let code = rest.get(..3)?.parse::<u16>().ok()?;
    Some((code, rest))
}

/// The innermost cause of `e`, in a few words: an OS error's description
/// without its number (`connection refused`), else the innermost error's
/// text.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = match inner.downcast_ref::<std::io::Error>() {
        Some(io) => {
            let text = io.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
        None => inner.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Turns the engine's error into a sentence and an exit code.
pub(crate) fn from_engine(e: &token_core::Error, token_url: &str) -> CliError {
    use token_core::Error as E;
    match e {
        E::Credential(c) if c.is_transient() => {
            let message = c.message();
            let text = if let Some((_, rest)) = answered_status(message) {
                format!("the IdP at {token_url} failed temporarily: it answered {rest}")
            } else if let Some(what) = message
                .strip_prefix("token request to ")
                .and_then(|m| m.strip_prefix(token_url))
                .map(|m| m.trim_start().split(": ").next().unwrap_or(m))
            {
                // `token request to URL could not connect: <every layer's
                // wording>`: say the layer that matters, the OS's reason.
                let cause = root_cause(c);
                if what == "could not connect" {
                    format!("cannot reach the IdP at {token_url}: {cause}")
                } else {
                    format!("the token request to {token_url} {what}: {cause}")
                }
            } else {
                format!(
                    "the IdP at {token_url} could not be reached or failed temporarily: {message}"
                )
            };
            CliError::new(Kind::IdpUnavailable, text)
        }
        E::Credential(c) => {
            let message = c.message();
            match answered_status(message) {
                // No OAuth error code and a status a token endpoint does not
                // answer a token request with: the URL is wrong, which is a
                // configuration mistake, not the IdP refusing.
                Some((status, rest))
                    if c.code().is_none()
                        && (matches!(status, 404 | 405 | 410 | 501)
                            || (300..400).contains(&status)) =>
                {
                    CliError::config(format!(
                        "{token_url} is not a token endpoint: it answered {rest}; check                          --token-url (or --issuer)"
                    ))
                }
                // `rest` names the status and the IdP's code once:
                // `401 Unauthorized: invalid_client: ...`.
                Some((_, rest)) => CliError::new(
                    Kind::IdpRejected,
                    format!("the IdP at {token_url} refused the token request: {rest}"),
                ),
                None => {
                    let code = c
                        .code()
                        .filter(|code| !message.contains(code))
                        .map(|code| format!("{code}: "))
                        .unwrap_or_default();
                    CliError::new(
                        Kind::IdpRejected,
                        format!(
                            "the IdP at {token_url} refused the token request: {code}{message}"
                        ),
                    )
                }
            }
        }
        E::FetchTimeout(after) => CliError::new(
            Kind::IdpUnavailable,
            format!(
                "the IdP at {token_url} did not answer within {} s",
                after.as_secs_f64()
            ),
        ),
        E::InvalidToken(why) => CliError::new(
            Kind::IdpRejected,
            format!("the IdP at {token_url} returned a token that cannot be used: {why}"),
        ),
        other => CliError::internal(format!("could not get a token: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use token_core::CredentialError;

    #[test]
    fn a_refusal_names_its_code_once() {
        let e = token_core::Error::Credential(
            CredentialError::permanent(
                "the token endpoint answered 401 Unauthorized: invalid_client: bad secret",
            )
            .with_code("invalid_client"),
        );
        let cli = from_engine(&e, "http://idp/token");
        assert_eq!(cli.kind(), Kind::IdpRejected);
        let text = cli.to_string();
        assert_eq!(text.matches("invalid_client").count(), 1, "{text}");
        assert!(text.contains("401 Unauthorized"), "{text}");
    }

    #[test]
    fn a_404_without_an_oauth_body_is_a_configuration_error() {
        let e = token_core::Error::Credential(CredentialError::permanent(
            "the token endpoint answered 404 Not Found (9 bytes, text/html): \"not found\" (not an OAuth error response)",
        ));
        let cli = from_engine(&e, "http://idp/nope");
        assert_eq!(cli.kind(), Kind::Config);
        assert!(cli.to_string().contains("is not a token endpoint"), "{cli}");
    }

    #[test]
    fn a_401_without_a_code_is_still_a_refusal() {
        let e = token_core::Error::Credential(CredentialError::permanent(
            "the token endpoint answered 401 Unauthorized and an empty body",
        ));
        assert_eq!(
            from_engine(&e, "http://idp/token").kind(),
            Kind::IdpRejected
        );
    }
}
