//! Stored bytes that cannot be decoded (or decrypted) read as a counted
//! miss: never a panic, never an error, never a token.

use token_core::backend::{encode_token, random_u128, FORMAT_VERSION};
use token_core::{AccessToken, CacheKey, PutOutcome};

use crate::failure::{CheckFailure, OrFail};
use crate::fixture::{Fixture, RawAccess};
use crate::support::{
    expect_none, expect_token, full_token, token_expiring_in, Keys, ShownOpt, LONG,
};
use crate::{ensure, fail};

crate::harness::theme_checks! {
    corruption:
    raw_access_reaches_the_stored_value,
    garbage_bytes_read_as_miss,
    truncated_value_reads_as_miss,
    future_format_version_reads_as_miss,
    empty_value_reads_as_miss,
    put_replaces_a_corrupt_value,
    encrypted_value_hides_the_secret,
    encrypted_value_is_bound_to_its_key,
}

/// Writes `bytes` under `key` and fails unless `get` reads them as a miss
/// counted in `stats().corrupt_reads`.
async fn expect_corrupt_miss(
    fx: &Fixture,
    raw: &dyn RawAccess,
    key: &CacheKey,
    bytes: &[u8],
    what: &str,
) -> Result<(), CheckFailure> {
    raw.write_raw(key, bytes)
        .await
        .or_fail(format_args!("write_raw of {what}"))?;
    read_as_corrupt_miss(fx, key, what).await
}

/// Fails unless `get` of `key` is a miss counted in
/// `stats().corrupt_reads`.
async fn read_as_corrupt_miss(
    fx: &Fixture,
    key: &CacheKey,
    what: &str,
) -> Result<(), CheckFailure> {
    let store = fx.store();
    let before = store.stats().corrupt_reads;
    let got = match store.get(key).await {
        Ok(got) => got,
        Err(e) => fail!(
            "get of {what} failed with {e}; a value that cannot be read must be a miss (Ok(None))"
        ),
    };
    ensure!(
        got.is_none(),
        "get of {what} returned a {}; expected a miss",
        ShownOpt(&got)
    );
    let after = store.stats().corrupt_reads;
    ensure!(
        after > before,
        "get of {what} was a miss but was not counted in stats().corrupt_reads ({before} before, {after} after)"
    );
    Ok(())
}

/// Puts `token` under `key` and returns the bytes the store keeps for it.
async fn stored_bytes(
    fx: &Fixture,
    raw: &dyn RawAccess,
    key: &CacheKey,
    token: &AccessToken,
) -> Result<Vec<u8>, CheckFailure> {
    fx.store()
        .put(key, token)
        .await
        .or_fail("put of a valid token")?;
    match raw.read_raw(key).await.or_fail("read_raw of a stored token")? {
        Some(bytes) if !bytes.is_empty() => Ok(bytes),
        Some(_) => fail!("read_raw of a stored token returned empty bytes"),
        None => fail!("read_raw of a stored token returned nothing: the raw hook does not reach the store's entries"),
    }
}

/// The fixture's raw hook reaches the entries `get` reads: the bytes of a
/// stored token, written back after a remove, read as the same token.
/// Every other corruption check relies on this.
pub async fn raw_access_reaches_the_stored_value(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let store = &**fx.store();
    let keys = Keys::new("raw_access_reaches_the_stored_value");
    let missing = raw
        .read_raw(&keys.key("never-written"))
        .await
        .or_fail("read_raw of a key never written")?;
    ensure!(
        missing.is_none(),
        "read_raw of a key never written returned {} bytes",
        missing.map_or(0, |b| b.len())
    );

    let key = keys.key("k");
    let token = full_token("conformance-raw-round-trip");
    let bytes = stored_bytes(fx, raw, &key, &token).await?;
    store.remove(&key).await.or_fail("remove")?;
    expect_none(store, &key, "after remove").await?;
    raw.write_raw(&key, &bytes)
        .await
        .or_fail("write_raw of the saved bytes")?;
    expect_token(
        store,
        &key,
        &token,
        "after the saved bytes were written back with write_raw",
    )
    .await
}

