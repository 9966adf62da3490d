//! Get, put, remove, invalidate; newer-wins; key isolation; large and unicode values;
//! use through `Box<dyn CacheStore>` and `Arc<dyn CacheStore>`.

use std::sync::Arc;
use std::time::Duration;

use token_core::{AccessToken, CacheStore, PutOutcome, StoreError, TokenType};

use crate::failure::{CheckFailure, OrFail};
use crate::fixture::Fixture;
use crate::support::{
    expect_none, expect_token, full_token, now, token_expiring_at, token_expiring_in, Keys,
    ShownOpt, LONG,
};
use crate::{ensure, fail};

crate::harness::theme_checks! {
    basic:
    get_missing_is_none,
    put_then_get_round_trips_every_field,
    remove_deletes_the_token,
    remove_missing_key_is_ok,
    put_without_expiry_is_rejected,
    newer_put_replaces_older,
    older_put_keeps_newer,
    equal_expiry_put_replaces,
    invalidate_removes_only_the_rejected_token,
    invalidate_spares_a_newer_token,
    similar_keys_are_isolated,
    large_values_round_trip,
    unicode_values_round_trip,
    works_through_box_dyn,
    works_through_arc_dyn,
}

/// `get` of a key that was never written is `Ok(None)`.
pub async fn get_missing_is_none(fx: &Fixture) -> Result<(), CheckFailure> {
    let keys = Keys::new("get_missing_is_none");
    expect_none(
        &**fx.store(),
        &keys.key("never-written"),
        "of a key never written",
    )
    .await?;
    expect_none(&**fx.store(), &keys.raw(""), "of an almost empty key").await
}

/// `put` then `get` returns every field: secret, token type, `obtained_at`,
/// `expires_at`, `refresh_at`, refresh token and scope (times may be
/// rounded to milliseconds), and absent optional fields stay absent.
pub async fn put_then_get_round_trips_every_field(fx: &Fixture) -> Result<(), CheckFailure> {
    round_trip(
        &**fx.store(),
        &Keys::new("put_then_get_round_trips_every_field"),
    )
    .await
}

/// The body of the round-trip check, for any way of holding a store.
async fn round_trip<S: CacheStore + ?Sized>(store: &S, keys: &Keys) -> Result<(), CheckFailure> {
    let full = full_token("conformance-full-token");
    let minimal = token_expiring_in("conformance-minimal-token", LONG);
    let other_type = token_expiring_in("conformance-other-type", LONG)
        .with_token_type(TokenType::parse("N_A"))
        .with_scope("read");
    for (name, token) in [
        ("full", &full),
        ("minimal", &minimal),
        ("other-type", &other_type),
    ] {
        let key = keys.key(name);
        let outcome = store
            .put(&key, token)
            .await
            .or_fail(format_args!("put of the {name} token"))?;
        ensure!(
            outcome == PutOutcome::Stored,
            "put of the {name} token on an empty key returned {outcome:?}, expected Stored"
        );
        expect_token(
            store,
            &key,
            token,
            &format!("after put of the {name} token"),
        )
        .await?;
    }
    Ok(())
}

/// `remove` deletes the token, is idempotent, and leaves no trace: an
/// older token put afterwards is stored, not refused as older.
pub async fn remove_deletes_the_token(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("remove_deletes_the_token").key("k");
    let token = token_expiring_in("conformance-to-remove", LONG);
    store.put(&key, &token).await.or_fail("put")?;
    expect_token(store, &key, &token, "after put").await?;
    store.remove(&key).await.or_fail("remove")?;
    expect_none(store, &key, "after remove").await?;
    store
        .remove(&key)
        .await
        .or_fail("a second remove of the same key")?;
    expect_none(store, &key, "after a second remove").await?;

    let older = token_expiring_in("conformance-older-after-remove", LONG / 4);
    let outcome = store.put(&key, &older).await.or_fail("put after remove")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put after remove returned {outcome:?}: the removed token still takes part in newer-wins"
    );
    expect_token(store, &key, &older, "after remove and a new put").await
}

/// `remove` of a key that holds nothing is `Ok(())`.
pub async fn remove_missing_key_is_ok(fx: &Fixture) -> Result<(), CheckFailure> {
    let key = Keys::new("remove_missing_key_is_ok").key("never-written");
    fx.store()
        .remove(&key)
        .await
        .or_fail("remove of a key never written")?;
    expect_none(&**fx.store(), &key, "after remove of a key never written").await
}

