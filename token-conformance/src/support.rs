//! Helpers the checks share: unique keys, sample tokens, field-by-field
//! comparison, task joining and sleeping.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use token_core::backend::random_u128;
use token_core::{AccessToken, CacheKey, CacheStore, TokenRequest, TokenType};

use crate::failure::{CheckFailure, OrFail};

/// How far apart two times may be after a store rounded them to
/// milliseconds.
pub(crate) const TIME_TOLERANCE: Duration = Duration::from_millis(1);

/// A lifetime long enough that no token expires during a check.
pub(crate) const LONG: Duration = Duration::from_secs(3600);

/// Keys for one run of one check. Every key carries a random part, so a
/// check never sees entries of another run even if a factory forgot to
/// isolate its stores.
pub(crate) struct Keys {
    credential: String,
}

impl Keys {
    /// Keys for the check named `check`.
    pub(crate) fn new(check: &str) -> Self {
        Self {
            credential: format!("token-conformance/{check}/{:016x}", random_u128() as u64),
        }
    }

    /// A realistic key (built like the engine builds them) named `name`.
    pub(crate) fn key(&self, name: &str) -> CacheKey {
        let request = TokenRequest::builder()
            .scope(name)
            .audience("https://conformance.example")
            .build();
        CacheKey::new(&self.credential, &request)
    }

    /// A raw key: this run's prefix followed by `suffix` as-is.
    pub(crate) fn raw(&self, suffix: &str) -> CacheKey {
        CacheKey::from_raw(format!("{}|{suffix}", self.credential))
    }
}

/// The current wall-clock time.
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

/// A bearer token that expires at `expires_at`, obtained now or, for a
/// token that has already expired, at its expiry: a token is never obtained
/// after it expires, and the codec refuses one that claims so, which would
/// let a store that serves expired tokens pass the expiry checks.
pub(crate) fn token_expiring_at(secret: impl Into<String>, expires_at: SystemTime) -> AccessToken {
    AccessToken::new(secret.into(), now().min(expires_at)).with_expires_at(expires_at)
}

/// A bearer token obtained now that expires `lifetime` from now.
pub(crate) fn token_expiring_in(secret: impl Into<String>, lifetime: Duration) -> AccessToken {
    token_expiring_at(secret, now() + lifetime)
}

/// A token with every field set, with times that are not whole
/// milliseconds so that rounding shows.
pub(crate) fn full_token(secret: impl Into<String>) -> AccessToken {
    let obtained = now() - Duration::from_millis(10_250) + Duration::from_nanos(123_456);
    AccessToken::new(secret.into(), obtained)
        .with_token_type(TokenType::DPoP)
        .with_expires_at(obtained + LONG + Duration::from_nanos(987_654))
        .with_refresh_at(obtained + LONG / 2 + Duration::from_nanos(555_555))
        .with_refresh_token("conformance-refresh-token")
        .with_scope("orders.read orders.write")
}

/// A short, printable description of a secret that never dumps a large
/// one: test secrets are synthetic, so showing a prefix is safe and helps.
pub(crate) fn show_secret(token: &AccessToken) -> String {
    describe_text(token.secret().expose())
}

fn describe_text(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN).collect();
        format!("{head:?}... ({} bytes)", text.len())
    }
}

/// A token for failure messages: its secret (shortened) and expiry.
pub(crate) struct Shown<'a>(pub(crate) &'a AccessToken);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token {} expiring at {}",
            show_secret(self.0),
            show_time(self.0.expires_at())
        )
    }
}

/// An optional token for failure messages.
pub(crate) struct ShownOpt<'a>(pub(crate) &'a Option<AccessToken>);

impl fmt::Display for ShownOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) => Shown(t).fmt(f),
            None => f.write_str("nothing"),
        }
    }
}

/// A time as milliseconds since the epoch, the precision stores keep.
pub(crate) fn show_time(t: Option<SystemTime>) -> String {
    match t {
        None => "never (no expires_at)".to_owned(),
        Some(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => format!(
                "{}.{:06} ms after the epoch",
                d.as_millis(),
                d.subsec_nanos() % 1_000_000
            ),
            Err(_) => "a time before the epoch".to_owned(),
        },
    }
}

/// True when the times are equal up to [`TIME_TOLERANCE`].
pub(crate) fn close(a: SystemTime, b: SystemTime) -> bool {
    let diff = match a.duration_since(b) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    diff < TIME_TOLERANCE
}

fn same_time(
    what: &str,
    expected: Option<SystemTime>,
    actual: Option<SystemTime>,
) -> Result<(), CheckFailure> {
    let ok = match (expected, actual) {
        (None, None) => true,
        (Some(e), Some(a)) => close(e, a),
        _ => false,
    };
    crate::ensure!(
        ok,
        "{what} differs: stored {}, read back {} (only rounding to milliseconds is allowed)",
        show_time(expected),
        show_time(actual)
    );
    Ok(())
}