/// Bytes that were never a token (random bytes, JSON that is not a token,
/// a token body with an empty secret) read as a counted miss.
pub async fn garbage_bytes_read_as_miss(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let key = Keys::new("garbage_bytes_read_as_miss").key("k");
    let mut state = random_u128() as u64 | 1;
    let noise: Vec<u8> = (0..256)
        .map(|_| {
            // xorshift64: arbitrary bytes, different on every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let v = FORMAT_VERSION;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise),
        ("text", b"this is not a token".to_vec()),
        ("all zero bytes", vec![0; 64]),
        ("all 0xff bytes", vec![0xff; 64]),
        ("a bare JSON object", b"{}".to_vec()),
        (
            "a version byte and an empty object",
            [&[v][..], b"{}"].concat(),
        ),
        ("a version byte and null", [&[v][..], b"null"].concat()),
        (
            "a version byte and invalid UTF-8",
            vec![v, b'{', b'"', 0xc3, 0x28, b'"', b'}'],
        ),
        (
            "a version byte and a body with an empty secret",
            [
                &[v][..],
                br#"{"s":"","t":"Bearer","o":0,"e":99999999999999,"r":null}"#,
            ]
            .concat(),
        ),
        (
            "a version byte and a body with wrong field types",
            [&[v][..], br#"{"s":1,"t":[],"o":"x","e":"y","r":{}}"#].concat(),
        ),
        ("a single version byte", vec![v]),
    ];
    for (what, bytes) in &cases {
        let token = token_expiring_in("conformance-before-garbage", LONG);
        fx.store()
            .put(&key, &token)
            .await
            .or_fail("put of a valid token")?;
        expect_corrupt_miss(fx, raw, &key, bytes, what).await?;
    }
    Ok(())
}

/// A stored value cut short (to one byte, half, all but the last byte)
/// reads as a counted miss.
pub async fn truncated_value_reads_as_miss(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let key = Keys::new("truncated_value_reads_as_miss").key("k");
    let bytes = stored_bytes(fx, raw, &key, &full_token("conformance-to-truncate")).await?;
    let mut cuts = vec![1, bytes.len() / 2, bytes.len() - 1];
    cuts.retain(|&c| c > 0 && c < bytes.len());
    cuts.dedup();
    for cut in cuts {
        expect_corrupt_miss(
            fx,
            raw,
            &key,
            &bytes[..cut],
            &format!("the stored value cut to {cut} of {} bytes", bytes.len()),
        )
        .await?;
    }
    Ok(())
}

/// A value in a format version this build does not read (a later one, or
/// an unknown one) reads as a counted miss instead of being misread.
pub async fn future_format_version_reads_as_miss(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let key = Keys::new("future_format_version_reads_as_miss").key("k");
    let token = full_token("conformance-future-version");
    let encoded = encode_token(&token);
    for version in [FORMAT_VERSION.wrapping_add(1), 0xff, 0] {
        let mut bytes = encoded.to_vec();
        bytes[0] = version;
        let what = format!("a token encoded with format version {version}");
        expect_corrupt_miss(fx, raw, &key, &bytes, &what).await?;
    }
    // The store's own layout, when it starts with the format version like
    // the codec and the encryption envelope do.
    let mut stored = stored_bytes(fx, raw, &key, &token).await?;
    if stored[0] == FORMAT_VERSION {
        stored[0] = FORMAT_VERSION.wrapping_add(1);
        expect_corrupt_miss(
            fx,
            raw,
            &key,
            &stored,
            "the stored value with its leading version byte raised",
        )
        .await?;
    }
    Ok(())
}

/// An empty stored value reads as a counted miss.
pub async fn empty_value_reads_as_miss(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let keys = Keys::new("empty_value_reads_as_miss");
    let key = keys.key("k");
    fx.store()
        .put(&key, &token_expiring_in("conformance-before-empty", LONG))
        .await
        .or_fail("put")?;
    expect_corrupt_miss(fx, raw, &key, b"", "an empty value over a stored token").await?;
    expect_corrupt_miss(
        fx,
        raw,
        &keys.key("fresh"),
        b"",
        "an empty value on a fresh key",
    )
    .await
}

/// A corrupt value does not take part in newer-wins: a put over it is
/// stored (even a token that expires before the one that was corrupted).
pub async fn put_replaces_a_corrupt_value(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_serialized()?;
    let store = &**fx.store();
    let keys = Keys::new("put_replaces_a_corrupt_value");

    let key = keys.key("was-valid");
    let original = token_expiring_in("conformance-original", LONG * 2);
    store
        .put(&key, &original)
        .await
        .or_fail("put of a valid token")?;
    raw.write_raw(&key, b"\x01{corrupt")
        .await
        .or_fail("write_raw of corrupt bytes")?;
    let replacement = token_expiring_in("conformance-replacement", LONG);
    let outcome = store
        .put(&key, &replacement)
        .await
        .or_fail("put over a corrupt value")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put over a corrupt value returned {outcome:?}, expected Stored"
    );
    expect_token(
        store,
        &key,
        &replacement,
        "after a put over a corrupt value",
    )
    .await?;

    let fresh = keys.key("only-garbage");
    raw.write_raw(&fresh, &[0xde, 0xad, 0xbe, 0xef])
        .await
        .or_fail("write_raw on a fresh key")?;
    let outcome = store
        .put(&fresh, &replacement)
        .await
        .or_fail("put over garbage on a fresh key")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put over garbage returned {outcome:?}, expected Stored"
    );
    expect_token(store, &fresh, &replacement, "after a put over garbage").await
}

