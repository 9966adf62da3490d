//! A fake IdP for tests and benchmarks (feature `test-util`): one
//! [`Credential`] that every crate's tests share, instead of a copy per crate.
//!
//! [`FakeIdp`] issues numbered tokens (`s3cr3t-token-1`, `s3cr3t-token-2`, ...)
//! or a fixed one, counts its calls, and can be told to fail transiently or
//! permanently, to panic, to hang, or to wait at a gate, so a test can prove
//! what the engine does in each case:
//!
//! ```
//! use std::time::Duration;
//! use token_core::test_util::{FakeIdp, Mode};
//! use token_core::{Credential, TokenRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let idp = FakeIdp::new().with_lifetime(Duration::from_secs(60));
//! let request = TokenRequest::builder().scope("read").build();
//! let token = idp.fetch(&request, None).await.unwrap();
//! assert_eq!(token.secret().expose(), "s3cr3t-token-1");
//!
//! idp.set_mode(Mode::Permanent);
//! assert!(idp.fetch(&request, None).await.is_err());
//! assert_eq!(idp.calls(), 2);
//! # }
//! ```
//!
//! Not for production: it hands out made-up tokens.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::clock::{Clock, SystemClock};
use crate::credential::{Credential, CredentialError, FailureCause};
use crate::request::TokenRequest;
use crate::secret::Secret;
use crate::token::AccessToken;

/// What numbered secrets start with, unless
/// [`with_secret_prefix`](FakeIdp::with_secret_prefix) says otherwise: easy
/// to search for in captured logs, to prove no secret is in them.
pub const SECRET_PREFIX: &str = "s3cr3t-token-";

/// The lifetime of issued tokens unless
/// [`with_lifetime`](FakeIdp::with_lifetime) says otherwise: one hour, the
/// most common IdP default.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a token issued without `expires_in` really lasts, for
/// [`FakeIdp::real_expiry`]: a year, "forever" for a test.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What [`FakeIdp`] does on its next calls.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Mode {
    /// Issue a token with this `expires_in` (`None`: the IdP omits it).
    Issue(Option<Duration>),
    /// Issue a token whose `expires_at` is `obtained_at + secs` (negative:
    /// already expired, as a broken IdP might).
    IssueRaw(i64),
    /// Fail transiently (`temporarily_unavailable`, as a 503), with an
    /// optional `Retry-After`.
    Transient(Option<Duration>),
    /// Fail permanently (`invalid_client`).
    Permanent,
    /// Fail with exactly this error.
    Fail(CredentialError),
    /// Panic inside `fetch`, to prove the engine contains it.
    Panic,
    /// Never answer, to prove the engine's fetch timeout.
    Hang,
}

/// The secrets a [`FakeIdp`] hands out.
#[derive(Clone)]
enum Issue {
    /// `<prefix><call number>`.
    Numbered(String),
    /// The same secret every time.
    Fixed(Secret),
}

impl Issue {
    fn make(&self, n: usize) -> Secret {
        match self {
            Self::Numbered(prefix) => Secret::new(format!("{prefix}{n}")),
            Self::Fixed(secret) => secret.clone(),
        }
    }
}

/// A fake IdP: a [`Credential`] that counts its calls and does what its
/// [`Mode`] says. See the [module docs](self).
///
/// Defaults: id `fake-idp`, the system clock, numbered secrets starting
/// with [`SECRET_PREFIX`], tokens that last [`DEFAULT_LIFETIME`], no refresh
/// token. `Debug` shows the id and the number of calls, never a secret.
pub struct FakeIdp {
    id: String,
    clock: Arc<dyn Clock>,
    secrets: Issue,
    refresh_tokens: Option<Issue>,
    calls: AtomicUsize,
    mode: Mutex<Mode>,
    script: Mutex<VecDeque<Mode>>,
    gate: Mutex<Option<Arc<Semaphore>>>,
    issued: Mutex<HashMap<String, Instant>>,
    call_times: Mutex<Vec<Instant>>,
    previous: Mutex<Vec<Option<Secret>>>,
}

