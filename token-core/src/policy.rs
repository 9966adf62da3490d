//! When to refresh, how long to trust a token, how to back off.

use std::time::{Duration, SystemTime};

use crate::token::AccessToken;

/// Refresh-ahead starts when this fraction of the lifetime remains.
///
/// For the common 60-minute token, refresh starts 15 minutes before expiry
/// (before jitter), so after the expiry skew an IdP outage of about 14
/// minutes costs no request, while the fleet still makes only ~1.33 IdP calls
/// per token lifetime (refreshing at half-life would double that).
pub const DEFAULT_REFRESH_AHEAD_FRACTION: f64 = 0.25;

/// Refresh-ahead starts at least this long before expiry, whatever the
/// fraction says, so that short-lived tokens also get a real outage window.
/// Capped at half the lifetime (see [`MAX_REFRESH_AHEAD_FRACTION`]).
pub const DEFAULT_REFRESH_AHEAD_MIN: Duration = Duration::from_secs(5 * 60);

/// Refresh never starts earlier than this fraction of the lifetime before
/// expiry: a 4-minute token is refreshed after 2 minutes, not immediately
/// and forever.
pub const MAX_REFRESH_AHEAD_FRACTION: f64 = 0.5;

/// A token is treated as expired this long before its `expires_at`, to cover
/// clock differences between us, the IdP and the resource server, and the
/// time the request carrying it spends in flight. 60 s is twice the usual
/// NTP-synchronised worst case seen between hosts and the 30 s floor the
/// project requires. Capped at a quarter of the lifetime so short-lived
/// tokens remain usable.
pub const DEFAULT_EXPIRY_SKEW: Duration = Duration::from_secs(60);

/// `refresh_at` is moved earlier by a random amount up to this fraction of
/// the lifetime, so thousands of keys or instances that got their tokens at
/// the same moment do not refresh in the same second.
pub const DEFAULT_JITTER_FRACTION: f64 = 0.05;

/// Upper bound on jitter, so very long lifetimes do not refresh much too early.
pub const DEFAULT_MAX_JITTER: Duration = Duration::from_secs(5 * 60);

/// Lifetime assumed when the IdP omits `expires_in`. RFC 6749 leaves it to
/// "other means"; assuming short costs a few extra IdP calls, assuming long
/// hands out tokens the resource server already rejects. 10 minutes is
/// shorter than any common IdP default (Entra ID, Okta, Auth0, Keycloak: 5
/// min to 24 h; most 1 h), with refresh-ahead still at ~7.5 minutes.
pub const DEFAULT_ASSUMED_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Lifetimes above this are capped: a "10 year" token is refreshed daily,
/// so a revoked or rotated credential is noticed within a day.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// First backoff step after a failed fetch.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest backoff step: during a long outage, one IdP call per minute per
/// key per fleet, and recovery noticed within a minute.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A server's `Retry-After` is honoured up to this long; beyond it a broken
/// or hostile value could stop refreshes for days.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The fetch's own timeout, independent of the caller's. IdP token calls
/// normally answer in well under a second; 10 s rides out a slow TLS
/// handshake or a GC pause without letting a hung IdP hold waiters for long.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to the fetch timeout to make the lease TTL: the holder makes up to
/// three store calls around the fetch (re-read, put, release), each bounded
/// by [`DEFAULT_STORE_TIMEOUT`], plus a second of slack, so a live holder
/// keeps the lease for its whole refresh. (Were it to lapse anyway, the
/// newer-wins put still fences an older token out.)
pub const DEFAULT_LEASE_MARGIN: Duration = Duration::from_secs(7);

/// With a shared store, each instance starts its refresh at its own random
/// moment in the first part of the refresh window, this fraction of it (the
/// window runs from `refresh_at` to `expires_at` less the skew). The earliest
/// instance refreshes; the others find the new token already stored when
/// their moment comes and read it once, so a fleet's reads of a key are
/// spread over this span instead of arriving in one burst. Half the window
/// keeps the other half for retries before the token stops being usable.
pub const DEFAULT_REFRESH_SPREAD_FRACTION: f64 = 0.5;

