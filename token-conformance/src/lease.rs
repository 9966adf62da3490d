//! The refresh lease: one holder per key, released only by its holder,
//! expiring after its TTL, independent of the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use token_core::{CacheKey, CacheStore, Lease};
use tokio::sync::Barrier;

use crate::failure::{CheckFailure, OrFail};
use crate::fixture::Fixture;
use crate::support::{expect_none, expect_token, join_all, spawn, token_expiring_in, Keys, LONG};
use crate::{ensure, fail};

crate::harness::theme_checks! {
    lease:
    lease_second_acquire_fails_while_held,
    lease_release_by_non_holder_is_refused,
    lease_release_by_holder_frees_it,
    lease_exclusive_under_contention,
    lease_expires_after_holder_dies,
    stale_holder_cannot_release_new_lease,
    lease_and_token_are_independent,
    lease_exclusive_across_handles,
    lease_contention_across_handles,
}

/// How many tasks race for one lease.
const CONTENDERS: usize = 50;

/// The TTL of leases whose expiry is checked.
const SHORT_TTL: Duration = Duration::from_millis(400);

/// How long past a lease's TTL the checks wait before expecting it gone.
const EXPIRY_MARGIN: Duration = Duration::from_millis(250);

/// Takes `key`'s lease, failing when it is refused.
async fn acquire<S: CacheStore + ?Sized>(
    store: &S,
    key: &CacheKey,
    ttl: Duration,
    when: &str,
) -> Result<Lease, CheckFailure> {
    match store
        .try_acquire_lease(key, ttl)
        .await
        .or_fail(format_args!("lease {when}"))?
    {
        Some(lease) => Ok(lease),
        None => fail!("the lease was refused {when}, but nobody held it"),
    }
}

/// Fails unless `key`'s lease is refused.
async fn expect_held<S: CacheStore + ?Sized>(
    store: &S,
    key: &CacheKey,
    when: &str,
) -> Result<(), CheckFailure> {
    let lease = store
        .try_acquire_lease(key, LONG)
        .await
        .or_fail(format_args!("lease {when}"))?;
    ensure!(
        lease.is_none(),
        "the lease was granted {when}, but another holder still held it"
    );
    Ok(())
}

/// Releases `lease`, failing unless the store says it did.
async fn release<S: CacheStore + ?Sized>(
    store: &S,
    key: &CacheKey,
    lease: &Lease,
    when: &str,
) -> Result<(), CheckFailure> {
    let released = store
        .release_lease(key, lease)
        .await
        .or_fail(format_args!("release {when}"))?;
    ensure!(released, "the holder's release returned false {when}");
    Ok(())
}

/// While a lease is held, another acquire of the same key is refused.
pub async fn lease_second_acquire_fails_while_held(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("lease_second_acquire_fails_while_held").key("k");
    let lease = acquire(store, &key, LONG, "of a fresh key").await?;
    expect_held(store, &key, "a second time").await?;
    expect_held(store, &key, "a third time").await?;
    release(store, &key, &lease, "at the end").await
}

/// A release with a lease that is not the holder's returns `false` and
/// leaves the lease held; so does a release where no lease is held.
pub async fn lease_release_by_non_holder_is_refused(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("lease_release_by_non_holder_is_refused");
    let free = keys.key("free");
    let released = store
        .release_lease(&free, &Lease::new_random())
        .await
        .or_fail("release of a free key")?;
    ensure!(!released, "release of a key nobody leased returned true");

    let key = keys.key("held");
    let lease = acquire(store, &key, LONG, "of a fresh key").await?;
    let owner = lease.owner();
    let mut impostors = vec![
        Lease::new_random(),
        Lease::from_owner(""),
        Lease::from_owner(format!("{owner}x")),
    ];
    if let Some((cut, _)) = owner.char_indices().last() {
        impostors.push(Lease::from_owner(&owner[..cut]));
    }
    for impostor in &impostors {
        let released = store
            .release_lease(&key, impostor)
            .await
            .or_fail("release by a non-holder")?;
        ensure!(
            !released,
            "release by a non-holder ({impostor:?}, holder {lease:?}) returned true"
        );
        expect_held(
            store,
            &key,
            &format!("after a refused release by {impostor:?}"),
        )
        .await?;
    }
    let on_other_key = store
        .release_lease(&free, &lease)
        .await
        .or_fail("release on another key")?;
    ensure!(
        !on_other_key,
        "the holder's lease released a different key that nobody held"
    );
    expect_held(
        store,
        &key,
        "after the holder's lease was used on another key",
    )
    .await?;
    release(store, &key, &lease, "by the holder").await
}

