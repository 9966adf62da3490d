//! Many tasks on one store at once: newer-wins stays atomic, values are
//! never torn, keys never bleed into each other, handles share data, and a
//! shared store's invalidate is atomic and reaches the other instances.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use token_core::backend::{StoreEvent, TokenFingerprint};
use token_core::{AccessToken, CacheKey, CacheStore, PutOutcome};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Barrier;

use crate::failure::{CheckFailure, OrFail};
use crate::fixture::Fixture;
use crate::support::{
    expect_none, expect_token, join_all, now, same_token, show_secret, show_time, spawn,
    token_expiring_in, Keys, Shown, LONG,
};
use crate::{ensure, fail};

crate::harness::theme_checks! {
    concurrency:
    concurrent_puts_keep_the_latest_expiry,
    concurrent_distinct_keys_do_not_interfere,
    second_handle_shares_tokens,
    invalidate_is_atomic,
    invalidate_notifies_other_handles,
}

/// Writer tasks in [`concurrent_puts_keep_the_latest_expiry`].
const WRITERS: usize = 32;
/// Puts per writer task.
const PUTS_PER_WRITER: usize = 20;

/// The token writer `task` puts in round `round`: its expiry is unique and
/// grows with the round, and everything about it can be recomputed from its
/// secret, so a torn value (the secret of one put with the times of another)
/// is detected.
fn numbered_token(base: SystemTime, task: usize, round: usize) -> AccessToken {
    let n = (round * WRITERS + task) as u64;
    let expires_at = base + Duration::from_secs(n);
    // Secrets of different lengths, so a value cut or spliced shows.
    let padding = "p".repeat((task * 7 + round * 3) % 40);
    AccessToken::new(format!("conformance-{task}-{round}-{padding}"), base - LONG)
        .with_expires_at(expires_at)
        .with_refresh_at(expires_at - Duration::from_secs(600))
        .with_scope(format!("task.{task} round.{round}"))
}

/// Recomputes the token named by `token`'s secret and fails unless every
/// field matches; returns its expiry.
fn check_consistent(base: SystemTime, token: &AccessToken) -> Result<SystemTime, CheckFailure> {
    let secret = token.secret().expose();
    let mut parts = secret
        .strip_prefix("conformance-")
        .unwrap_or("")
        .splitn(3, '-');
    let task = parts.next().and_then(|p| p.parse::<usize>().ok());
    let round = parts.next().and_then(|p| p.parse::<usize>().ok());
    let (Some(task), Some(round)) = (task, round) else {
        fail!(
            "get returned a token whose secret was never put: {}",
            show_secret(token)
        )
    };
    if task >= WRITERS || round >= PUTS_PER_WRITER {
        fail!(
            "get returned a token whose secret was never put: {}",
            show_secret(token)
        );
    }
    let expected = numbered_token(base, task, round);
    same_token(&expected, token).map_err(|f| f.context("get returned a torn or altered token"))?;
    Ok(expected.expires_at().unwrap_or(base))
}

/// 32 tasks each put 20 tokens on one key and read it back after every
/// put: even tasks in order of growing expiry, odd tasks newest first (so
/// a store that lets any put overwrite is caught by an odd task reading
/// back an older token, however the tasks happen to be scheduled). Every
/// get returns a whole token that was put, at least as new as the task's
/// own last put and as anything the task read before; at the end the key
/// holds the token with the latest expiry.
pub async fn concurrent_puts_keep_the_latest_expiry(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = Arc::clone(fx.store());
    let key = Keys::new("concurrent_puts_keep_the_latest_expiry").key("k");
    // Whole seconds, so that millisecond rounding never reorders tokens.
    let secs = now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = UNIX_EPOCH + Duration::from_secs(secs) + LONG;
    let barrier = Arc::new(Barrier::new(WRITERS));

    let tasks = (0..WRITERS)
        .map(|task| {
            let (store, key, barrier) = (Arc::clone(&store), key.clone(), Arc::clone(&barrier));
            spawn(async move {
                barrier.wait().await;
                let mut last_seen = UNIX_EPOCH;
                let rounds: Vec<usize> = if task % 2 == 0 {
                    (0..PUTS_PER_WRITER).collect()
                } else {
                    (0..PUTS_PER_WRITER).rev().collect()
                };
                for round in rounds {
                    let token = numbered_token(base, task, round);
                    let own = token.expires_at().unwrap_or(base);
                    let outcome = store.put(&key, &token).await.or_fail(format_args!("put in round {round}"))?;
                    let Some(got) = store.get(&key).await.or_fail(format_args!("get in round {round}"))? else {
                        fail!("round {round}: get after a completed put returned nothing")
                    };
                    let seen = check_consistent(base, &got).map_err(|f| f.context(format!("round {round}")))?;
                    ensure!(
                        seen >= own,
                        "round {round}: after its own put completed, get returned an older {} (own put expires at {})",
                        Shown(&got),
                        show_time(Some(own))
                    );
                    ensure!(
                        seen >= last_seen,
                        "round {round}: get returned an older {} than an earlier get on this task (expiring at {})",
                        Shown(&got),
                        show_time(Some(last_seen))
                    );
                    if outcome == PutOutcome::KeptNewer {
                        ensure!(
                            seen > own,
                            "round {round}: put said KeptNewer, but the stored token is not newer than the put one"
                        );
                    }
                    last_seen = seen;
                }
                Ok(())
            })
        })
        .collect();
    join_all(tasks).await?;

    let latest = numbered_token(base, WRITERS - 1, PUTS_PER_WRITER - 1);
    expect_token(&*store, &key, &latest, "after all concurrent puts").await
}

