//! Per-caller token exchange ([`ExchangeCache`]) against the real
//! oidc-provider (`tests/idp/server.js`, client `obo-client`: it verifies the
//! subject tokens it minted and mints audience-bound tokens for the same
//! `sub`), and a private Redis shared by two caches (a fleet of two).
//!
//! Without node, the installed package or redis-server the tests skip
//! loudly; under `CI` that is a failure.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::stream::{self, StreamExt as _};
use token_core::{
    Actor, CacheKey, Credential as _, EncryptionKey, ExchangeGrant, ExchangeSubject, Keyring,
    RefreshPolicy, TokenCache, TokenRequest,
};
use token_http::{
    ExchangeCache, ExchangeError, ExchangeLayer, OAuthCredential, SubjectKey, SubjectProblem,
    ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE,
};
use token_redis::{RedisConfig, RedisStore};
use token_testkit::{Idp, RedisServer};

const SUBJECTS: usize = 10_000;
const AUDIENCE: &str = "https://orders.internal";

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

impl Captured {
    /// Captures this thread's events at TRACE (the tests run on a
    /// current-thread runtime, so every task's events are this thread's).
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Asserts that no subject token, nor its signature part, was logged.
    fn assert_free_of(&self, subjects: &[String]) {
        let text = self.text();
        for s in subjects {
            let sig = s.rsplit('.').next().unwrap();
            assert!(!text.contains(sig), "a subject token reached the logs");
        }
    }
}

/// The claims of a JWT (test tokens; the IdP signed them).
fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn credential(idp: &Idp) -> OAuthCredential {
    // Idle connections are dropped before node's 5 s keep-alive timeout
    // closes them under a request (reqwest keeps them 90 s by default).
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    OAuthCredential::client_credentials(idp.token_url(), "obo-client")
        .client_secret("obo-secret-value")
        .http_client(client)
        .build()
        .unwrap()
}