/// Fails unless `actual` carries every field of `expected` (times up to
/// millisecond rounding).
pub(crate) fn same_token(expected: &AccessToken, actual: &AccessToken) -> Result<(), CheckFailure> {
    crate::ensure!(
        actual.same_secret(expected),
        "secret differs: stored {}, read back {}",
        show_secret(expected),
        show_secret(actual)
    );
    crate::ensure!(
        actual.token_type() == expected.token_type(),
        "token type differs: stored {}, read back {}",
        expected.token_type(),
        actual.token_type()
    );
    same_time(
        "obtained_at",
        Some(expected.obtained_at()),
        Some(actual.obtained_at()),
    )?;
    same_time("expires_at", expected.expires_at(), actual.expires_at())?;
    same_time("refresh_at", expected.refresh_at(), actual.refresh_at())?;
    let (e_rt, a_rt) = (expected.refresh_token(), actual.refresh_token());
    crate::ensure!(
        e_rt == a_rt,
        "refresh token differs: stored {}, read back {}",
        e_rt.map_or_else(|| "none".to_owned(), |s| describe_text(s.expose())),
        a_rt.map_or_else(|| "none".to_owned(), |s| describe_text(s.expose()))
    );
    crate::ensure!(
        expected.scope() == actual.scope(),
        "scope differs: stored {}, read back {}",
        expected
            .scope()
            .map_or_else(|| "none".to_owned(), describe_text),
        actual
            .scope()
            .map_or_else(|| "none".to_owned(), describe_text)
    );
    Ok(())
}

/// Gets `key` from `store` and fails unless it is a faithful copy of
/// `expected`.
pub(crate) async fn expect_token<S: CacheStore + ?Sized>(
    store: &S,
    key: &CacheKey,
    expected: &AccessToken,
    when: &str,
) -> Result<(), CheckFailure> {
    match store.get(key).await.or_fail(format_args!("get {when}"))? {
        Some(actual) => same_token(expected, &actual).map_err(|f| f.context(format!("get {when}"))),
        None => crate::fail!(
            "get {when} returned nothing; expected the {}",
            Shown(expected)
        ),
    }
}

/// Gets `key` from `store` and fails unless it is empty.
pub(crate) async fn expect_none<S: CacheStore + ?Sized>(
    store: &S,
    key: &CacheKey,
    when: &str,
) -> Result<(), CheckFailure> {
    let got = store.get(key).await.or_fail(format_args!("get {when}"))?;
    crate::ensure!(
        got.is_none(),
        "get {when} returned a {}; expected nothing",
        ShownOpt(&got)
    );
    Ok(())
}

/// Spawns `fut` on the current runtime.
pub(crate) fn spawn<T: Send + 'static>(
    fut: impl Future<Output = Result<T, CheckFailure>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, CheckFailure>> {
    tokio::spawn(fut)
}

/// Waits for every task and returns their results in order; a task that
/// panicked becomes a failure, and the first failure wins.
pub(crate) async fn join_all<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, CheckFailure>>>,
) -> Result<Vec<T>, CheckFailure> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_failure = None;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(f)) => {
                first_failure.get_or_insert(f.context(format!("task {i}")));
            }
            Err(e) => {
                first_failure
                    .get_or_insert(CheckFailure::new(format!("task {i} did not finish: {e}")));
            }
        }
    }
    match first_failure {
        Some(f) => Err(f),
        None => Ok(out),
    }
}

/// Sleeps (real time) until the wall clock has passed `at`.
pub(crate) async fn sleep_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(now()) {
        tokio::time::sleep(left + Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_two_runs_differ() {
        assert_ne!(Keys::new("c").key("k"), Keys::new("c").key("k"));
        let keys = Keys::new("c");
        assert_eq!(keys.key("k"), keys.key("k"));
        assert_ne!(keys.key("k"), keys.key("K"));
    }

    #[test]
    fn comparison_allows_millisecond_rounding_only() {
        let t = full_token("s");
        let rounded = AccessToken::new("s", t.obtained_at() - Duration::from_nanos(123_456))
            .with_token_type(TokenType::DPoP)
            .with_expires_at(t.expires_at().unwrap() - Duration::from_nanos(987_654))
            .with_refresh_at(t.refresh_at().unwrap() + Duration::from_nanos(1))
            .with_refresh_token("conformance-refresh-token")
            .with_scope("orders.read orders.write");
        same_token(&t, &rounded).unwrap();
        let off = rounded
            .clone()
            .with_expires_at(t.expires_at().unwrap() + Duration::from_millis(2));
        assert!(same_token(&t, &off)
            .unwrap_err()
            .message()
            .contains("expires_at"));
        let no_scope = AccessToken::new("s", t.obtained_at())
            .with_token_type(TokenType::DPoP)
            .with_expires_at(t.expires_at().unwrap())
            .with_refresh_at(t.refresh_at().unwrap())
            .with_refresh_token("conformance-refresh-token");
        assert!(same_token(&t, &no_scope)
            .unwrap_err()
            .message()
            .contains("scope"));
    }

    #[test]
    fn large_secrets_are_shortened_in_messages() {
        let t = token_expiring_in("x".repeat(100_000), LONG);
        assert!(show_secret(&t).len() < 100);
    }
}