/// After the holder releases its lease, a second release returns `false`
/// and the next acquire succeeds.
pub async fn lease_release_by_holder_frees_it(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("lease_release_by_holder_frees_it").key("k");
    let first = acquire(store, &key, LONG, "of a fresh key").await?;
    release(store, &key, &first, "by the holder").await?;
    let again = store
        .release_lease(&key, &first)
        .await
        .or_fail("a second release")?;
    ensure!(!again, "a second release of the same lease returned true");
    let second = acquire(store, &key, LONG, "after the holder released it").await?;
    let stale = store
        .release_lease(&key, &first)
        .await
        .or_fail("release by the earlier holder")?;
    ensure!(!stale, "the earlier holder released the new holder's lease");
    expect_held(store, &key, "after the earlier holder tried to release it").await?;
    release(store, &key, &second, "by the new holder").await
}

/// Races `CONTENDERS` tasks (spread over `handles`) for `key`'s lease and
/// returns the leases that were granted, with the index of the handle that
/// granted each.
async fn contend(
    handles: &[Arc<dyn CacheStore>],
    key: &CacheKey,
) -> Result<Vec<(usize, Lease)>, CheckFailure> {
    let barrier = Arc::new(Barrier::new(CONTENDERS));
    let tasks = (0..CONTENDERS)
        .map(|i| {
            let handle = i % handles.len();
            let store = Arc::clone(&handles[handle]);
            let barrier = Arc::clone(&barrier);
            let key = key.clone();
            spawn(async move {
                barrier.wait().await;
                let lease = store
                    .try_acquire_lease(&key, LONG)
                    .await
                    .or_fail("a contended lease")?;
                Ok(lease.map(|l| (handle, l)))
            })
        })
        .collect();
    Ok(join_all(tasks).await?.into_iter().flatten().collect())
}

/// Races for the lease twice (the winner releases in between, through the
/// handle that granted it) and checks that each race has exactly one
/// winner.
async fn contention_rounds(
    handles: &[Arc<dyn CacheStore>],
    key: &CacheKey,
) -> Result<(), CheckFailure> {
    let mut previous: Option<Lease> = None;
    for round in 1..=2 {
        let winners = contend(handles, key).await?;
        ensure!(
            winners.len() == 1,
            "round {round}: {} of {CONTENDERS} concurrent acquires of one free lease succeeded, expected exactly 1",
            winners.len()
        );
        let (handle, winner) = &winners[0];
        if let Some(prev) = &previous {
            ensure!(
                prev != winner,
                "round {round}: the new winner got the same lease value as the previous holder"
            );
        }
        for (i, other) in handles.iter().enumerate() {
            expect_held(&**other, key, &format!("on handle {i} after round {round}")).await?;
        }
        release(
            &*handles[*handle],
            key,
            winner,
            &format!("by the winner of round {round}"),
        )
        .await?;
        previous = Some(winner.clone());
    }
    Ok(())
}

/// 50 tasks that try to take the same free lease at once: exactly one
/// wins; after it releases, another race again has exactly one winner.
pub async fn lease_exclusive_under_contention(fx: &Fixture) -> Result<(), CheckFailure> {
    let key = Keys::new("lease_exclusive_under_contention").key("k");
    contention_rounds(&[Arc::clone(fx.store())], &key).await
}