/// Upper bound on the refresh spread: for an hour-long token the window is
/// about 14 minutes, and spreading a fleet's reads over 5 of them is already
/// a few reads a second at 10,000 instances; longer would only delay the
/// fleet's switch to the new token.
pub const DEFAULT_MAX_REFRESH_SPREAD: Duration = Duration::from_secs(5 * 60);

/// An instance waiting for another instance's refresh is woken by the
/// store's event when the new token is stored; it also re-reads the store
/// (and retries the lease) this often, in case the event was lost or the
/// holder failed. Long, since it only covers what events miss; a holder that
/// died is in any case waited for at most the lease wait.
pub const DEFAULT_LEASE_POLL: Duration = Duration::from_secs(1);

/// Each store call is abandoned after this long: a hung store must not hold
/// a request longer than a fetch would.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// After a store call fails, the engine leaves the store alone for this long
/// (serving from hot slots and fetching directly), so that requests do not
/// each wait for a dead store's timeout.
pub const DEFAULT_STORE_COOLDOWN: Duration = Duration::from_secs(5);

/// The floor on forced refreshes: after a key's token was invalidated (a
/// resource answered `401 invalid_token`), the key is not invalidated again
/// for this long, so the token that replaced it is never forced out while
/// younger than this. A resource that rejects every token (wrong audience,
/// a revoked client, a broken resource) then costs one extra IdP call per
/// key per 30 s instead of one per request: a retry loop of the gateway or
/// the middleware cannot turn into an IdP call storm, and an IdP that
/// rate-limits is not pushed into refusing every key of the client. The
/// first invalidation of a key is always honoured, so a token revoked at
/// the resource is replaced at once.
pub const DEFAULT_INVALIDATE_FLOOR: Duration = Duration::from_secs(30);

/// How many keys one cache holds in memory by default
/// ([`TokenCacheBuilder::max_keys`](crate::TokenCacheBuilder::max_keys)).
/// A key costs about 0.4 KB of engine memory besides its token and its
/// request (which the map keeps: about 0.4 KB for a short one), so 100,000
/// keys of 1 KB tokens are about 200 MB in all: enough for a service with a
/// token per signed-in user, small enough not to surprise a sidecar.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How long a key whose token is no longer usable is kept after its last
/// request by default
/// ([`TokenCacheBuilder::idle_window`](crate::TokenCacheBuilder::idle_window)).
/// Ten minutes keeps a user who comes back soon on the same slot (and its
/// refresh token in memory) while one-shot users' expired secrets leave
/// memory within a quarter of an hour.
pub const DEFAULT_IDLE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// When refresh-ahead starts, how long tokens are trusted, and how failures
/// back off. Every knob has a documented default; see the constants in this
/// module for the reasoning behind each.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshPolicy {
    refresh_ahead_fraction: f64,
    refresh_ahead_min: Duration,
    expiry_skew: Duration,
    jitter_fraction: f64,
    max_jitter: Duration,
    assumed_lifetime: Duration,
    max_lifetime: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    fetch_timeout: Duration,
    lease_ttl: Option<Duration>,
    lease_wait: Option<Duration>,
    lease_poll: Duration,
    refresh_spread_fraction: f64,
    max_refresh_spread: Duration,
    store_timeout: Duration,
    store_cooldown: Duration,
    invalidate_floor: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_ahead_fraction: DEFAULT_REFRESH_AHEAD_FRACTION,
            refresh_ahead_min: DEFAULT_REFRESH_AHEAD_MIN,
            expiry_skew: DEFAULT_EXPIRY_SKEW,
            jitter_fraction: DEFAULT_JITTER_FRACTION,
            max_jitter: DEFAULT_MAX_JITTER,
            assumed_lifetime: DEFAULT_ASSUMED_LIFETIME,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            lease_ttl: None,
            lease_wait: None,
            lease_poll: DEFAULT_LEASE_POLL,
            refresh_spread_fraction: DEFAULT_REFRESH_SPREAD_FRACTION,
            max_refresh_spread: DEFAULT_MAX_REFRESH_SPREAD,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            store_cooldown: DEFAULT_STORE_COOLDOWN,
            invalidate_floor: DEFAULT_INVALIDATE_FLOOR,
        }
    }
}

