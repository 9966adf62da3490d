//! `CliError`: one sentence for stderr and the exit code that goes with it.

use std::fmt;
use std::process::ExitCode;

use token_core::{CredentialError, FailureCause};

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

/// What the endpoint answered, from the error's fields: `401 Unauthorized:
/// invalid_client: bad secret`, each part only when known.
fn answer(c: &CredentialError) -> String {
    let parts = [
        c.status_text().map(|s| s.to_string()),
        c.code().map(str::to_owned),
        Some(c.message().to_owned()).filter(|m| !m.is_empty()),
    ];
    parts.into_iter().flatten().collect::<Vec<_>>().join(": ")
}

/// Turns the engine's error into a sentence and an exit code, chosen from
/// the error's fields (transient or permanent, cause, status, code), never
/// from its text.
pub(crate) fn from_engine(e: &token_core::Error, token_url: &str) -> CliError {
    use token_core::Error as E;
    match e {
        E::Credential(c) => from_credential(c, token_url),
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

fn from_credential(c: &CredentialError, token_url: &str) -> CliError {
    let answered = c.cause().endpoint_answered();
    match (c.cause(), c.status()) {
        _ if c.endpoint_is_wrong() => CliError::config(format!(
            "{token_url} is not a token endpoint: it answered {}; check --token-url (or --issuer)",
            answer(c)
        )),
        // Nothing was sent: the request or a local input (assertion file,
        // key) does not fit the credential; retrying will not change it.
        (FailureCause::Local, _) if !c.is_transient() => {
            CliError::config(format!("no token request was sent to {token_url}: {c}"))
        }
        // The store keeping the newest refresh token failed or stayed locked.
        (FailureCause::Store, _) => CliError::store(c.to_string()),
        (FailureCause::Connect, _) => CliError::new(
            Kind::IdpUnavailable,
            format!("cannot reach the IdP at {token_url}: {}", c.message()),
        ),
        (FailureCause::Timeout, _) => CliError::new(
            Kind::IdpUnavailable,
            format!(
                "the token request to {token_url} timed out: {}",
                c.message()
            ),
        ),
        (FailureCause::Network, _) => CliError::new(
            Kind::IdpUnavailable,
            format!(
                "the connection to the IdP at {token_url} failed: {}",
                c.message()
            ),
        ),
        _ if c.is_transient() && answered => CliError::new(
            Kind::IdpUnavailable,
            format!(
                "the IdP at {token_url} failed temporarily: it answered {}",
                answer(c)
            ),
        ),
        _ if c.is_transient() => CliError::new(
            Kind::IdpUnavailable,
            format!("the IdP at {token_url} could not be reached or failed temporarily: {c}"),
        ),
        _ if answered => CliError::new(
            Kind::IdpRejected,
            format!(
                "the IdP at {token_url} refused the token request: {}",
                answer(c)
            ),
        ),
        _ => CliError::new(
            Kind::IdpRejected,
            format!("the IdP at {token_url} refused the token request: {c}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const URL: &str = "http://idp/token";

    /// An error as token-http builds it for an HTTP answer.
    fn answered(status: u16, permanent: bool, message: &str) -> CredentialError {
        let e = if permanent {
            CredentialError::permanent(message)
        } else {
            CredentialError::transient(message)
        };
        e.with_cause(FailureCause::HttpStatus)
            .with_status(status)
            .with_service("the token endpoint")
            .with_endpoint(URL)
    }

    fn cli(c: CredentialError) -> CliError {
        from_engine(&token_core::Error::Credential(c), URL)
    }

    #[test]
    fn a_refusal_names_its_status_and_code_once() {
        let e = cli(answered(401, true, "bad secret").with_code("invalid_client"));
        assert_eq!(e.kind(), Kind::IdpRejected);
        assert_eq!(
            e.to_string(),
            "the IdP at http://idp/token refused the token request: 401 Unauthorized: invalid_client: bad secret"
        );
    }

    #[test]
    fn a_404_without_an_oauth_code_is_a_configuration_error() {
        let e = cli(answered(
            404,
            true,
            "9 bytes of text/html: \"not found\" (not an OAuth error response)",
        ));
        assert_eq!(e.kind(), Kind::Config);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "http://idp/token is not a token endpoint: it answered 404 Not Found: 9 bytes"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("; check --token-url (or --issuer)"),
            "{text}"
        );
    }

    #[test]
    fn a_404_with_an_oauth_code_is_a_refusal() {
        let e = cli(answered(404, true, "").with_code("invalid_request"));
        assert_eq!(e.kind(), Kind::IdpRejected);
    }

    #[test]
    fn a_401_without_a_code_is_still_a_refusal() {
        let e = cli(answered(401, true, "an empty body"));
        assert_eq!(e.kind(), Kind::IdpRejected);
        assert!(e.to_string().contains("401 Unauthorized"), "{e}");
    }

    #[test]
    fn a_503_is_a_temporary_failure_naming_its_status() {
        let e = cli(answered(503, false, "an empty body").with_retry_after(Duration::from_secs(5)));
        assert_eq!(e.kind(), Kind::IdpUnavailable);
        assert_eq!(
            e.to_string(),
            "the IdP at http://idp/token failed temporarily: it answered 503 Service Unavailable: an empty body"
        );
    }

    #[test]
    fn connection_refused_is_unavailable_naming_the_os_reason() {
        let e = cli(CredentialError::transient("connection refused")
            .with_cause(FailureCause::Connect)
            .with_endpoint(URL));
        assert_eq!(e.kind(), Kind::IdpUnavailable);
        assert_eq!(
            e.to_string(),
            "cannot reach the IdP at http://idp/token: connection refused"
        );
    }

    #[test]
    fn a_timeout_is_unavailable() {
        let e = cli(
            CredentialError::transient("waited 8s (the request timeout)")
                .with_cause(FailureCause::Timeout)
                .with_endpoint(URL),
        );
        assert_eq!(e.kind(), Kind::IdpUnavailable);
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn the_exit_code_comes_from_the_fields_not_the_message() {
        // Messages that the old text matching would have misread.
        let says_404 = "the token endpoint answered 404 Not Found";
        let e = cli(answered(401, true, says_404).with_code("invalid_client"));
        assert_eq!(e.kind(), Kind::IdpRejected, "{e}");
        let e = cli(CredentialError::permanent(says_404));
        assert_eq!(e.kind(), Kind::IdpRejected, "{e}");
        let e = cli(
            CredentialError::transient("token request to http://idp/token timed out: x")
                .with_cause(FailureCause::Connect),
        );
        assert_eq!(e.kind(), Kind::IdpUnavailable);
        assert!(e.to_string().starts_with("cannot reach the IdP"), "{e}");
        let e = cli(answered(405, true, "the token endpoint answered 200 OK"));
        assert_eq!(e.kind(), Kind::Config, "{e}");
        let e = cli(answered(500, false, "invalid_client"));
        assert_eq!(e.kind(), Kind::IdpUnavailable, "{e}");
    }

    #[test]
    fn nothing_sent_is_a_configuration_error_and_a_store_failure_a_store_error() {
        let e = cli(CredentialError::permanent("Azure IMDS needs the resource")
            .with_cause(FailureCause::Local));
        assert_eq!(e.kind(), Kind::Config);
        let e =
            cli(CredentialError::transient("the store is down").with_cause(FailureCause::Store));
        assert_eq!(e.kind(), Kind::Store);
    }

    #[test]
    fn no_sentence_has_a_run_of_spaces() {
        let cases = [
            answered(404, true, "an empty body"),
            answered(302, true, ""),
            answered(401, true, "bad").with_code("invalid_client"),
            answered(503, false, ""),
            answered(200, true, "no `access_token` (fields: a)")
                .with_cause(FailureCause::InvalidResponse),
            CredentialError::transient("connection refused").with_cause(FailureCause::Connect),
            CredentialError::transient("waited 1s").with_cause(FailureCause::Timeout),
            CredentialError::transient("reset").with_cause(FailureCause::Network),
            CredentialError::permanent("x").with_cause(FailureCause::Local),
            CredentialError::permanent("plain"),
            CredentialError::transient("plain"),
        ];
        for c in cases {
            let text = cli(c.clone()).to_string();
            assert!(!text.contains("  "), "{c:?}: {text}");
        }
        for e in [
            token_core::Error::FetchTimeout(Duration::from_secs(10)),
            token_core::Error::FetchPanicked,
        ] {
            let text = from_engine(&e, URL).to_string();
            assert!(!text.contains("  "), "{text}");
        }
    }
}