/// A holder that never releases (it died) blocks others only until the
/// lease's TTL passes; then another caller takes it.
pub async fn lease_expires_after_holder_dies(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("lease_expires_after_holder_dies").key("k");
    let started = Instant::now();
    let _dead = acquire(store, &key, SHORT_TTL, "with a short TTL").await?;
    let granted = Instant::now();
    let early = store
        .try_acquire_lease(&key, LONG)
        .await
        .or_fail("lease while the first is live")?;
    // A lease granted again after the TTL may have passed on a slow machine
    // proves nothing; before it, it is a broken lease.
    if started.elapsed() < SHORT_TTL {
        ensure!(
            early.is_none(),
            "the lease was granted again before its holder's TTL passed"
        );
    }
    if let Some(lease) = early {
        return release(store, &key, &lease, "of the late second lease").await;
    }
    tokio::time::sleep_until((granted + SHORT_TTL + EXPIRY_MARGIN).into()).await;
    let next = acquire(store, &key, LONG, "after the dead holder's TTL passed").await?;
    release(store, &key, &next, "by the next holder").await
}

/// A holder whose lease expired and was taken by another cannot release
/// the new holder's lease.
pub async fn stale_holder_cannot_release_new_lease(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("stale_holder_cannot_release_new_lease").key("k");
    let stale = acquire(store, &key, SHORT_TTL, "with a short TTL").await?;
    let granted = Instant::now();
    tokio::time::sleep_until((granted + SHORT_TTL + EXPIRY_MARGIN).into()).await;
    let current = acquire(store, &key, LONG, "after the first lease expired").await?;
    ensure!(
        current != stale,
        "the new holder got the same lease value as the expired holder"
    );
    let released = store
        .release_lease(&key, &stale)
        .await
        .or_fail("release by the expired holder")?;
    ensure!(
        !released,
        "the expired holder's release returned true while another held the lease"
    );
    expect_held(store, &key, "after the expired holder tried to release it").await?;
    release(store, &key, &current, "by the current holder").await
}

/// Lease and token do not affect each other: a lease hides no token and
/// creates none, `remove` drops no lease, a release drops no token.
pub async fn lease_and_token_are_independent(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("lease_and_token_are_independent").key("k");
    let lease = acquire(store, &key, LONG, "of a fresh key").await?;
    expect_none(store, &key, "of a key that only has a lease").await?;

    let token = token_expiring_in("conformance-leased", LONG);
    store
        .put(&key, &token)
        .await
        .or_fail("put while the lease is held")?;
    expect_token(store, &key, &token, "while the lease is held").await?;

    store
        .remove(&key)
        .await
        .or_fail("remove while the lease is held")?;
    expect_none(store, &key, "after remove while the lease is held").await?;
    expect_held(store, &key, "after the token was removed").await?;

    store
        .put(&key, &token)
        .await
        .or_fail("second put while the lease is held")?;
    release(store, &key, &lease, "by the holder").await?;
    expect_token(store, &key, &token, "after the lease was released").await?;
    let next = acquire(store, &key, LONG, "after release, with a token stored").await?;
    release(store, &key, &next, "at the end").await
}

/// Through a second handle on the same data, a held lease is refused, a
/// non-holder cannot release it, and once released it can be taken.
pub async fn lease_exclusive_across_handles(fx: &Fixture) -> Result<(), CheckFailure> {
    let b = &**fx.require_second()?;
    let a = &**fx.store();
    let key = Keys::new("lease_exclusive_across_handles").key("k");
    let lease = acquire(a, &key, LONG, "on the first handle").await?;
    expect_held(b, &key, "on the second handle while the first holds it").await?;
    let released = b
        .release_lease(&key, &Lease::new_random())
        .await
        .or_fail("release by a non-holder")?;
    ensure!(
        !released,
        "a non-holder released the lease through the second handle"
    );
    expect_held(b, &key, "on the second handle after a refused release").await?;
    release(a, &key, &lease, "by the holder on the first handle").await?;
    let other = acquire(b, &key, LONG, "on the second handle after release").await?;
    expect_held(a, &key, "on the first handle while the second holds it").await?;
    release(b, &key, &other, "by the holder on the second handle").await
}

/// 50 tasks spread over two handles on the same data race for one lease:
/// exactly one wins, twice.
pub async fn lease_contention_across_handles(fx: &Fixture) -> Result<(), CheckFailure> {
    let second = Arc::clone(fx.require_second()?);
    let key = Keys::new("lease_contention_across_handles").key("k");
    contention_rounds(&[Arc::clone(fx.store()), second], &key).await
}