/// 16 tasks, each with its own key, put, read and remove concurrently:
/// each only ever sees its own tokens.
pub async fn concurrent_distinct_keys_do_not_interfere(fx: &Fixture) -> Result<(), CheckFailure> {
    const TASKS: usize = 16;
    const ROUNDS: usize = 25;
    let keys = Keys::new("concurrent_distinct_keys_do_not_interfere");
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(fx.store());
            let key: CacheKey = keys.key(&format!("task-{task}"));
            let barrier = Arc::clone(&barrier);
            spawn(async move {
                barrier.wait().await;
                for round in 0..ROUNDS {
                    let token = token_expiring_in(format!("conformance-key-{task}-{round}"), LONG)
                        .with_scope(format!("task.{task}"));
                    store
                        .put(&key, &token)
                        .await
                        .or_fail(format_args!("put in round {round}"))?;
                    expect_token(
                        &*store,
                        &key,
                        &token,
                        &format!("of this task's key in round {round}"),
                    )
                    .await?;
                    if round % 5 == 4 {
                        store
                            .remove(&key)
                            .await
                            .or_fail(format_args!("remove in round {round}"))?;
                        expect_none(&*store, &key, &format!("after remove in round {round}"))
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    join_all(tasks).await?;
    Ok(())
}

/// A second handle on the same data sees the first's tokens, newer-wins
/// holds across handles, and a remove on one is seen by the other.
pub async fn second_handle_shares_tokens(fx: &Fixture) -> Result<(), CheckFailure> {
    let b = &**fx.require_second()?;
    let a = &**fx.store();
    let key = Keys::new("second_handle_shares_tokens").key("k");
    let newer = token_expiring_in("conformance-shared-newer", LONG * 2);
    let older = token_expiring_in("conformance-shared-older", LONG);

    a.put(&key, &newer)
        .await
        .or_fail("put on the first handle")?;
    expect_token(
        b,
        &key,
        &newer,
        "on the second handle after a put on the first",
    )
    .await?;
    let outcome = b
        .put(&key, &older)
        .await
        .or_fail("put of an older token on the second handle")?;
    ensure!(
        outcome == PutOutcome::KeptNewer,
        "an older put on the second handle returned {outcome:?}, expected KeptNewer"
    );
    expect_token(
        a,
        &key,
        &newer,
        "on the first handle after an older put on the second",
    )
    .await?;
    b.remove(&key)
        .await
        .or_fail("remove on the second handle")?;
    expect_none(a, &key, "on the first handle after remove on the second").await?;
    let got = b
        .get(&key)
        .await
        .or_fail("get on the second handle after remove")?;
    if let Some(t) = got {
        fail!(
            "get on the second handle after its own remove returned a {}",
            Shown(&t)
        );
    }
    Ok(())
}

/// For a shared store, `invalidate` is one atomic compare-and-delete:
/// 20 concurrent invalidations of the stored token report exactly one
/// removal, and an invalidation racing the put of a newer token (from
/// another handle when the fixture has one) never removes the newer token.
pub async fn invalidate_is_atomic(fx: &Fixture) -> Result<(), CheckFailure> {
    fx.require_shared(
        "CacheStore::invalidate may then read, compare and remove in three steps, so \
         atomicity is not required",
    )?;
    let a = Arc::clone(fx.store());
    let b = Arc::clone(fx.second().unwrap_or(fx.store()));
    let keys = Keys::new("invalidate_is_atomic");

    const INVALIDATORS: usize = 20;
    let key = keys.key("burst");
    let token = token_expiring_in("conformance-burst", LONG);
    a.put(&key, &token).await.or_fail("put")?;
    let barrier = Arc::new(Barrier::new(INVALIDATORS));
    let tasks = (0..INVALIDATORS)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let (key, token, barrier) = (key.clone(), token.clone(), Arc::clone(&barrier));
            spawn(async move {
                barrier.wait().await;
                store
                    .invalidate(&key, &token)
                    .await
                    .or_fail("a concurrent invalidate")
            })
        })
        .collect();
    let removals = join_all(tasks)
        .await?
        .into_iter()
        .filter(|&removed| removed)
        .count();
    ensure!(
        removals == 1,
        "{removals} of {INVALIDATORS} concurrent invalidations of one stored token reported a removal, \
         expected exactly 1"
    );
    expect_none(&*a, &key, "after concurrent invalidations").await?;

    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let key = keys.key(&format!("race-{round}"));
        let rejected = token_expiring_in(format!("conformance-rejected-{round}"), LONG);
        let newer = token_expiring_in(format!("conformance-newer-{round}"), LONG * 2);
        a.put(&key, &rejected)
            .await
            .or_fail("put of the rejected token")?;
        let barrier = Arc::new(Barrier::new(2));
        let invalidate = {
            let (store, key, barrier) = (Arc::clone(&a), key.clone(), Arc::clone(&barrier));
            spawn(async move {
                barrier.wait().await;
                store
                    .invalidate(&key, &rejected)
                    .await
                    .or_fail("invalidate")
            })
        };
        let put = {
            let (store, key, newer, barrier) =
                (Arc::clone(&b), key.clone(), newer.clone(), barrier);
            spawn(async move {
                barrier.wait().await;
                store
                    .put(&key, &newer)
                    .await
                    .or_fail("put of the newer token")
            })
        };
        join_all(vec![invalidate]).await?;
        join_all(vec![put]).await?;
        expect_token(
            &*a,
            &key,
            &newer,
            &format!("in round {round} after invalidate raced a newer put"),
        )
        .await?;
    }
    Ok(())
}

/// For a shared store that offers events, `invalidate` on one handle
/// reaches a subscriber on the other as `StoreEvent::Invalidated` with the
/// caller's key and the rejected token's fingerprint.
pub async fn invalidate_notifies_other_handles(fx: &Fixture) -> Result<(), CheckFailure> {
    fx.require_shared("events are for instances that share a store")?;
    let b = fx.require_second()?;
    let Some(mut events) = b.subscribe() else {
        return Err(CheckFailure::skipped(
            "the store offers no events (subscribe() returns None): other instances drop an \
             invalidated token only when it expires",
        ));
    };
    let a = &**fx.store();
    let key = Keys::new("invalidate_notifies_other_handles").key("k");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut invalidated = HashSet::new();
    let mut other_keys = Vec::new();
    // A subscription may take a moment to reach the server: invalidate
    // again (a fresh token each time) until an event arrives.
    for attempt in 0u32.. {
        let token = token_expiring_in(format!("conformance-event-{attempt}"), LONG);
        a.put(&key, &token).await.or_fail("put")?;
        let removed = a.invalidate(&key, &token).await.or_fail("invalidate")?;
        ensure!(removed, "invalidate of the stored token returned false");
        invalidated.insert(TokenFingerprint::of(&token));
        let wait_until = Instant::now() + Duration::from_millis(500);
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Ok(StoreEvent::Invalidated {
                    key: k,
                    fingerprint,
                })) if k == key => {
                    ensure!(
                        invalidated.contains(&fingerprint),
                        "the event for the key carries {fingerprint:?}, the fingerprint of no invalidated token"
                    );
                    return Ok(());
                }
                Ok(Ok(StoreEvent::Invalidated { key: k, .. })) => {
                    if other_keys.len() < 5 {
                        other_keys.push(k);
                    }
                }
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => fail!("the event subscription closed"),
                Err(_) => break,
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no Invalidated event for {key:?} reached the second handle within 10 s \
             (events seen for other keys: {other_keys:?})"
        );
    }
    fail!("ran out of attempts to observe an event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_tokens_are_recognised_and_ordered() {
        let base = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let a = numbered_token(base, 3, 4);
        let b = numbered_token(base, 2, 5);
        assert_eq!(check_consistent(base, &a).unwrap(), a.expires_at().unwrap());
        assert!(b.expires_at() > a.expires_at());
        let torn = AccessToken::new(a.secret().expose(), a.obtained_at())
            .with_expires_at(b.expires_at().unwrap())
            .with_refresh_at(a.refresh_at().unwrap())
            .with_scope(a.scope().unwrap());
        assert!(check_consistent(base, &torn).is_err());
        let foreign = token_expiring_in("conformance-99-1-", LONG);
        assert!(check_consistent(base, &foreign).is_err());
    }
}