/// A token without `expires_at` is refused with `StoreError::Rejected`,
/// and neither stored nor allowed to disturb the token already there.
pub async fn put_without_expiry_is_rejected(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("put_without_expiry_is_rejected");
    let no_expiry = || AccessToken::new("conformance-no-expiry", now());

    let empty = keys.key("empty");
    expect_rejected(store.put(&empty, &no_expiry()).await, "on an empty key")?;
    expect_none(store, &empty, "after a rejected put").await?;

    let full = keys.key("full");
    let kept = token_expiring_in("conformance-kept", LONG);
    store
        .put(&full, &kept)
        .await
        .or_fail("put of a valid token")?;
    expect_rejected(store.put(&full, &no_expiry()).await, "over a stored token")?;
    expect_token(store, &full, &kept, "after a rejected put over it").await
}

fn expect_rejected(result: Result<PutOutcome, StoreError>, when: &str) -> Result<(), CheckFailure> {
    match result {
        Err(StoreError::Rejected(_)) => Ok(()),
        Err(other) => fail!(
            "put of a token without expires_at {when} failed with {other}, expected StoreError::Rejected"
        ),
        Ok(outcome) => fail!(
            "put of a token without expires_at {when} returned {outcome:?}, expected StoreError::Rejected"
        ),
    }
}

/// A put of a token that expires later replaces the stored one.
pub async fn newer_put_replaces_older(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("newer_put_replaces_older").key("k");
    let older = token_expiring_in("conformance-older", LONG);
    let newer = token_expiring_in("conformance-newer", LONG * 2);
    store
        .put(&key, &older)
        .await
        .or_fail("put of the older token")?;
    let outcome = store
        .put(&key, &newer)
        .await
        .or_fail("put of the newer token")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put of a later-expiring token returned {outcome:?}, expected Stored"
    );
    expect_token(store, &key, &newer, "after the newer put").await
}

/// A put of a token that expires earlier keeps the stored one and says
/// `PutOutcome::KeptNewer`.
pub async fn older_put_keeps_newer(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("older_put_keeps_newer").key("k");
    let newer = full_token("conformance-newer");
    let older = token_expiring_at(
        "conformance-older",
        newer.expires_at().unwrap_or_else(now) - Duration::from_secs(60),
    );
    let outcome = store
        .put(&key, &newer)
        .await
        .or_fail("put of the newer token")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "first put returned {outcome:?}, expected Stored"
    );
    let outcome = store
        .put(&key, &older)
        .await
        .or_fail("put of the older token")?;
    ensure!(
        outcome == PutOutcome::KeptNewer,
        "put of an earlier-expiring token returned {outcome:?}, expected KeptNewer"
    );
    expect_token(store, &key, &newer, "after an older put").await
}

/// A put of a token with the same expiry replaces the stored one.
pub async fn equal_expiry_put_replaces(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("equal_expiry_put_replaces").key("k");
    let at = now() + LONG;
    let first = token_expiring_at("conformance-first", at);
    let second = token_expiring_at("conformance-second", at).with_scope("second");
    store
        .put(&key, &first)
        .await
        .or_fail("put of the first token")?;
    let outcome = store
        .put(&key, &second)
        .await
        .or_fail("put of the second token")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put of a token with equal expiry returned {outcome:?}, expected Stored"
    );
    expect_token(store, &key, &second, "after a put with equal expiry").await
}

