//! Expiry is data: a token at or past its `expires_at` is never returned.

use std::time::Duration;

use token_core::{PutOutcome, StoreError};

use crate::failure::{CheckFailure, OrFail};
use crate::fixture::Fixture;
use crate::support::{
    expect_none, expect_token, now, same_token, sleep_until, token_expiring_at, token_expiring_in,
    Keys, LONG, TIME_TOLERANCE,
};
use crate::{ensure, fail};

crate::harness::theme_checks! {
    expiry:
    expired_token_is_never_returned,
    expired_put_keeps_the_valid_token,
    token_disappears_when_it_expires,
}

/// A token whose `expires_at` has already passed (or is exactly now) is
/// never returned, whether the put stores it or refuses it.
pub async fn expired_token_is_never_returned(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let keys = Keys::new("expired_token_is_never_returned");
    let cases = [
        ("an hour ago", now() - LONG),
        ("a second ago", now() - Duration::from_secs(1)),
        ("just now", now()),
    ];
    for (when, at) in cases {
        let key = keys.key(when);
        let token = token_expiring_at(format!("conformance-expired-{when}"), at);
        match store.put(&key, &token).await {
            Ok(_) | Err(StoreError::Rejected(_)) => {}
            Err(e) => fail!("put of a token that expired {when} failed with {e}; expected any outcome or Rejected"),
        }
        expect_none(
            store,
            &key,
            &format!("after put of a token that expired {when}"),
        )
        .await?;
    }
    Ok(())
}

/// Putting an already expired token over a valid one keeps the valid one
/// (it expires later, so newer-wins keeps it).
pub async fn expired_put_keeps_the_valid_token(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("expired_put_keeps_the_valid_token").key("k");
    let valid = token_expiring_in("conformance-valid", LONG);
    store
        .put(&key, &valid)
        .await
        .or_fail("put of a valid token")?;
    let expired = token_expiring_at("conformance-expired", now() - Duration::from_secs(5));
    match store.put(&key, &expired).await {
        Ok(PutOutcome::KeptNewer) | Err(StoreError::Rejected(_)) => {}
        Ok(other) => {
            fail!("put of an expired token over a valid one returned {other:?}, expected KeptNewer")
        }
        Err(e) => fail!("put of an expired token over a valid one failed with {e}"),
    }
    expect_token(
        store,
        &key,
        &valid,
        "after an expired token was put over a valid one",
    )
    .await
}

/// A token that expires in 1.5 s is returned before and never after, with
/// real time passing (no store may rely on its own TTL alone being exact),
/// and the key takes a new token afterwards.
pub async fn token_disappears_when_it_expires(fx: &Fixture) -> Result<(), CheckFailure> {
    let store = &**fx.store();
    let key = Keys::new("token_disappears_when_it_expires").key("k");
    let token = token_expiring_in("conformance-short-lived", Duration::from_millis(1500));
    let expires_at = token.expires_at().unwrap_or_else(now);
    store
        .put(&key, &token)
        .await
        .or_fail("put of a short-lived token")?;

    let got = store.get(&key).await.or_fail("get right after put")?;
    // Only a get that finished clearly before the expiry must see the token;
    // a very slow machine may legitimately miss it.
    if now() + TIME_TOLERANCE < expires_at {
        match got {
            Some(t) => same_token(&token, &t).map_err(|f| f.context("get right after put"))?,
            None => {
                fail!("get right after put returned nothing, but the token had not expired yet")
            }
        }
    }

    sleep_until(expires_at + Duration::from_millis(250)).await;
    expect_none(store, &key, "250 ms after the token expired").await?;

    let fresh = token_expiring_in("conformance-after-expiry", LONG);
    let outcome = store.put(&key, &fresh).await.or_fail("put after expiry")?;
    ensure!(
        outcome == PutOutcome::Stored,
        "put over an expired token returned {outcome:?}, expected Stored"
    );
    expect_token(store, &key, &fresh, "after a put over an expired token").await
}
