//! Where things live in Redis and what the stored bytes look like.
//!
//! For a cache key `k` under prefix `p`:
//!
//! - token: `p{h}:token`, lease: `p{h}:lease`, where `h` is the first 128
//!   bits of SHA-256 of `k`'s text, in hex. The braces are a hash tag: a
//!   token and its lease always share a cluster slot, so the scripts can
//!   touch both kinds atomically, and keys do not reveal what they hold.
//! - invalidation channel: `p` + `events`.
//!
//! A stored value is `<expires_at in ms, decimal>:<payload>`. The payload is
//! `token_core::backend::encode_token`'s output, or that sealed in the encryption
//! envelope. The header exists so the newer-wins script can compare expiries
//! without reading the payload (which it cannot, when encrypted); it is a
//! hint only, and the store trusts nothing but the decoded payload.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use token_core::CacheKey;

/// The largest expiry written, in ms (year 2286): exactly representable in
/// the scripts' Lua numbers, and far beyond any token.
const MAX_EXPIRY_MS: u64 = 9_999_999_999_999;

/// The Redis keys of one cache key.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) token: String,
    pub(crate) lease: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, key: &CacheKey) -> Self {
        let digest = Sha256::digest(key.as_str().as_bytes());
        let mut token = String::with_capacity(prefix.len() + 32 + 9);
        token.push_str(prefix);
        token.push('{');
        for b in &digest[..16] {
            let _ = write!(token, "{b:02x}");
        }
        token.push('}');
        let mut lease = token.clone();
        token.push_str(":token");
        lease.push_str(":lease");
        Self { token, lease }
    }
}

/// The invalidation channel under `prefix`.
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}events")
}

/// Milliseconds since the epoch, clamped to what the scripts handle.
pub(crate) fn to_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .min(MAX_EXPIRY_MS)
}

/// `expires_ms` as a header, then `payload`.
pub(crate) fn frame(expires_ms: u64, payload: &[u8]) -> Vec<u8> {
    let header = expires_ms.to_string();
    let mut out = Vec::with_capacity(header.len() + 1 + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out
}

/// Splits a stored value into its header's expiry and its payload; `None`
/// when the header is missing or malformed.
pub(crate) fn unframe(value: &[u8]) -> Option<(u64, &[u8])> {
    let sep = value.iter().take(21).position(|&b| b == b':')?;
    let (digits, rest) = value.split_at(sep);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((ms, &rest[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_lease_share_a_hash_tag() {
        let k = Keys::new("p:", &CacheKey::from_raw("tc1|id|scope=a;"));
        let tag = |s: &str| s[s.find('{').unwrap()..=s.find('}').unwrap()].to_owned();
        assert_eq!(tag(&k.token), tag(&k.lease));
        assert!(k.token.starts_with("p:{") && k.token.ends_with("}:token"));
        assert_eq!(tag(&k.token).len(), 34);
        let other = Keys::new("p:", &CacheKey::from_raw("tc1|id|scope=b;"));
        assert_ne!(k.token, other.token);
    }

    #[test]
    fn frames_round_trip_and_junk_is_refused() {
        let v = frame(1_700_000_000_123, b"\x01{\"s\":1}");
        assert_eq!(
            unframe(&v),
            Some((1_700_000_000_123, &b"\x01{\"s\":1}"[..]))
        );
        assert_eq!(unframe(b"12:"), Some((12, &b""[..])));
        for junk in [
            &b""[..],
            b":x",
            b"12",
            b"-1:x",
            b"1a:x",
            b"\x01{}",
            b"123456789012345678901234:x",
        ] {
            assert_eq!(unframe(junk), None, "{junk:?}");
        }
    }
}
