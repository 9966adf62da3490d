//! What a check returns when it does not pass, and the macros that build it.

use std::error::Error as StdError;
use std::fmt;

/// Why a check did not pass: the store broke a rule, or the check does not
/// apply to the store under test.
///
/// A check that does not apply (a corruption check on a store that keeps no
/// bytes, a cross-instance check without a second handle) returns a
/// *skipped* failure rather than `Ok(())`, so that nothing is ever passed
/// silently. The runners ([`trials`](crate::trials),
/// [`run_all`](crate::run_all)) report it as skipped with its reason; a
/// caller that runs one check by hand sees an error that says why.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckFailure {
    skipped: bool,
    message: String,
}

impl CheckFailure {
    /// A failure: the store did something the contract forbids.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            skipped: false,
            message: message.into(),
        }
    }

    /// The check does not apply to this store or fixture, for `reason`.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self {
            skipped: true,
            message: reason.into(),
        }
    }

    /// True when the check was skipped rather than failed.
    pub fn is_skipped(&self) -> bool {
        self.skipped
    }

    /// What went wrong, or why the check was skipped.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same failure with `context` in front of its message, for checks
    /// that call shared helpers.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            write!(f, "skipped: {}", self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl fmt::Debug for CheckFailure {
    // `unwrap()` on a check's result prints this: make it the readable form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl StdError for CheckFailure {}

/// Returns a [`CheckFailure`] from the enclosing check unless `cond` holds.
///
/// The message is built with `format!` only when the condition fails.
///
/// ```
/// use token_conformance::{ensure, CheckFailure};
///
/// fn check(count: usize) -> Result<(), CheckFailure> {
///     ensure!(count == 1, "expected exactly one winner, got {count}");
///     Ok(())
/// }
/// assert!(check(1).is_ok());
/// assert_eq!(check(2).unwrap_err().message(), "expected exactly one winner, got 2");
/// ```
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !($cond) {
            return ::core::result::Result::Err($crate::CheckFailure::new(::std::format!($($msg)+)));
        }
    };
}

/// Returns a [`CheckFailure`] from the enclosing check, unconditionally.
///
/// ```
/// use token_conformance::{fail, CheckFailure};
///
/// fn check(found: Option<u32>) -> Result<u32, CheckFailure> {
///     match found {
///         Some(v) => Ok(v),
///         None => fail!("nothing was found"),
///     }
/// }
/// assert_eq!(check(None).unwrap_err().message(), "nothing was found");
/// ```
#[macro_export]
macro_rules! fail {
    ($($msg:tt)+) => {
        return ::core::result::Result::Err($crate::CheckFailure::new(::std::format!($($msg)+)))
    };
}

/// Turns a store error into a failure that says which operation failed,
/// with the error's whole source chain.
pub(crate) trait OrFail<T> {
    /// `Err(e)` becomes a failure "`what` failed: e: source: ...".
    fn or_fail(self, what: impl fmt::Display) -> Result<T, CheckFailure>;
}

impl<T, E: StdError> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: impl fmt::Display) -> Result<T, CheckFailure> {
        self.map_err(|e| CheckFailure::new(format!("{what} failed: {}", error_chain(&e))))
    }
}

/// An error and its sources, joined by `": "`.
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_and_failed_read_differently() {
        let f = CheckFailure::new("boom");
        let s = CheckFailure::skipped("not serialized");
        assert!(!f.is_skipped());
        assert!(s.is_skipped());
        assert_eq!(f.to_string(), "boom");
        assert_eq!(s.to_string(), "skipped: not serialized");
        assert_eq!(format!("{s:?}"), "skipped: not serialized");
        assert_eq!(f.context("step 2").message(), "step 2: boom");
    }

    #[test]
    fn or_fail_keeps_the_source_chain() {
        let err =
            token_core::StoreError::unavailable("redis down", std::io::Error::other("refused"));
        let r: Result<(), _> = Err(err);
        let msg = r.or_fail("get").unwrap_err().to_string();
        assert_eq!(msg, "get failed: store unavailable: redis down: refused");
    }
}
