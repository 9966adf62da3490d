//! Moka's per-entry expiry, computed from each token's `expires_at`.
//!
//! This is garbage collection: it frees an entry's memory once its token
//! has expired. Whether a token may be returned is decided from the token's
//! own `expires_at` on every read (`AccessToken::is_live_at`, the rule every
//! store shares), because expiry is
//! data, and the wall clock can move in ways moka's monotonic clock does not.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use token_core::{AccessToken, CacheKey};

/// Expires each entry when its token expires.
pub(crate) struct ExpireWithToken;

impl Expiry<CacheKey, Arc<AccessToken>> for ExpireWithToken {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        token: &Arc<AccessToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(time_left(token, SystemTime::now()))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        token: &Arc<AccessToken>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A newer token replaced the entry: its own lifetime counts, not
        // what was left of the old one.
        Some(time_left(token, SystemTime::now()))
    }
}

/// How long `token` has left at `now`; zero when it has expired or has no
/// expiry (such a token is never stored, but zero is the safe answer).
pub(crate) fn time_left(token: &AccessToken, now: SystemTime) -> Duration {
    token
        .expires_at()
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: Option<SystemTime>) -> Arc<AccessToken> {
        let t = AccessToken::new("s", SystemTime::now());
        Arc::new(match expires_at {
            Some(at) => t.with_expires_at(at),
            None => t,
        })
    }

    #[test]
    fn time_left_follows_expires_at() {
        let now = SystemTime::now();
        assert_eq!(
            time_left(&token(Some(now + Duration::from_secs(90))), now),
            Duration::from_secs(90)
        );
        assert_eq!(
            time_left(&token(Some(now - Duration::from_secs(1))), now),
            Duration::ZERO
        );
        assert_eq!(time_left(&token(Some(now)), now), Duration::ZERO);
        assert_eq!(time_left(&token(None), now), Duration::ZERO);
    }

    #[test]
    fn expiry_hooks_use_the_new_tokens_lifetime() {
        let key = CacheKey::from_raw("k");
        let long = token(Some(SystemTime::now() + Duration::from_secs(3600)));
        let created = ExpireWithToken
            .expire_after_create(&key, &long, Instant::now())
            .unwrap();
        assert!(created > Duration::from_secs(3590) && created <= Duration::from_secs(3600));
        // An update ignores what was left of the previous entry.
        let updated = ExpireWithToken
            .expire_after_update(&key, &long, Instant::now(), Some(Duration::from_secs(1)))
            .unwrap();
        assert!(updated > Duration::from_secs(3590));
        let expired = token(Some(SystemTime::now() - Duration::from_secs(5)));
        assert_eq!(
            ExpireWithToken.expire_after_create(&key, &expired, Instant::now()),
            Some(Duration::ZERO)
        );
    }
}