/// Keys that are prefixes of each other, differ only in case or Unicode
/// normalisation, or hold characters other systems treat specially never
/// see each other's tokens or leases.
pub async fn similar_keys_are_isolated(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("similar_keys_are_isolated");
    let suffixes: Vec<String> = [
        "a",
        "ab",
        "a:",
        "a.",
        "A",
        "AB",
        "\u{e4}",
        "a\u{308}",
        "\u{65e5}\u{672c}",
        "\u{1f511}",
        "a b",
        "a*",
        "a?",
        "a[b]",
        "{a}",
        "{a}b",
        "a%20",
        "a/b",
        "a\\b",
        "a|b",
        "a;b=c",
        "'a'",
        "\"a\"",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(["k".repeat(1000), format!("{}x", "k".repeat(1000))])
    .collect();
    let mut all: Vec<_> = suffixes.iter().map(|s| keys.raw(s)).collect();
    all.extend(["scope-a", "scope-A", "scope-a2"].map(|s| keys.key(s)));
    let at = now() + LONG;
    let tokens: Vec<_> = (0..all.len())
        .map(|i| {
            token_expiring_at(
                format!("conformance-isolated-{i}"),
                at + Duration::from_secs(i as u64),
            )
        })
        .collect();

    for (key, token) in all.iter().zip(&tokens) {
        store
            .put(key, token)
            .await
            .or_fail(format_args!("put on key {key:?}"))?;
    }
    for (key, token) in all.iter().zip(&tokens) {
        expect_token(store, key, token, &format!("of key {key:?}")).await?;
    }

    let mut leases = Vec::with_capacity(all.len());
    for key in &all {
        let lease = store
            .try_acquire_lease(key, LONG)
            .await
            .or_fail(format_args!("lease of key {key:?}"))?;
        match lease {
            Some(l) => leases.push(l),
            None => {
                fail!("the lease of key {key:?} was refused: a lease on a similar key blocks it")
            }
        }
    }
    for (key, lease) in all.iter().zip(&leases) {
        let released = store
            .release_lease(key, lease)
            .await
            .or_fail(format_args!("release on key {key:?}"))?;
        ensure!(
            released,
            "the lease of key {key:?} could not be released by its holder"
        );
    }

    for key in all.iter().step_by(2) {
        store
            .remove(key)
            .await
            .or_fail(format_args!("remove of key {key:?}"))?;
    }
    for (i, (key, token)) in all.iter().zip(&tokens).enumerate() {
        if i % 2 == 0 {
            expect_none(store, key, &format!("of removed key {key:?}")).await?;
        } else {
            expect_token(
                store,
                key,
                token,
                &format!("of key {key:?} after similar keys were removed"),
            )
            .await?;
        }
    }
    Ok(())
}

/// `invalidate` removes the token only when it is the rejected one: a
/// different token is kept and `false` returned; the rejected one is
/// removed and `true` returned, once; a missing key is `false`.
pub async fn invalidate_removes_only_the_rejected_token(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("invalidate_removes_only_the_rejected_token");
    let key = keys.key("k");
    let stored = token_expiring_in("conformance-stored", LONG);
    let other = token_expiring_at("conformance-other", stored.expires_at().unwrap_or_else(now));
    store.put(&key, &stored).await.or_fail("put")?;

    let removed = store
        .invalidate(&key, &other)
        .await
        .or_fail("invalidate of a token that is not stored")?;
    ensure!(
        !removed,
        "invalidate of a token that is not the stored one returned true"
    );
    expect_token(
        store,
        &key,
        &stored,
        "after invalidate of a different token",
    )
    .await?;

    let removed = store
        .invalidate(&key, &stored)
        .await
        .or_fail("invalidate of the stored token")?;
    ensure!(removed, "invalidate of the stored token returned false");
    expect_none(store, &key, "after invalidate of the stored token").await?;

    let again = store
        .invalidate(&key, &stored)
        .await
        .or_fail("a second invalidate")?;
    ensure!(
        !again,
        "a second invalidate of the same token returned true"
    );
    let missing = keys.key("never-written");
    let removed = store
        .invalidate(&missing, &stored)
        .await
        .or_fail("invalidate of a key never written")?;
    ensure!(!removed, "invalidate of a key never written returned true");
    Ok(())
}

/// After a newer token replaced the rejected one, `invalidate` of the
/// rejected token keeps the newer one: a burst of 401s for an old token
/// never drops its replacement.
pub async fn invalidate_spares_a_newer_token(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("invalidate_spares_a_newer_token").key("k");
    let rejected = token_expiring_in("conformance-rejected", LONG);
    let newer = token_expiring_in("conformance-replacement", LONG * 2);
    store
        .put(&key, &rejected)
        .await
        .or_fail("put of the first token")?;
    store
        .put(&key, &newer)
        .await
        .or_fail("put of its replacement")?;
    let removed = store
        .invalidate(&key, &rejected)
        .await
        .or_fail("invalidate of the replaced token")?;
    ensure!(
        !removed,
        "invalidate of a token that was already replaced returned true"
    );
    expect_token(
        store,
        &key,
        &newer,
        "after invalidate of the replaced token",
    )
    .await
}

/// A 64 KiB secret, a 16 KiB refresh token and a 4 KiB scope round-trip.
pub async fn large_values_round_trip(fx: &Fixture) -> Result<(), CheckFailure> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let text = |len: usize, salt: usize| -> String {
        (0..len)
            .map(|i| char::from(ALPHABET[(i * 7 + i / 13 + salt) % ALPHABET.len()]))
            .collect()
    };
    let mut scope = String::with_capacity(4200);
    for i in 0.. {
        if scope.len() >= 4096 {
            break;
        }
        scope.push_str(&format!("scope.{i} "));
    }
    scope.truncate(4095);
    scope.push('z');
    let token = full_token(text(64 * 1024, 0))
        .with_refresh_token(text(16 * 1024, 3))
        .with_scope(scope);
    let store = &**fx.store();
    let key = Keys::new("large_values_round_trip").key("large");
    store
        .put(&key, &token)
        .await
        .or_fail("put of a large token")?;
    expect_token(store, &key, &token, "of a large token").await
}

