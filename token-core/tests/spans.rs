//! The engine's `tracing` spans, which an OpenTelemetry layer exports as
//! traces: `tokencache.obtain` (a miss) or `tokencache.refresh` (refresh
//! ahead) per flight, `tokencache.lease_wait` while another instance holds
//! the refresh lease, and `tokencache.fetch` around each IdP call, each
//! with the cache's `profile` name (its metrics name) and no secret.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use token_core::*;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// One span opened: its name, its parent's name and its fields as text.
type Opened = (String, Option<String>, String);

/// Every span opened.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Opened>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?};", field.name(), value));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), parent, fields.0));
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<(Option<String>, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, p, f)| (p.clone(), f.clone()))
            .collect()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn fetch_refresh_and_lease_wait_are_spans_named_by_profile() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store: Arc<dyn CacheStore> = Arc::new(SharedStore::default());
    let make = |name: &str| {
        TokenCache::builder(idp.clone())
            .clock(clock.clone())
            .store_arc(store.clone())
            .metrics_name(name)
            .build()
    };
    let (a, b) = (make("orders"), make("orders-b"));
    assert_eq!(a.metrics_name(), "orders");
    assert!(!a.set_metrics_name("other"), "the first name stays");
    let req = TokenRequest::builder()
        .scope("orders.read")
        .secret_param("client_assertion", "assertion-param-secret")
        .build();
    let gate = idp.gate();

    // Cold: `a` fetches under the lease while `b` waits for it.
    let ta = tokio::spawn({
        let (a, req) = (a.clone(), req.clone());
        async move { a.get_token(&req).await.map(|t| t.to_access_token()) }
    });
    let tb = tokio::spawn({
        let (b, req) = (b.clone(), req.clone());
        async move { b.get_token(&req).await.map(|t| t.to_access_token()) }
    });
    settle().await;
    gate.add_permits(1);
    idp.ungate();
    advance_until(&clock, Duration::from_millis(20), 500, || {
        ta.is_finished() && tb.is_finished()
    })
    .await;
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    assert_eq!(idp.calls(), 1);

    // Refresh ahead, in the background.
    clock.advance(Duration::from_secs(50 * 60));
    a.get_token(&req).await.unwrap();
    settle_until(|| idp.calls() == 2).await;
    settle().await;

    let obtain = spans.named("tokencache.obtain");
    assert!(
        obtain.iter().any(|(_, f)| f == "profile=\"orders\";"),
        "{obtain:?}"
    );
    let waits = spans.named("tokencache.lease_wait");
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0].0.as_deref(), Some("tokencache.obtain"));
    assert_eq!(waits[0].1, "profile=\"orders-b\";");
    let refresh = spans.named("tokencache.refresh");
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    assert_eq!(refresh[0].1, "profile=\"orders\";");
    let fetches = spans.named("tokencache.fetch");
    assert_eq!(fetches.len(), 2, "one per IdP call: {fetches:?}");
    assert!(fetches
        .iter()
        .any(|(p, _)| p.as_deref() == Some("tokencache.refresh")));
    assert!(fetches
        .iter()
        .any(|(p, _)| p.as_deref() == Some("tokencache.obtain")));
    let all = format!("{:?}", spans.0.lock().unwrap());
    assert!(!all.contains("assertion-param-secret"), "{all}");
}
