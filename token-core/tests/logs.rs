//! No secret reaches a log: every `tracing` event the engine emits, at
//! TRACE, through fetches, refreshes, failures, store outages, panics and
//! invalidations, is captured and searched for the secrets involved.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use token_core::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_any_log_event() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store: Arc<dyn CacheStore> = Arc::new(SharedStore::default());
    let make = |store: Arc<dyn CacheStore>| {
        TokenCache::builder(idp.clone())
            .clock(clock.clone())
            .store_arc(store)
            .build()
    };
    let (a, b) = (make(store.clone()), make(store.clone()));
    let req = TokenRequest::builder()
        .scope("orders.read")
        .actor(Actor::Assertion("user-assertion-secret".into()))
        .secret_param("client_assertion", "assertion-param-secret")
        .build();

    // Fetch, adopt from the store, refresh in the background.
    let first = a.get_token(&req).await.unwrap().to_access_token();
    b.get_token(&req).await.unwrap();
    clock.advance(Duration::from_secs(50 * 60));
    a.get_token(&req).await.unwrap();
    settle().await;
    // 401: invalidate here, reaching the other instance too.
    let current = a.get_token(&req).await.unwrap().to_access_token();
    a.invalidate(&req, &current).await;
    settle().await;
    // Failures: transient with backoff, permanent, a panic.
    idp.set_mode(Mode::Transient(Some(Duration::from_secs(3))));
    let _ = a.get_token(&req).await;
    clock.advance(Duration::from_secs(5));
    idp.set_mode(Mode::Permanent);
    let _ = a.get_token(&req).await;
    clock.advance(Duration::from_secs(120));
    idp.set_mode(Mode::Panic);
    let _ = a.get_token(&req).await;
    // A store that is down.
    idp.set_mode(Mode::Issue(Some(hour())));
    let dead = make(Arc::new(DeadStore::default()));
    dead.get_token(&req).await.unwrap();
    settle().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "fetching a token",
        "backing off",
        "panicked",
        "token store failed",
        "invalidated",
    ] {
        assert!(
            text.contains(expected),
            "no {expected:?} event was logged; the test proves nothing:\n{text}"
        );
    }
    for secret in [
        first.secret().expose(),
        current.secret().expose(),
        SECRET_PREFIX,
        "user-assertion-secret",
        "assertion-param-secret",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into the logs:\n{text}"
        );
    }
}
