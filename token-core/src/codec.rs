//! The stored-token format: one version byte, then the body.
//!
//! Stores that keep bytes (Redis, sled) encode tokens with [`encode_token`]
//! and read them with [`decode_token`], so a value written by this version
//! is read by every later version, and a value written by a later format is
//! refused with [`DecodeError::UnsupportedVersion`] instead of being misread.
//!
//! Version 1's body is binary, little-endian, every length explicit:
//!
//! ```text
//! flags           u8   bit 0: refresh_at, bit 1: refresh token, bit 2: scope
//! obtained_at     u64  milliseconds since the Unix epoch
//! expires_at      u64  milliseconds
//! refresh_at      u64  milliseconds            (if bit 0)
//! token_type      u8 length, UTF-8
//! secret          u32 length, UTF-8, not empty
//! refresh token   u32 length, UTF-8            (if bit 1)
//! scope           u32 length, UTF-8            (if bit 2)
//! ```
//!
//! Unknown flag bits, short fields and trailing bytes are all errors. The
//! output is sized exactly before it is written, so no partial copy of the
//! secret is ever left in a freed buffer; it is wrapped in [`Zeroizing`] and
//! is meant to be encrypted (sled always, Redis optionally) before it is
//! stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::secret::Secret;
use crate::token::{AccessToken, TokenType};

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;

const HAS_REFRESH_AT: u8 = 1;
const HAS_REFRESH_TOKEN: u8 = 1 << 1;
const HAS_SCOPE: u8 = 1 << 2;
const KNOWN_FLAGS: u8 = HAS_REFRESH_AT | HAS_REFRESH_TOKEN | HAS_SCOPE;

/// Why stored bytes could not be read as a token. Never contains any of the
/// bytes themselves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value is empty.
    #[error("stored value is empty")]
    Empty,
    /// Written by a newer (or unknown) format.
    #[error("stored value has format version {found}; this build reads version {supported}")]
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
    // A token type longer than 255 bytes is not a real one; it is cut at a
    // character boundary rather than failing the write.
    let mut token_type = token.token_type().as_str();
    while token_type.len() > usize::from(u8::MAX) {
        let mut end = usize::from(u8::MAX);
        while !token_type.is_char_boundary(end) {
            end -= 1;
        }
        token_type = &token_type[..end];
    }
    let secret = token.secret().expose();
    let refresh = token.refresh_token().map(Secret::expose);
    let scope = token.scope();
    let len = 2
        + 8
        + 8
        + if token.refresh_at().is_some() { 8 } else { 0 }
        + 1
        + token_type.len()
        + 4
        + secret.len()
        + refresh.map_or(0, |r| 4 + r.len())
        + scope.map_or(0, |s| 4 + s.len());

    let mut flags = 0;
    if token.refresh_at().is_some() {
        flags |= HAS_REFRESH_AT;
    }
    if refresh.is_some() {
        flags |= HAS_REFRESH_TOKEN;
    }
    if scope.is_some() {
        flags |= HAS_SCOPE;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(FORMAT_VERSION);
    out.push(flags);
    out.extend_from_slice(&to_ms(token.obtained_at()).to_le_bytes());
    out.extend_from_slice(&to_ms(token.expires_at().unwrap_or(token.obtained_at())).to_le_bytes());
    if let Some(at) = token.refresh_at() {
        out.extend_from_slice(&to_ms(at).to_le_bytes());
    }
    out.push(token_type.len() as u8);
    out.extend_from_slice(token_type.as_bytes());
    for field in [Some(secret), refresh, scope].into_iter().flatten() {
        // Values over 4 GiB cannot be tokens; saturate and let decode refuse.
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// Reads fields off a byte slice, failing on any shortfall.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn text(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }

    fn long_text(&mut self) -> Result<&'a str, DecodeError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        let len =
            usize::try_from(u32::from_le_bytes(b)).map_err(|_| DecodeError::Malformed("length"))?;
        self.text(len)
    }
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
    let mut r = Reader(body);
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Malformed("unknown flags"));
    }
    let obtained_at = from_ms(r.u64()?);
    let expires_at = from_ms(r.u64()?);
    let refresh_at = if flags & HAS_REFRESH_AT != 0 {
        Some(from_ms(r.u64()?))
    } else {
        None
    };
    let type_len = usize::from(r.u8()?);
    let token_type = TokenType::parse(r.text(type_len)?);
    let secret = r.long_text()?;
    if secret.is_empty() {
        return Err(DecodeError::Malformed("empty token"));
    }
    let refresh = if flags & HAS_REFRESH_TOKEN != 0 {
        Some(r.long_text()?)
    } else {
        None
    };
    let scope = if flags & HAS_SCOPE != 0 {
        Some(r.long_text()?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    if expires_at < obtained_at {
        return Err(DecodeError::Malformed("expires before it was obtained"));
    }
    let mut token = AccessToken::new(secret, obtained_at)
        .with_token_type(token_type)
        .with_expires_at(expires_at);
    if let Some(at) = refresh_at {
        token = token.with_refresh_at(at);
    }
    if let Some(rt) = refresh {
        token = token.with_refresh_token(rt);
    }
    if let Some(sc) = scope {
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
    fn encoding_is_sized_exactly() {
        let bytes = encode_token(&sample());
        assert_eq!(bytes.len(), bytes.capacity());
        let minimal = encode_token(&AccessToken::new("x", SystemTime::UNIX_EPOCH));
        assert_eq!(minimal.len(), minimal.capacity());
        assert!(decode_token(&minimal).is_ok());
    }

    #[test]
    fn trailing_bytes_and_unknown_flags_are_refused() {
        let mut b = encode_token(&sample()).to_vec();
        b.push(0);
        assert_eq!(
            decode_token(&b).unwrap_err(),
            DecodeError::Malformed("trailing bytes")
        );
        let mut b = encode_token(&sample()).to_vec();
        b[1] |= 0x80;
        assert_eq!(
            decode_token(&b).unwrap_err(),
            DecodeError::Malformed("unknown flags")
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
