//! The stored-token format: one version byte, then the body.
//!
//! Stores that keep bytes (Redis, sled) encode tokens with [`encode_token`]
//! and read them with [`decode_token`], so a value written by this version
//! is read by every later version, and a value written by a later format is
//! refused with [`DecodeError::UnsupportedVersion`] instead of being misread.
//!
//! Version 1's body is a JSON object with short field names. The output
//! holds the secret in clear: it is wrapped in [`Zeroizing`] and is meant to
//! be encrypted (sled always, Redis optionally) before it is stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::Secret;
use crate::token::{AccessToken, TokenType};

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

/// Why stored bytes could not be read as a token. Never contains any of the
/// bytes themselves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is empty.
    #[error("stored value is empty")]
    Empty,
    /// Written by a newer (or unknown) format.
    #[error(
        "stored value has format version {found}; this build reads version {supported} and older"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// The body does not parse (truncated, corrupted, foreign bytes).
    #[error("stored value is malformed ({0})")]
    Malformed(&'static str),
}

#[derive(Serialize, Deserialize)]
struct V1 {
    /// secret
    s: String,
    /// token type
    t: String,
    /// obtained_at, ms since the epoch
    o: u64,
    /// expires_at, ms
    e: u64,
    /// refresh_at, ms
    r: Option<u64>,
    /// refresh token
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// granted scope
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sc: Option<String>,
}

impl Drop for V1 {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.s.zeroize();
        if let Some(rt) = &mut self.rt {
            rt.zeroize();
        }
    }
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| crate::token::far_future(UNIX_EPOCH))
}

/// Encodes a token (which must have `expires_at`; a missing one is written
/// as already expired, so it can never be served).
pub fn encode_token(token: &AccessToken) -> Zeroizing<Vec<u8>> {
    let body = V1 {
        s: token.secret().expose().to_owned(),
        t: token.token_type().as_str().to_owned(),
        o: to_ms(token.obtained_at()),
        e: to_ms(token.expires_at().unwrap_or(UNIX_EPOCH)),
        r: token.refresh_at().map(to_ms),
        rt: token.refresh_token().map(|s| s.expose().to_owned()),
        sc: token.scope().map(str::to_owned),
    };
    let mut out = Zeroizing::new(Vec::with_capacity(64 + token.secret().len()));
    out.push(FORMAT_VERSION);
    // Writing JSON into a Vec cannot fail for this plain struct.
    if serde_json::to_writer(&mut *out, &body).is_err() {
        out.truncate(1);
    }
    out
}

/// Decodes bytes written by [`encode_token`]. Version 1 is the only format
/// so far; a later build keeps reading it when it adds version 2.
pub fn decode_token(bytes: &[u8]) -> Result<AccessToken, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    // serde_json's messages can quote input, which may be secret: keep only
    // the category.
    let mut v: V1 = serde_json::from_slice(body).map_err(|e| {
        DecodeError::Malformed(match e.classify() {
            serde_json::error::Category::Eof => "truncated",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "unexpected field types",
            serde_json::error::Category::Io => "read error",
        })
    })?;
    let secret = Secret::new(std::mem::take(&mut v.s));
    if secret.is_empty() {
        return Err(DecodeError::Malformed("empty token"));
    }
    let mut token = AccessToken::new(secret, from_ms(v.o))
        .with_token_type(TokenType::parse(&v.t))
        .with_expires_at(from_ms(v.e));
    if let Some(r) = v.r {
        token = token.with_refresh_at(from_ms(r));
    }
    if let Some(rt) = v.rt.take() {
        token = token.with_refresh_token(rt);
    }
    if let Some(sc) = v.sc.take() {
        token = token.with_scope(sc);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessToken {
        AccessToken::new("tok-ü-秘密", from_ms(1_700_000_000_000))
            .with_expires_at(from_ms(1_700_003_600_000))
            .with_refresh_at(from_ms(1_700_002_700_000))
            .with_refresh_token("refresh-secret")
            .with_scope("a b")
            .with_token_type(TokenType::DPoP)
    }

    #[test]
    fn round_trips_every_field() {
        let t = decode_token(&encode_token(&sample())).unwrap();
        let s = sample();
        assert!(t.same_secret(&s));
        assert_eq!(t.token_type(), s.token_type());
        assert_eq!(t.obtained_at(), s.obtained_at());
        assert_eq!(t.expires_at(), s.expires_at());
        assert_eq!(t.refresh_at(), s.refresh_at());
        assert_eq!(t.refresh_token(), s.refresh_token());
        assert_eq!(t.scope(), s.scope());
    }

    #[test]
    fn future_versions_are_refused_not_misread() {
        let mut bytes = encode_token(&sample()).to_vec();
        bytes[0] = 2;
        assert_eq!(
            decode_token(&bytes).unwrap_err(),
            DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_faithful_token() {
        let good = encode_token(&sample());
        for len in 0..good.len() {
            let err = decode_token(&good[..len]).unwrap_err().to_string();
            assert!(!err.contains("tok-"), "{err}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.to_vec();
                b[i] ^= 1 << bit;
                // A flip that still parses changes a value; without encryption
                // that is undetectable, which is why stores that persist bytes
                // encrypt them. What must hold: no panic, no secret in errors.
                if let Err(e) = decode_token(&b) {
                    assert!(!e.to_string().contains("refresh-secret"));
                }
            }
        }
    }
}