fn downstream() -> TokenRequest {
    TokenRequest::builder()
        .audience(AUDIENCE)
        .scope("orders.read")
        .build()
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_subjects_through_two_caches_on_one_redis_exchange_once_each() {
    let Some(idp) = Idp::shared() else { return };
    let Some(redis) = RedisServer::private() else {
        return;
    };
    let (logs, _guard) = Captured::start();
    let tokens = Arc::new(idp.subject_tokens("fleet", SUBJECTS, 3600));
    // One fleet: the same subject key and encryption key in both.
    let key_material = [7u8; 32];
    let keyring = || Keyring::new(EncryptionKey::from_bytes([9u8; 32]));
    let cache = |name: &str| {
        let store = RedisStore::connect_lazy(
            RedisConfig::new(redis.url())
                .with_key_prefix("exchange-test")
                .with_encryption(keyring())
                .with_command_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        let _ = name;
        ExchangeCache::builder(
            TokenCache::builder(credential(idp))
                .store(store)
                .policy(RefreshPolicy::default().with_store_timeout(Duration::from_secs(5))),
        )
        .subject_key(SubjectKey::from_bytes(&key_material).unwrap())
        .max_subjects(SUBJECTS)
        .rate_per_second(0)
        .build()
        .unwrap()
    };
    let (a, b) = (cache("a"), cache("b"));

    // Both instances ask for every subject at once, in opposite orders.
    let pass = |cache: ExchangeCache, order: Vec<usize>| {
        let tokens = Arc::clone(&tokens);
        async move {
            stream::iter(order)
                .map(|i| {
                    let cache = cache.clone();
                    let tokens = Arc::clone(&tokens);
                    async move {
                        // A connection the IdP closed while idle (node's
                        // keep-alive timeout) fails transiently: once more,
                        // as any caller would.
                        let t = match cache.exchange(&tokens[i], &downstream()).await {
                            Err(ExchangeError::Unavailable(e)) if e.is_transient() => {
                                cache.exchange(&tokens[i], &downstream()).await
                            }
                            other => other,
                        }
                        .unwrap_or_else(|e| panic!("subject {i}: {e}"));
                        (i, t.secret().expose().to_owned())
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        }
    };
    let forward: Vec<usize> = (0..SUBJECTS).collect();
    let backward: Vec<usize> = (0..SUBJECTS).rev().collect();
    let (got_a, got_b) = tokio::join!(pass(a.clone(), forward.clone()), pass(b.clone(), backward));

    let mut by_subject = vec![String::new(); SUBJECTS];
    for (i, secret) in got_a {
        let c = claims(&secret);
        assert_eq!(c["sub"], format!("fleet-{i}"), "a token for another user");
        assert_eq!(c["aud"], AUDIENCE);
        by_subject[i] = secret;
    }
    for (i, secret) in got_b {
        assert_eq!(
            secret, by_subject[i],
            "the instances got different tokens for subject {i}"
        );
    }
    let distinct: std::collections::HashSet<_> = by_subject.iter().collect();
    assert_eq!(
        distinct.len(),
        SUBJECTS,
        "a token was handed to two subjects"
    );
    let (total, distinct, max, _) = idp.exchange_counts("fleet-");
    assert_eq!(
        (total, distinct, max),
        (SUBJECTS as u64, SUBJECTS as u64, 1)
    );

    // Warm pass: all hits, no IdP call.
    let (hits_a, hits_b) = (a.stats().hits, b.stats().hits);
    let (again_a, again_b) =
        tokio::join!(pass(a.clone(), forward.clone()), pass(b.clone(), forward));
    for (i, secret) in again_a.into_iter().chain(again_b) {
        assert_eq!(secret, by_subject[i]);
    }
    assert_eq!(a.stats().hits - hits_a, SUBJECTS as u64);
    assert_eq!(b.stats().hits - hits_b, SUBJECTS as u64);
    assert_eq!(idp.exchange_counts("fleet-").0, SUBJECTS as u64);

    // No subject token in Redis keys or values, nor in the logs; one audit
    // event per exchange that was not a hit.
    let sample: Vec<String> = tokens.iter().step_by(97).cloned().collect();
    let check_store = RedisStore::connect_lazy(
        RedisConfig::new(redis.url())
            .with_key_prefix("exchange-test")
            .with_plaintext(),
    )
    .unwrap();
    let subject_key = SubjectKey::from_bytes(&key_material).unwrap();
    let credential_id = credential(idp).id().to_owned();
    for s in &sample {
        // The key the instances used: the keyed digest, never the token.
        let x = ExchangeSubject::new(
            s.as_str().into(),
            subject_key.digest(s),
            ExchangeGrant::TokenExchange {
                subject_token_type: ACCESS_TOKEN_TYPE.into(),
            },
        );
        let req = TokenRequest::builder()
            .audience(AUDIENCE)
            .scope("orders.read")
            .actor(Actor::Exchange(x))
            .build();
        let key = CacheKey::new(&credential_id, &req);
        assert!(!key.as_str().contains(s.as_str()));
        let redis_key = check_store.token_key(&key);
        let len: usize = redis
            .command(&["STRLEN", &redis_key])
            .unwrap()
            .parse()
            .unwrap();
        assert!(len > 100, "no exchanged token stored under {redis_key}");
        // Sealed bytes are no UTF-8 text; a readable value must not hold a JWT.
        if let Ok(value) = redis.command(&["GET", &redis_key]) {
            assert!(
                !value.contains("eyJ"),
                "an exchanged token rests unencrypted in {redis_key}"
            );
        }
    }
    logs.assert_free_of(&sample);
    let events = logs.text().matches("token exchange").count();
    assert_eq!(
        events as u64,
        a.stats().exchanged + b.stats().exchanged,
        "one audit event per exchange"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_subject_is_refused_then_remembered() {
    let Some(idp) = Idp::private() else { return };
    let (logs, _guard) = Captured::start();
    let tokens = idp.subject_tokens("revoked", 1, 3600);
    idp.revoke_subject(&tokens[0]);
    let cache = ExchangeCache::builder(TokenCache::builder(credential(&idp)))
        .build()
        .unwrap();
    for cached in [false, true, true] {
        match cache.exchange(&tokens[0], &downstream()).await {
            Err(ExchangeError::Rejected { cached: c, .. }) => assert_eq!(c, cached),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(idp.exchange_counts("revoked").3, 1, "one IdP call");
    assert_eq!(cache.stats().negative_hits, 2);
    logs.assert_free_of(&tokens);
    assert!(
        logs.text().contains("outcome=\"rejected\""),
        "{}",
        logs.text()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_garbage_tokens_costs_bounded_idp_calls() {
    let Some(idp) = Idp::private() else { return };
    let (logs, _guard) = Captured::start();
    let cache = ExchangeCache::builder(TokenCache::builder(credential(&idp)))
        .rate_per_second(5)
        .build()
        .unwrap();
    let garbage: Vec<String> = (0..300)
        .map(|i| format!("garbage-{i}-not-a-token"))
        .collect();
    let start = Instant::now();
    let request = downstream();
    let results: Vec<_> = stream::iter(&garbage)
        .map(|g| cache.exchange(g, &request))
        .buffer_unordered(300)
        .collect()
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(ExchangeError::RateLimited(d)) if *d > Duration::ZERO))
        .count();
    let rejected = results
        .iter()
        .filter(|r| matches!(r, Err(ExchangeError::Rejected { .. })))
        .count();
    assert_eq!(limited + rejected, garbage.len(), "{results:?}");
    // The IdP saw exactly the rejected ones, and no more than the bucket
    // allows: its burst plus its rate over the time the burst took.
    let idp_rejected = idp.exchange_counts("none").3;
    assert_eq!(idp_rejected, rejected as u64);
    assert!(
        (rejected as f64) <= 5.0 + (5.0 * elapsed).ceil(),
        "{rejected} IdP calls in {elapsed:.2}s"
    );
    assert_eq!(cache.stats().rate_limited, limited as u64);
    logs.assert_free_of(&garbage.iter().map(|g| format!("x.{g}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "current_thread")]
async fn expired_and_malformed_subjects_are_refused_without_an_idp_call() {
    let Some(idp) = Idp::private() else { return };
    let expired = idp.subject_tokens("expired", 1, -30);
    let before = idp.token_requests();
    let cache = ExchangeCache::builder(TokenCache::builder(credential(&idp)))
        .grant(ExchangeGrant::JwtBearerOnBehalfOf)
        .build()
        .unwrap();
    let refused = |r: Result<_, ExchangeError>| match r {
        Err(ExchangeError::InvalidSubject(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(cache.exchange(&expired[0], &downstream()).await),
        SubjectProblem::Expired
    );
    assert_eq!(
        refused(cache.exchange("", &downstream()).await),
        SubjectProblem::Missing
    );
    assert_eq!(
        refused(cache.exchange("a.b.c", &downstream()).await),
        SubjectProblem::Malformed
    );
    // The on-behalf-of grant needs a JWT: an opaque token is refused here.
    assert_eq!(
        refused(cache.exchange("opaque-token", &downstream()).await),
        SubjectProblem::Malformed
    );
    assert_eq!(idp.token_requests(), before, "no IdP call");
    assert_eq!(cache.stats().invalid_subject, 4);
}

#[tokio::test(flavor = "current_thread")]
async fn the_on_behalf_of_and_jwt_variants_exchange_for_the_same_user() {
    let Some(idp) = Idp::shared() else { return };
    let tokens = idp.subject_tokens("variants", 1, 120);
    let subject_exp =
        SystemTime::UNIX_EPOCH + Duration::from_secs(claims(&tokens[0])["exp"].as_u64().unwrap());
    for grant in [
        ExchangeGrant::JwtBearerOnBehalfOf,
        ExchangeGrant::TokenExchange {
            subject_token_type: JWT_TOKEN_TYPE.into(),
        },
    ] {
        let cache = ExchangeCache::builder(TokenCache::builder(credential(idp)))
            .grant(grant.clone())
            .build()
            .unwrap();
        let token = cache.exchange(&tokens[0], &downstream()).await.unwrap();
        assert_eq!(
            claims(token.secret().expose())["sub"],
            "variants-0",
            "{grant:?}"
        );
        assert!(
            token.expires_at().unwrap() <= subject_exp,
            "outlives its subject"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_tower_layer_sends_the_exchanged_token_never_the_subject() {
    use tower::{service_fn, Layer as _, ServiceExt as _};
    let Some(idp) = Idp::shared() else { return };
    let tokens = idp.subject_tokens("layer", 1, 3600);
    let cache = ExchangeCache::builder(TokenCache::builder(credential(idp)))
        .build()
        .unwrap();
    let upstream = service_fn(|req: http::Request<()>| async move {
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        Ok::<_, std::convert::Infallible>(http::Response::new(auth))
    });
    let client = ExchangeLayer::new(&cache, &downstream()).layer(upstream);
    let req = http::Request::builder()
        .header("authorization", format!("Bearer {}", tokens[0]))
        .body(())
        .unwrap();
    let sent = client.clone().oneshot(req).await.unwrap().into_body();
    let sent = sent.strip_prefix("Bearer ").unwrap();
    assert_ne!(sent, tokens[0]);
    assert_eq!(claims(sent)["sub"], "layer-0");
    // No subject: refused, nothing sent.
    let err = client.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<ExchangeError>(),
        Some(ExchangeError::InvalidSubject(SubjectProblem::Missing))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn each_exchange_is_audited_with_digest_claims_request_and_expiry_never_a_token() {
    let Some(idp) = Idp::shared() else { return };
    let (logs, _guard) = Captured::start();
    let tokens = idp.subject_tokens("audited", 1, 3600);
    let key_material = [5u8; 32];
    let cache = ExchangeCache::builder(TokenCache::builder(credential(idp)))
        .subject_key(SubjectKey::from_bytes(&key_material).unwrap())
        .grant(ExchangeGrant::TokenExchange {
            subject_token_type: JWT_TOKEN_TYPE.into(),
        })
        .build()
        .unwrap();
    let token = cache.exchange(&tokens[0], &downstream()).await.unwrap();
    // A hit is counted (stats), not audited: the audit is of exchanges.
    cache.exchange(&tokens[0], &downstream()).await.unwrap();
    assert_eq!((cache.stats().exchanged, cache.stats().hits), (1, 1));

    let text = logs.text();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("token_http::exchange") && l.contains("token exchange"))
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    let event = events[0];
    let digest = SubjectKey::from_bytes(&key_material)
        .unwrap()
        .digest(&tokens[0]);
    for field in [
        format!("subject=\"{}\"", &digest[..12]),
        "sub=\"audited-0\"".to_owned(),
        "azp=\"user-app\"".to_owned(),
        format!("audience=\"{AUDIENCE}\""),
        "scopes=orders.read".to_owned(),
        "outcome=\"exchanged\"".to_owned(),
    ] {
        assert!(event.contains(&field), "{field} missing: {event}");
    }
    // The expiry, in seconds: the IdP's tokens live at most 600 s.
    let expires_in: u64 = event
        .split("expires_in=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no expires_in: {event}"));
    assert!((500..=600).contains(&expires_in), "{event}");
    // Never token material: neither the subject nor the exchanged token.
    logs.assert_free_of(&tokens);
    logs.assert_free_of(&[token.secret().expose().to_owned()]);

    // A refused subject's event names the outcome and still no token.
    let expired = idp.subject_tokens("audited-expired", 1, -60);
    assert!(cache.exchange(&expired[0], &downstream()).await.is_err());
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("token exchange") && l.contains("outcome=\"expired\"")),
        "{text}"
    );
    logs.assert_free_of(&expired);
}
