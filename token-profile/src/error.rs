//! [`Error`]: what stops a profile from being loaded, built or used, as a
//! kind (what a command turns into an exit code) and one sentence.

use std::fmt;

/// What kind of problem an [`Error`] is. A command chooses its exit code
/// from this, never from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is wrong: a value that does not parse, a file that cannot
    /// be read, settings that contradict each other.
    Config,
    /// A required setting is missing, or two given settings exclude each
    /// other; [`Error::missing`] says which, when it is one setting.
    Incomplete,
    /// The token store cannot be opened or used.
    Store,
    /// The store's encryption key is missing, malformed or not the store's.
    Key,
    /// The IdP could not be reached while discovering its token endpoint.
    IdpUnavailable,
    /// A bug or an environment failure (encoding JSON, a runtime).
    Internal,
}

/// A required setting that was not given: which one, so that a command can
/// name it in its own words (a flag, a file key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// No token endpoint (`token_url`, `issuer` or `from_env`).
    TokenEndpoint,
    /// No `client_id`.
    ClientId,
    /// No client authentication, or more than one with no `auth` to choose.
    ClientAuth,
}

/// A problem with a profile: its kind and one sentence naming it. Never
/// holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    missing: Option<Missing>,
    message: String,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            missing: None,
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn incomplete(missing: Option<Missing>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Incomplete,
            missing,
            message: message.into(),
        }
    }

    pub(crate) fn store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, message)
    }

    pub(crate) fn key(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Key, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The missing setting, for [`ErrorKind::Incomplete`] errors about one.
    pub fn missing(&self) -> Option<Missing> {
        self.missing
    }

    /// The sentence naming the problem.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, its message prefixed with `profile `NAME`: `.
    pub fn in_profile(mut self, name: &str) -> Self {
        self.message = format!("profile `{name}`: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// How the library tells its caller about something worth knowing that is
/// not an error (a damaged index started afresh, a key file created, a
/// stale discovered endpoint used): a command prints it, a server logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// A warning (something went wrong and was worked around) or a note.
    pub level: NoticeLevel,
    /// One sentence; never a secret.
    pub message: String,
}

/// The weight of a [`Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoticeLevel {
    /// Something went wrong and was worked around.
    Warning,
    /// Worth knowing.
    Note,
}

/// Where [`Notice`]s go: a function the caller gives. The default logs them
/// with `tracing` (`warn` and `info`).
#[derive(Clone)]
pub struct Notices(std::sync::Arc<dyn Fn(Notice) + Send + Sync>);

impl Notices {
    /// Notices handed to `f`.
    pub fn new(f: impl Fn(Notice) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    pub(crate) fn warning(&self, message: impl fmt::Display) {
        (self.0)(Notice {
            level: NoticeLevel::Warning,
            message: message.to_string(),
        });
    }

    pub(crate) fn note(&self, message: impl fmt::Display) {
        (self.0)(Notice {
            level: NoticeLevel::Note,
            message: message.to_string(),
        });
    }
}

impl Default for Notices {
    fn default() -> Self {
        Self::new(|n| match n.level {
            NoticeLevel::Warning => tracing::warn!("{}", n.message),
            NoticeLevel::Note => tracing::info!("{}", n.message),
        })
    }
}

/// Where this process's notices go; set once, early (a command at start).
static NOTICES: std::sync::OnceLock<Notices> = std::sync::OnceLock::new();

/// Sends this process's [`Notice`]s to `notices` instead of `tracing`.
/// Only the first call takes effect: call it once at start, before any
/// profile is loaded.
pub fn set_notices(notices: Notices) {
    let _ = NOTICES.set(notices);
}

/// Where notices go now.
pub(crate) fn notices() -> &'static Notices {
    NOTICES.get_or_init(Notices::default)
}

impl fmt::Debug for Notices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Notices")
    }
}
