//! The access token and its type.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::secret::Secret;

/// How the token is presented to a resource server (RFC 6749 §7.1).
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// `Bearer` (RFC 6750).
    Bearer,
    /// `DPoP` (RFC 9449): bound to a proof-of-possession key.
    DPoP,
    /// Any other type, kept as the server spelled it.
    Other(String),
}

impl TokenType {
    /// Parses a `token_type` value; the comparison is case-insensitive as
    /// RFC 6749 §5.1 requires, and the canonical spelling is kept.
    pub fn parse(value: &str) -> Self {
        if value.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else if value.eq_ignore_ascii_case("dpop") {
            Self::DPoP
        } else {
            Self::Other(value.to_owned())
        }
    }

    /// The scheme to put in an `Authorization` header.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bearer => "Bearer",
            Self::DPoP => "DPoP",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Debug for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth 2.0 access token with what is known of its lifetime.
///
/// The secret is zeroized on drop and is never part of `Debug`; read it with
/// [`AccessToken::secret`]. Times are wall-clock ([`SystemTime`]) because a
/// token crosses processes and machines through shared stores.
///
/// A [`Credential`](crate::Credential) builds a token with
/// [`AccessToken::new`] and whatever the IdP said about its lifetime. When
/// the engine caches the token it fills in the missing parts from its
/// [`RefreshPolicy`](crate::RefreshPolicy): `expires_at` (when the IdP said
/// nothing, or something absurd) and `refresh_at`, so every instance that
/// later reads the token from a shared store agrees on when to refresh it.
#[derive(Clone)]
pub struct AccessToken {
    secret: Secret,
    token_type: TokenType,
    obtained_at: SystemTime,
    expires_at: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
    refresh_token: Option<Secret>,
    scope: Option<String>,
}

impl AccessToken {
    /// A bearer token obtained at `obtained_at` (for an HTTP credential: the
    /// moment the request was sent, so that network latency shortens, never
    /// lengthens, the lifetime) with no known expiry yet.
    pub fn new(secret: impl Into<Secret>, obtained_at: SystemTime) -> Self {
        Self {
            secret: secret.into(),
            token_type: TokenType::Bearer,
            obtained_at,
            expires_at: None,
            refresh_at: None,
            refresh_token: None,
            scope: None,
        }
    }

    /// Sets the token type. Defaults to `Bearer`.
    pub fn with_token_type(mut self, token_type: TokenType) -> Self {
        self.token_type = token_type;
        self
    }

    /// Sets the absolute expiry.
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the expiry relative to `obtained_at` (the IdP's `expires_in`).
    /// A lifetime too large to represent saturates instead of panicking; the
    /// engine's policy caps it anyway.
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        let at = self
            .obtained_at
            .checked_add(expires_in)
            .unwrap_or_else(|| far_future(self.obtained_at));
        self.expires_at = Some(at);
        self
    }

    /// Sets the moment refresh-ahead should start. Normally left to the
    /// engine's policy; stores set it when they read a token back. Set by a
    /// credential, it is a hint (an endpoint's `refresh_in`): the policy
    /// refreshes no later than it.
    pub fn with_refresh_at(mut self, refresh_at: SystemTime) -> Self {
        self.refresh_at = Some(refresh_at);
        self
    }

    /// Attaches a refresh token (RFC 6749 §6), kept with the same care as the
    /// access token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<Secret>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Records the scope the IdP actually granted (RFC 6749 §5.1 `scope`).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The token itself. Never log it.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// How the token is presented.
    pub fn token_type(&self) -> &TokenType {
        &self.token_type
    }

    /// When the token was obtained from the IdP.
    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }

    /// When the token expires. `None` only for a token fresh from a credential
    /// whose IdP did not say; every token handed out by the cache has one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When refresh-ahead starts, as decided by the policy when the token was
    /// cached. `None` before that.
    pub fn refresh_at(&self) -> Option<SystemTime> {
        self.refresh_at
    }

    /// The refresh token, when the IdP issued one.
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The scope the IdP granted, when it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The value of an `Authorization` header: `<type> <token>`. The result
    /// is a secret too.
    pub fn authorization_header(&self) -> Secret {
        Secret::new(format!(
            "{} {}",
            self.token_type.as_str(),
            self.secret.expose()
        ))
    }

    /// True when both carry the same secret (compared in constant time). This
    /// is how [`TokenCache::invalidate`](crate::TokenCache::invalidate) knows a
    /// rejected token is still the cached one.
    pub fn same_secret(&self, other: &AccessToken) -> bool {
        self.secret == other.secret
    }

    /// True when the token may still be handed out at `now`: its
    /// `expires_at` is known and later than `now`.
    ///
    /// The one liveness rule of the workspace: every store filters what it
    /// returns with it (the `CacheStore` contract's "never return a token
    /// whose `expires_at` is at or before now"), and so does anyone else who
    /// holds a token and a time. A token without `expires_at` is **not**
    /// live: nothing tells how long it lasts, and the engine gives every
    /// token it caches an expiry (assumed from the policy when the IdP said
    /// nothing), so only a token fresh from a credential lacks one.
    ///
    /// The engine serves a token for less long than this: it stops at
    /// `expires_at` minus the policy's expiry skew
    /// ([`RefreshPolicy::usable_until`](crate::RefreshPolicy::usable_until)).
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now < at)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &self.secret)
            .field("token_type", &self.token_type)
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .field("refresh_token", &self.refresh_token)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A time far enough ahead to mean "never" without overflowing `SystemTime`
/// arithmetic anywhere else (about 100 years).
pub(crate) fn far_future(from: SystemTime) -> SystemTime {
    const HUNDRED_YEARS: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(HUNDRED_YEARS).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_type_is_case_insensitive() {
        assert_eq!(TokenType::parse("bearer"), TokenType::Bearer);
        assert_eq!(TokenType::parse("BEARER"), TokenType::Bearer);
        assert_eq!(TokenType::parse("dpop"), TokenType::DPoP);
        assert_eq!(TokenType::parse("MAC").as_str(), "MAC");
    }

    #[test]
    fn a_token_is_live_only_strictly_before_its_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = AccessToken::new("x", t0).with_expires_at(t0 + Duration::from_secs(60));
        assert!(t.is_live_at(t0));
        assert!(t.is_live_at(t0 + Duration::from_secs(59)));
        assert!(
            !t.is_live_at(t0 + Duration::from_secs(60)),
            "at expires_at it is dead"
        );
        assert!(!t.is_live_at(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_token_without_expiry_is_not_live() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = AccessToken::new("x", t0);
        assert!(!t.is_live_at(t0));
        assert!(!t.is_live_at(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn huge_expires_in_saturates() {
        let t = AccessToken::new("x", SystemTime::now()).with_expires_in(Duration::MAX);
        assert!(t.expires_at().is_some());
    }
}