impl Default for FakeIdp {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked on purpose while holding a lock must not poison
    // the fake for the next assertion.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeIdp {
    /// A fake with the defaults (see [`FakeIdp`]).
    pub fn new() -> Self {
        Self {
            id: "fake-idp".to_owned(),
            clock: Arc::new(SystemClock),
            secrets: Issue::Numbered(SECRET_PREFIX.to_owned()),
            refresh_tokens: None,
            calls: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Issue(Some(DEFAULT_LIFETIME))),
            script: Mutex::new(VecDeque::new()),
            gate: Mutex::new(None),
            issued: Mutex::new(HashMap::new()),
            call_times: Mutex::new(Vec::new()),
            previous: Mutex::new(Vec::new()),
        }
    }

    /// Sets the credential id (and so the cache keys). Defaults to `fake-idp`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Takes `obtained_at` and the call times from `clock` (a
    /// [`ManualClock`](crate::ManualClock), usually). Defaults to the system
    /// clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Issues tokens with this `expires_in`. Defaults to [`DEFAULT_LIFETIME`].
    pub fn with_lifetime(self, lifetime: Duration) -> Self {
        *lock(&self.mode) = Mode::Issue(Some(lifetime));
        self
    }

    /// Numbers secrets after `prefix` (`<prefix>1`, `<prefix>2`, ...).
    /// Defaults to [`SECRET_PREFIX`].
    pub fn with_secret_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.secrets = Issue::Numbered(prefix.into());
        self
    }

    /// Hands out the same secret on every call.
    pub fn with_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.secrets = Issue::Fixed(secret.into());
        self
    }

    /// Attaches the same refresh token to every token. Defaults to none.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<Secret>) -> Self {
        self.refresh_tokens = Some(Issue::Fixed(refresh_token.into()));
        self
    }

    /// Attaches numbered refresh tokens (`<prefix>1`, ...), as an IdP that
    /// rotates them does. Defaults to none.
    pub fn with_refresh_token_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.refresh_tokens = Some(Issue::Numbered(prefix.into()));
        self
    }

    /// The clock the fake reads (to give a cache the same one).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How many times `fetch` was called (failed calls included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Changes what the next calls do (after any [script](Self::with_script)
    /// has run out).
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    /// Scripts the next calls: each call takes the next mode, and the last
    /// one stays in force once the script has run out (as if set with
    /// [`set_mode`](Self::set_mode)).
    pub fn with_script(self, modes: impl IntoIterator<Item = Mode>) -> Self {
        let mut script: VecDeque<Mode> = modes.into_iter().collect();
        if let Some(last) = script.pop_back() {
            *lock(&self.mode) = last;
        }
        *lock(&self.script) = script;
        self
    }

    /// Makes every later fetch wait for a permit of the returned semaphore
    /// (or for [`ungate`](Self::ungate)), so a test can hold fetches in
    /// flight.
    pub fn gate(&self) -> Arc<Semaphore> {
        let s = Arc::new(Semaphore::new(0));
        *lock(&self.gate) = Some(Arc::clone(&s));
        s
    }

    /// Lets every waiting and later fetch through.
    pub fn ungate(&self) {
        if let Some(s) = lock(&self.gate).take() {
            s.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// The monotonic moment a token this fake issued really expires (by the
    /// fake's clock), so a test can prove no expired token was handed out
    /// whatever the wall clock did. `None` for a token it did not issue.
    pub fn real_expiry(&self, token: &AccessToken) -> Option<Instant> {
        lock(&self.issued).get(token.secret().expose()).copied()
    }

    /// The monotonic moment of every call, in order.
    pub fn call_times(&self) -> Vec<Instant> {
        lock(&self.call_times).clone()
    }

    /// The refresh token of the `previous` token each call was given (`None`
    /// when there was no previous token or it had none), in call order.
    pub fn previous_refresh_tokens(&self) -> Vec<Option<Secret>> {
        lock(&self.previous).clone()
    }
}

impl fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIdp")
            .field("id", &self.id)
            .field("calls", &self.calls())
            .field("mode", &*lock(&self.mode))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Credential for FakeIdp {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.call_times).push(self.clock.monotonic());
        lock(&self.previous).push(previous.and_then(|p| p.refresh_token().cloned()));
        let gate = lock(&self.gate).clone();
        if let Some(gate) = gate {
            // Nobody closes the semaphore; were it closed, the call fails
            // like an unreachable IdP instead of panicking.
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| CredentialError::transient("the fake IdP's gate was closed"))?;
        }
        let scripted = lock(&self.script).pop_front();
        let mode = scripted.unwrap_or_else(|| lock(&self.mode).clone());
        let secret = self.secrets.make(n);
        let now = self.clock.now();
        let issue = |token: AccessToken| match &self.refresh_tokens {
            Some(rt) => token.with_refresh_token(rt.make(n)),
            None => token,
        };
        match mode {
            Mode::Issue(lifetime) => {
                let real = self.clock.monotonic() + lifetime.unwrap_or(UNSTATED_LIFETIME);
                lock(&self.issued).insert(secret.expose().to_owned(), real);
                let token = AccessToken::new(secret, now);
                Ok(issue(match lifetime {
                    Some(l) => token.with_expires_in(l),
                    None => token,
                }))
            }
            Mode::IssueRaw(secs) => {
                let offset = Duration::from_secs(secs.unsigned_abs());
                let at = if secs >= 0 {
                    now.checked_add(offset)
                } else {
                    now.checked_sub(offset)
                }
                .unwrap_or(now);
                Ok(issue(AccessToken::new(secret, now).with_expires_at(at)))
            }
            Mode::Transient(after) => {
                let e = CredentialError::transient("the fake IdP is unavailable")
                    .with_cause(FailureCause::HttpStatus)
                    .with_status(503)
                    .with_code("temporarily_unavailable");
                Err(match after {
                    Some(a) => e.with_retry_after(a),
                    None => e,
                })
            }
            Mode::Permanent => Err(CredentialError::permanent("client authentication failed")
                .with_cause(FailureCause::HttpStatus)
                .with_status(401)
                .with_code("invalid_client")),
            Mode::Fail(e) => Err(e),
            // The point of this mode: a credential that panics.
            Mode::Panic => panic!("fake IdP panicked on purpose"),
            Mode::Hang => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn request() -> TokenRequest {
        TokenRequest::builder().scope("s").build()
    }

    #[tokio::test]
    async fn issues_numbered_tokens_on_its_clock_and_remembers_their_real_expiry() {
        let clock = ManualClock::new();
        let idp = FakeIdp::new()
            .with_clock(clock.clone())
            .with_lifetime(Duration::from_secs(60))
            .with_refresh_token_prefix("rt-");
        let first = idp.fetch(&request(), None).await.unwrap();
        assert_eq!(first.secret().expose(), "s3cr3t-token-1");
        assert_eq!(first.obtained_at(), clock.now());
        assert_eq!(
            first.expires_at(),
            Some(clock.now() + Duration::from_secs(60))
        );
        assert_eq!(
            idp.real_expiry(&first),
            Some(clock.monotonic() + Duration::from_secs(60))
        );
        let second = idp.fetch(&request(), Some(&first)).await.unwrap();
        assert_eq!(second.secret().expose(), "s3cr3t-token-2");
        let seen: Vec<Option<String>> = idp
            .previous_refresh_tokens()
            .iter()
            .map(|s| s.as_ref().map(|s| s.expose().to_owned()))
            .collect();
        assert_eq!(seen, [None, Some("rt-1".to_owned())]);
        assert_eq!(idp.calls(), 2);
    }

    #[tokio::test]
    async fn a_script_runs_in_order_and_its_last_mode_stays() {
        let idp = FakeIdp::new().with_script([
            Mode::Fail(CredentialError::permanent("not configured")),
            Mode::Issue(Some(Duration::from_secs(60))),
            Mode::Transient(None),
        ]);
        let e = idp.fetch(&request(), None).await.unwrap_err();
        assert_eq!(e.message(), "not configured");
        assert!(idp.fetch(&request(), None).await.is_ok());
        for _ in 0..3 {
            assert!(idp
                .fetch(&request(), None)
                .await
                .unwrap_err()
                .is_transient());
        }
        assert_eq!(idp.calls(), 5);
    }

    #[tokio::test]
    async fn fails_as_its_mode_says_and_hides_secrets_from_debug() {
        let idp = FakeIdp::new().with_secret("fixed-secret-value");
        let t = idp.fetch(&request(), None).await.unwrap();
        assert_eq!(t.secret().expose(), "fixed-secret-value");
        idp.set_mode(Mode::Transient(Some(Duration::from_secs(3))));
        let e = idp.fetch(&request(), None).await.unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        idp.set_mode(Mode::Permanent);
        assert!(!idp
            .fetch(&request(), None)
            .await
            .unwrap_err()
            .is_transient());
        idp.set_mode(Mode::IssueRaw(-5));
        let dead = idp.fetch(&request(), None).await.unwrap();
        assert!(!dead.is_live_at(dead.obtained_at()));
        let debug = format!("{idp:?}");
        assert!(!debug.contains("fixed-secret-value"), "{debug}");
        assert!(debug.contains("calls: 4"), "{debug}");
    }
}