/// Secrets, refresh tokens and scopes with non-ASCII text and characters
/// that break hand-made serialisation (quotes, backslashes, braces)
/// round-trip.
pub async fn unicode_values_round_trip(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("unicode_values_round_trip");
    let values = [
        "t\u{f6}k\u{e9}n-\u{79d8}\u{5bc6}-\u{30c8}\u{30fc}\u{30af}\u{30f3}-\u{1f510}-\u{3a9}\u{2248}\u{e7}\u{221a}-a\u{301}",
        "quote\" back\\slash {\"json\": [1]} <xml/> 'single' ; = | %",
        "\u{feff}bom-and-rtl-\u{202e}-\u{5d0}\u{5d1}\u{5d2}",
    ];
    for (i, value) in values.iter().enumerate() {
        let token = full_token(*value)
            .with_refresh_token(format!("refresh-{value}"))
            .with_scope(format!("scope:{value}"));
        let key = keys.key(&format!("unicode-{i}"));
        store
            .put(&key, &token)
            .await
            .or_fail(format_args!("put of unicode value {i}"))?;
        expect_token(store, &key, &token, &format!("of unicode value {i}")).await?;
    }
    Ok(())
}

/// The store works through `Box<dyn CacheStore>`: put, get, invalidate,
/// remove, a lease, capabilities and stats all reach the store.
pub async fn works_through_box_dyn(fx: &Fixture) -> Result<(), CheckFailure> {
    let boxed: Box<dyn CacheStore> = Box::new(Arc::clone(fx.store()));
    through_wrapper(&*boxed, fx, "Box<dyn CacheStore>").await
}

/// The store works through `Arc<dyn CacheStore>` (around a `Box<dyn
/// CacheStore>`, so both forwarding impls are crossed).
pub async fn works_through_arc_dyn(fx: &Fixture) -> Result<(), CheckFailure> {
    let boxed: Box<dyn CacheStore> = Box::new(Arc::clone(fx.store()));
    let arc: Arc<dyn CacheStore> = Arc::new(boxed);
    through_wrapper(&arc, fx, "Arc<dyn CacheStore>").await
}

async fn through_wrapper<S: CacheStore + ?Sized>(
    wrapped: &S,
    fx: &Fixture,
    name: &str,
) -> Result<(), CheckFailure> {
    let keys = Keys::new(&format!("works_through_{name}"));
    ensure!(
        wrapped.capabilities() == fx.capabilities(),
        "capabilities through {name} ({:?}) differ from the store's ({:?})",
        wrapped.capabilities(),
        fx.capabilities()
    );
    ensure!(
        wrapped.stats() == fx.store().stats(),
        "stats through {name} differ from the store's"
    );
    round_trip(wrapped, &keys)
        .await
        .map_err(|f| f.context(format!("through {name}")))?;

    let minimal = keys.key("minimal");
    let Some(stored) = fx.store().get(&minimal).await.or_fail("get on the store")? else {
        fail!("a token put through {name} was not visible to the store itself")
    };
    let removed = wrapped
        .invalidate(&minimal, &stored)
        .await
        .or_fail(format_args!("invalidate through {name}"))?;
    ensure!(
        removed,
        "invalidate of the stored token through {name} returned false"
    );
    expect_none(
        &**fx.store(),
        &minimal,
        &format!("on the store after invalidate through {name}"),
    )
    .await?;

    let key = keys.key("full");
    wrapped
        .remove(&key)
        .await
        .or_fail(format_args!("remove through {name}"))?;
    expect_none(
        &**fx.store(),
        &key,
        &format!("on the store after remove through {name}"),
    )
    .await?;

    let lease = wrapped
        .try_acquire_lease(&key, LONG)
        .await
        .or_fail(format_args!("lease through {name}"))?;
    let Some(lease) = lease else {
        fail!("the lease of a fresh key was refused through {name}")
    };
    let again = fx
        .store()
        .try_acquire_lease(&key, LONG)
        .await
        .or_fail("lease on the store")?;
    ensure!(
        again.is_none(),
        "a lease taken through {name} was not visible to the store itself"
    );
    let released = wrapped
        .release_lease(&key, &lease)
        .await
        .or_fail(format_args!("release through {name}"))?;
    ensure!(
        released,
        "the holder could not release its lease through {name}"
    );
    let got = fx.store().get(&key).await.or_fail("final get")?;
    ensure!(
        got.is_none(),
        "after remove through {name} the store still returned a {}",
        ShownOpt(&got)
    );
    Ok(())
}