/// Why a token cannot be cached.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The token's expiry is at or before the moment it was obtained.
    #[error("the IdP issued a token that is already expired (lifetime {lifetime_secs} s)")]
    NonPositiveLifetime {
        /// The lifetime the IdP gave, in seconds (zero or negative).
        lifetime_secs: i64,
    },
}

fn clamp_fraction(f: f64) -> f64 {
    if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

impl RefreshPolicy {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refresh-ahead starts when this fraction of the lifetime remains
    /// (clamped to `0..=0.5`). Defaults to [`DEFAULT_REFRESH_AHEAD_FRACTION`].
    pub fn with_refresh_ahead_fraction(mut self, fraction: f64) -> Self {
        self.refresh_ahead_fraction = clamp_fraction(fraction);
        self
    }

    /// Refresh-ahead starts at least this long before expiry (capped at half
    /// the lifetime). Defaults to [`DEFAULT_REFRESH_AHEAD_MIN`].
    pub fn with_refresh_ahead_min(mut self, d: Duration) -> Self {
        self.refresh_ahead_min = d;
        self
    }

    /// A token counts as expired this long before `expires_at` (capped at a
    /// quarter of the lifetime). Defaults to [`DEFAULT_EXPIRY_SKEW`].
    pub fn with_expiry_skew(mut self, d: Duration) -> Self {
        self.expiry_skew = d;
        self
    }

    /// Random shift of `refresh_at`, as a fraction of the lifetime. Defaults
    /// to [`DEFAULT_JITTER_FRACTION`]; `0.0` turns jitter off.
    pub fn with_jitter_fraction(mut self, fraction: f64) -> Self {
        self.jitter_fraction = clamp_fraction(fraction);
        self
    }

    /// Upper bound on jitter. Defaults to [`DEFAULT_MAX_JITTER`].
    pub fn with_max_jitter(mut self, d: Duration) -> Self {
        self.max_jitter = d;
        self
    }

    /// Lifetime assumed when the IdP gives none. Defaults to
    /// [`DEFAULT_ASSUMED_LIFETIME`].
    pub fn with_assumed_lifetime(mut self, d: Duration) -> Self {
        self.assumed_lifetime = d;
        self
    }

    /// Longer lifetimes are capped to this. Defaults to [`DEFAULT_MAX_LIFETIME`].
    pub fn with_max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = d;
        self
    }

    /// First backoff step after a failure. Defaults to [`DEFAULT_BACKOFF_BASE`].
    pub fn with_backoff_base(mut self, d: Duration) -> Self {
        self.backoff_base = d;
        self
    }

    /// Longest backoff step. Defaults to [`DEFAULT_BACKOFF_MAX`].
    pub fn with_backoff_max(mut self, d: Duration) -> Self {
        self.backoff_max = d;
        self
    }

    /// `Retry-After` is honoured up to this. Defaults to [`DEFAULT_MAX_RETRY_AFTER`].
    pub fn with_max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// The fetch's own timeout. Defaults to [`DEFAULT_FETCH_TIMEOUT`].
    pub fn with_fetch_timeout(mut self, d: Duration) -> Self {
        self.fetch_timeout = d;
        self
    }

    /// How long a refresh lease lasts. Defaults to the fetch timeout plus
    /// [`DEFAULT_LEASE_MARGIN`].
    pub fn with_lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = Some(d);
        self
    }

    /// How long a caller waits for another instance's refresh before fetching
    /// itself. Defaults to the lease TTL: a holder that died is waited for at
    /// most until its lease would have expired.
    pub fn with_lease_wait(mut self, d: Duration) -> Self {
        self.lease_wait = Some(d);
        self
    }

    /// How often an instance waiting for another instance's refresh
    /// re-reads the store and retries the lease besides being woken by the
    /// store's event (at least 1 ms; each wait is jittered between half and
    /// all of it). Defaults to [`DEFAULT_LEASE_POLL`].
    pub fn with_lease_poll(mut self, d: Duration) -> Self {
        self.lease_poll = d.max(Duration::from_millis(1));
        self
    }

    /// With a shared store, the fraction of the refresh window (clamped to
    /// `0..=1`) over which instances pick their own moment to refresh; `0.0`
    /// makes every instance refresh at `refresh_at`. Defaults to
    /// [`DEFAULT_REFRESH_SPREAD_FRACTION`].
    pub fn with_refresh_spread_fraction(mut self, fraction: f64) -> Self {
        self.refresh_spread_fraction = clamp_fraction(fraction);
        self
    }

    /// Upper bound on the refresh spread. Defaults to
    /// [`DEFAULT_MAX_REFRESH_SPREAD`].
    pub fn with_max_refresh_spread(mut self, d: Duration) -> Self {
        self.max_refresh_spread = d;
        self
    }

    /// Each store call's timeout. Defaults to [`DEFAULT_STORE_TIMEOUT`].
    pub fn with_store_timeout(mut self, d: Duration) -> Self {
        self.store_timeout = d;
        self
    }

    /// How long the store is bypassed after it fails. Defaults to
    /// [`DEFAULT_STORE_COOLDOWN`].
    pub fn with_store_cooldown(mut self, d: Duration) -> Self {
        self.store_cooldown = d;
        self
    }

    /// The shortest time between two invalidations of one key
    /// ([`TokenCache::invalidate`](crate::TokenCache::invalidate)): within
    /// it, a further `invalidate` for the key drops nothing and returns
    /// `false`. Defaults to [`DEFAULT_INVALIDATE_FLOOR`]; zero turns the
    /// floor off.
    pub fn with_invalidate_floor(mut self, d: Duration) -> Self {
        self.invalidate_floor = d;
        self
    }

    /// The floor on forced refreshes per key.
    pub fn invalidate_floor(&self) -> Duration {
        self.invalidate_floor
    }

    /// The fetch timeout.
    pub fn fetch_timeout(&self) -> Duration {
        self.fetch_timeout
    }

    /// The effective lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
            .unwrap_or(self.fetch_timeout + DEFAULT_LEASE_MARGIN)
    }

    /// The effective bound on waiting for another instance.
    pub fn lease_wait(&self) -> Duration {
        self.lease_wait.unwrap_or_else(|| self.lease_ttl())
    }

    /// The lease poll interval.
    pub fn lease_poll(&self) -> Duration {
        self.lease_poll
    }

    /// The refresh spread fraction.
    pub fn refresh_spread_fraction(&self) -> f64 {
        self.refresh_spread_fraction
    }

    /// The upper bound on the refresh spread.
    pub fn max_refresh_spread(&self) -> Duration {
        self.max_refresh_spread
    }

    /// How long after `refresh_at` an instance sharing a store may start
    /// refreshing: the spread fraction of the refresh window (from
    /// `refresh_at` to [`usable_until`](Self::usable_until)), capped. Zero
    /// for a token that is not scheduled.
    pub fn refresh_spread(&self, token: &AccessToken) -> Duration {
        let Some(refresh_at) = token.refresh_at() else {
            return Duration::ZERO;
        };
        self.usable_until(token)
            .duration_since(refresh_at)
            .unwrap_or_default()
            .mul_f64(self.refresh_spread_fraction)
            .min(self.max_refresh_spread)
    }

    /// The store call timeout.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// The store cooldown.
    pub fn store_cooldown(&self) -> Duration {
        self.store_cooldown
    }

    /// Fills in what the policy decides for a token about to be cached:
    /// `expires_at` (assumed when missing, capped when absurd) and a
    /// jittered `refresh_at`. Refuses tokens that are already expired.
    ///
    /// A `refresh_at` the credential already set (an endpoint's
    /// `refresh_in` hint) is honoured when it is earlier than the policy's
    /// and after `obtained_at`; a later hint never delays the refresh.
    ///
    /// `unit_random` is a value in `[0, 1)` that picks the jitter.
    pub fn schedule(
        &self,
        token: AccessToken,
        unit_random: f64,
    ) -> Result<AccessToken, ScheduleError> {
        let obtained = token.obtained_at();
        let lifetime = match token.expires_at() {
            None => self.assumed_lifetime,
            Some(at) => match at.duration_since(obtained) {
                Ok(d) if !d.is_zero() => d.min(self.max_lifetime),
                Ok(_) => return Err(ScheduleError::NonPositiveLifetime { lifetime_secs: 0 }),
                Err(e) => {
                    let secs = i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX);
                    return Err(ScheduleError::NonPositiveLifetime {
                        lifetime_secs: -secs.max(1),
                    });
                }
            },
        };
        let expires_at = obtained + lifetime;
        let ahead = lifetime
            .mul_f64(self.refresh_ahead_fraction)
            .max(self.refresh_ahead_min)
            .min(lifetime.mul_f64(MAX_REFRESH_AHEAD_FRACTION));
        let jitter_span = lifetime.mul_f64(self.jitter_fraction).min(self.max_jitter);
        let jitter = jitter_span.mul_f64(unit_random.clamp(0.0, 1.0));
        // Jitter moves the refresh earlier, never past the obtained time.
        let before_expiry = (ahead + jitter).min(lifetime);
        let mut refresh_at = expires_at - before_expiry;
        if let Some(hint) = token.refresh_at() {
            if hint > obtained && hint < refresh_at {
                refresh_at = hint;
            }
        }
        Ok(token
            .with_expires_at(expires_at)
            .with_refresh_at(refresh_at))
    }

    /// The skew that applies to a token of `lifetime`.
    pub fn skew_for(&self, lifetime: Duration) -> Duration {
        self.expiry_skew.min(lifetime / 4)
    }

    /// The last wall-clock moment a scheduled token may be handed out.
    pub fn usable_until(&self, token: &AccessToken) -> SystemTime {
        let obtained = token.obtained_at();
        let expires = token.expires_at().unwrap_or(obtained);
        let lifetime = expires.duration_since(obtained).unwrap_or_default();
        expires - self.skew_for(lifetime)
    }

    /// The delay before retry number `failures` (1 for the first failure),
    /// exponential with "equal jitter" (half fixed, half random), and never
    /// shorter than the server's `Retry-After` (itself capped).
    pub fn backoff(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        unit_random: f64,
    ) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let step = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let jittered = step / 2 + (step / 2).mul_f64(unit_random.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => jittered.max(after.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Option<Duration>) -> AccessToken {
        let t = AccessToken::new("s", SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        match lifetime {
            Some(d) => t.with_expires_in(d),
            None => t,
        }
    }

    #[test]
    fn an_hour_token_survives_a_ten_minute_outage() {
        let p = RefreshPolicy::default();
        for r in [0.0, 0.5, 0.999] {
            let t = p
                .schedule(token(Some(Duration::from_secs(3600))), r)
                .unwrap();
            let window = p
                .usable_until(&t)
                .duration_since(t.refresh_at().unwrap())
                .unwrap();
            assert!(window >= Duration::from_secs(600), "{window:?}");
            assert!(p.skew_for(Duration::from_secs(3600)) >= Duration::from_secs(30));
        }
    }

    #[test]
    fn missing_and_absurd_lifetimes_are_normalised() {
        let p = RefreshPolicy::default();
        let t = p.schedule(token(None), 0.0).unwrap();
        assert_eq!(
            t.expires_at()
                .unwrap()
                .duration_since(t.obtained_at())
                .unwrap(),
            DEFAULT_ASSUMED_LIFETIME
        );
        let t = p
            .schedule(token(Some(Duration::from_secs(10 * 365 * 86400))), 0.0)
            .unwrap();
        assert_eq!(
            t.expires_at()
                .unwrap()
                .duration_since(t.obtained_at())
                .unwrap(),
            DEFAULT_MAX_LIFETIME
        );
        assert!(p.schedule(token(Some(Duration::ZERO)), 0.0).is_err());
        let past = AccessToken::new("s", SystemTime::UNIX_EPOCH + Duration::from_secs(100))
            .with_expires_at(SystemTime::UNIX_EPOCH + Duration::from_secs(40));
        assert_eq!(
            p.schedule(past, 0.0).unwrap_err(),
            ScheduleError::NonPositiveLifetime { lifetime_secs: -60 }
        );
    }

    #[test]
    fn an_earlier_refresh_hint_is_honoured_and_a_later_one_ignored() {
        let p = RefreshPolicy::default().with_jitter_fraction(0.0);
        let day = Duration::from_secs(24 * 3600);
        let obtained = token(None).obtained_at();
        let policy_at = p.schedule(token(Some(day)), 0.0).unwrap().refresh_at();
        assert_eq!(policy_at, Some(obtained + day - day / 4));
        let half = obtained + day / 2;
        let hinted = p
            .schedule(token(Some(day)).with_refresh_at(half), 0.0)
            .unwrap();
        assert_eq!(hinted.refresh_at(), Some(half));
        let late = obtained + day - Duration::from_secs(60);
        let ignored = p
            .schedule(token(Some(day)).with_refresh_at(late), 0.0)
            .unwrap();
        assert_eq!(ignored.refresh_at(), policy_at);
        let before = p
            .schedule(token(Some(day)).with_refresh_at(obtained), 0.0)
            .unwrap();
        assert_eq!(before.refresh_at(), policy_at);
    }

    #[test]
    fn short_tokens_refresh_at_half_life_at_the_earliest() {
        let p = RefreshPolicy::default().with_jitter_fraction(0.0);
        let t = p
            .schedule(token(Some(Duration::from_secs(240))), 0.0)
            .unwrap();
        assert_eq!(
            t.refresh_at()
                .unwrap()
                .duration_since(t.obtained_at())
                .unwrap(),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_refresh_spread_is_half_the_window_capped_and_ends_before_expiry() {
        let p = RefreshPolicy::default().with_jitter_fraction(0.0);
        let t = p
            .schedule(token(Some(Duration::from_secs(20))), 0.0)
            .unwrap();
        // 20 s: refresh at 10 s, usable until 15 s (skew 5 s): half of 5 s.
        assert_eq!(p.refresh_spread(&t), Duration::from_millis(2500));
        let long = p.schedule(token(Some(hour())), 0.0).unwrap();
        assert_eq!(p.refresh_spread(&long), DEFAULT_MAX_REFRESH_SPREAD);
        assert!(long.refresh_at().unwrap() + p.refresh_spread(&long) < p.usable_until(&long));
        let off = p.clone().with_refresh_spread_fraction(0.0);
        assert_eq!(off.refresh_spread(&long), Duration::ZERO);
        assert_eq!(p.refresh_spread(&token(Some(hour()))), Duration::ZERO);
    }

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RefreshPolicy::default();
        assert_eq!(p.backoff(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff(3, None, 0.999_999).as_secs(), 3);
        assert_eq!(p.backoff(40, None, 0.0), Duration::from_secs(30));
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(30)), 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(86400)), 0.0),
            DEFAULT_MAX_RETRY_AFTER
        );
    }
}