/// An encrypted store's bytes contain neither the access token nor the
/// refresh token, and the same token written twice is encrypted
/// differently (a fresh nonce per write).
pub async fn encrypted_value_hides_the_secret(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_encrypted()?;
    let key = Keys::new("encrypted_value_hides_the_secret").key("k");
    let secret = format!("conformance-secret-{:032x}", random_u128());
    let refresh = format!("conformance-refresh-{:032x}", random_u128());
    let token = full_token(secret.clone()).with_refresh_token(refresh.clone());
    let first = stored_bytes(fx, raw, &key, &token).await?;
    for (what, needle) in [("access token", &secret), ("refresh token", &refresh)] {
        ensure!(
            !contains(&first, needle.as_bytes()),
            "the stored bytes contain the {what} in clear"
        );
    }
    // Equal expiry replaces, so this writes the same token again.
    let second = stored_bytes(fx, raw, &key, &token).await?;
    ensure!(
        first != second,
        "the same token was stored as the same bytes twice: the nonce is not fresh per write"
    );
    Ok(())
}

/// An encrypted value copied to another key does not decrypt there (the
/// envelope is bound to its key); it reads as a counted miss, and the
/// original still reads.
pub async fn encrypted_value_is_bound_to_its_key(fx: &Fixture) -> Result<(), CheckFailure> {
    let raw = fx.require_encrypted()?;
    let keys = Keys::new("encrypted_value_is_bound_to_its_key");
    let (home, elsewhere) = (keys.key("home"), keys.key("elsewhere"));
    let token = full_token("conformance-bound-to-key");
    let bytes = stored_bytes(fx, raw, &home, &token).await?;
    expect_corrupt_miss(
        fx,
        raw,
        &elsewhere,
        &bytes,
        "a value copied from another key",
    )
    .await?;
    expect_token(&**fx.store(), &home, &token, "of the original key").await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(!contains(b"abcdef", b"ced"));
        assert!(!contains(b"ab", b"abc"));
    }
}
