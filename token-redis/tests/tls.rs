//! `rediss://` against real TLS-only `redis-server` processes: a throwaway
//! CA and certificates are made in process (rcgen), each test starts its own
//! server on a free loopback port (killed on drop).
//!
//! - a store over TLS round-trips tokens and leases, passes the whole
//!   conformance suite, serves a `TokenCache`, and its pub/sub invalidations
//!   travel over TLS too;
//! - a server certificate that is not trusted is refused with an error that
//!   says so, not a timeout;
//! - with `--tls-auth-clients yes`, a client certificate is accepted and its
//!   absence is refused;
//! - no private key material appears in `Debug` output or errors.
//!
//! Like the other Redis tests: without `redis-server` (or one built without
//! TLS) they skip loudly, and under `CI=true` they fail.
#![cfg(feature = "tls")]

mod support;

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use token_core::backend::StoreEvent;
use token_core::test_util::FakeIdp;
use token_core::{AccessToken, CacheKey, CacheStore, PutOutcome, TokenCache, TokenRequest};
use token_redis::{RedisConfig, RedisStore, RedisStoreError};
use token_testkit::{RedisCluster, RedisServer};

/// A throwaway CA with a server certificate (for `127.0.0.1` and
/// `localhost`) and a client certificate it signed, as PEM, and the
/// server's files on disk for `redis-server`.
struct Pki {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    dir: PathBuf,
}

impl Pki {
    fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("token-redis test CA ({label})"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);

        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "token-redis test server");
        server_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            // redis-server also presents it as a client (replication, bus).
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "token-redis test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let dir = std::env::temp_dir().join(format!(
            "token-redis-tls-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        Self {
            ca_pem,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            dir,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `redis-server`'s TLS arguments: this PKI's server certificate, and
    /// clients asked for a certificate signed by this CA when `auth_clients`.
    fn server_args(&self, auth_clients: bool) -> Vec<String> {
        let auth = if auth_clients { "yes" } else { "no" };
        vec![
            "--tls-cert-file".into(),
            self.file("server.pem"),
            "--tls-key-file".into(),
            self.file("server.key"),
            "--tls-ca-cert-file".into(),
            self.file("ca.pem"),
            "--tls-auth-clients".into(),
            auth.into(),
        ]
    }

    /// A TLS-only `redis-server` with [`Pki::server_args`].
    fn server(&self, auth_clients: bool) -> Option<RedisServer> {
        let args = self.server_args(auth_clients);
        RedisServer::private_tls(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A TLS-only 3-master cluster (bus over TLS too) with this PKI.
    fn cluster(&self) -> Option<RedisCluster> {
        let args = self.server_args(false);
        let ca = self.file("ca.pem");
        RedisCluster::private_tls(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &["--tls", "--cacert", &ca],
        )
    }

    /// Every line of the client key's base64 body: none may ever show.
    fn key_lines(&self) -> Vec<&str> {
        self.client_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 8)
            .collect()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A config for `server` that trusts `pki`'s CA, with a fresh key prefix
/// and short timeouts.
fn config(server: &RedisServer, pki: &Pki) -> RedisConfig {
    RedisConfig::new(server.url())
        .with_plaintext()
        .with_tls_root_certificates(pki.ca_pem.as_bytes())
        .with_key_prefix(support::fresh_prefix("tls"))
        .with_connect_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_secs(1))
}

/// The error and all its sources, one line.
fn chain(e: &RedisStoreError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Fails the test instead of hanging, should a connect never return.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the call returned instead of hanging")
}

fn token(secret: &str) -> AccessToken {
    AccessToken::new(secret, SystemTime::now())
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_token("refresh-over-tls")
}

/// token-core's shared fake IdP, handing out `tls-token-<n>`.
fn counting_idp() -> Arc<FakeIdp> {
    Arc::new(
        FakeIdp::new()
            .with_id("tls-idp")
            .with_secret_prefix("tls-token-")
            .with_refresh_token("refresh-over-tls"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_round_trips_tokens_and_leases_and_serves_a_token_cache() {
    let pki = Pki::new("round-trip");
    let Some(server) = pki.server(false) else {
        return;
    };
    let config = config(&server, &pki);
    let store = bounded(RedisStore::connect(config.clone())).await.unwrap();
    let other = bounded(RedisStore::connect(config)).await.unwrap();

    // put / get, seen by a second client.
    let key = CacheKey::from_raw("tc1|tls|round-trip");
    assert!(store.get(&key).await.unwrap().is_none());
    let t = token("access-over-tls");
    assert_eq!(store.put(&key, &t).await.unwrap(), PutOutcome::Stored);
    let got = other.get(&key).await.unwrap().expect("the token is shared");
    assert!(got.same_secret(&t));
    assert_eq!(
        got.refresh_token().map(|r| r.expose()),
        Some("refresh-over-tls")
    );

    // The lease: exclusive across clients, released by its holder only.
    let lease = store
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a free lease is granted");
    assert!(other
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    assert!(store.release_lease(&key, &lease).await.unwrap());
    assert!(other
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .is_some());
    store.remove(&key).await.unwrap();
    assert!(other.get(&key).await.unwrap().is_none());

    // A TokenCache over the TLS store: one IdP call, then hits; a second
    // cache on another client adopts the token from Redis.
    let idp = counting_idp();
    let cache = TokenCache::builder_arc(idp.clone())
        .store(store.clone())
        .build();
    let request = TokenRequest::builder().scope("tls").build();
    let first = cache.get_token(&request).await.unwrap();
    let again = cache.get_token(&request).await.unwrap();
    assert!(again.same_secret(&first));
    let second_cache = TokenCache::builder_arc(idp.clone()).store(other).build();
    let adopted = second_cache.get_token(&request).await.unwrap();
    assert!(adopted.same_secret(&first), "shared through Redis over TLS");
    assert_eq!(idp.calls(), 1);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_travel_over_tls_pubsub() {
    let pki = Pki::new("pubsub");
    let Some(server) = pki.server(false) else {
        return;
    };
    let config = config(&server, &pki);
    let a = bounded(RedisStore::connect(config.clone())).await.unwrap();
    let b = bounded(RedisStore::connect(config)).await.unwrap();
    let mut events = b.subscribe().expect("RedisStore publishes invalidations");
    let key = CacheKey::from_raw("tc1|tls|pubsub");
    // b's listener subscribes in the background: invalidate until it hears.
    let mut heard = None;
    for i in 0..100 {
        let t = token(&format!("pubsub-{i}"));
        a.put(&key, &t).await.unwrap();
        assert!(a.invalidate(&key, &t).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The put's "updated" event comes first: look past it.
        while let Ok(event) = events.try_recv() {
            if matches!(event, StoreEvent::Invalidated { .. }) {
                heard = Some(event);
            }
        }
        if heard.is_some() {
            break;
        }
    }
    match heard {
        Some(StoreEvent::Invalidated { key: k, .. }) => assert_eq!(k, key),
        other => panic!("b heard no invalidation over TLS: {other:?}"),
    }
    drop(server);
}

/// The whole token-conformance suite on stores made from `base`.
async fn conformance(base: RedisConfig) {
    let report = token_conformance::run_all(move || {
        let config = base
            .clone()
            .with_key_prefix(support::fresh_prefix("tls-conformance"));
        async move {
            let store = RedisStore::connect(config.clone()).await?;
            let second = RedisStore::connect(config).await?;
            Ok(token_conformance::Fixture::new(store.clone())
                .with_second(second)
                .with_raw_access(support::Raw(store)))
        }
    })
    .await;
    assert!(report.is_success(), "{report}");
    assert!(report.passed() > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_over_tls() {
    let pki = Pki::new("conformance");
    let Some(server) = pki.server(false) else {
        return;
    };
    conformance(config(&server, &pki)).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_tokens_passes_conformance_and_checks_certificates() {
    let pki = Pki::new("cluster");
    let Some(cluster) = pki.cluster() else {
        return;
    };
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")), "{urls:?}");
    let config = RedisConfig::cluster(urls.clone())
        .with_plaintext()
        .with_tls_root_certificates(pki.ca_pem.as_bytes())
        .with_key_prefix(support::fresh_prefix("tls-cluster"))
        .with_connect_timeout(Duration::from_secs(2))
        .with_command_timeout(Duration::from_secs(1));

    // Tokens spread over the slots (so over all three nodes) round-trip.
    let store = bounded(RedisStore::connect(config.clone())).await.unwrap();
    let other = bounded(RedisStore::connect(config.clone())).await.unwrap();
    for i in 0..30 {
        let key = CacheKey::from_raw(format!("tc1|tls-cluster|{i}"));
        let t = token(&format!("cluster-token-{i}"));
        store.put(&key, &t).await.unwrap();
        assert!(other.get(&key).await.unwrap().unwrap().same_secret(&t));
        let lease = store
            .try_acquire_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("a free lease");
        assert!(other
            .try_acquire_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none());
        assert!(store.release_lease(&key, &lease).await.unwrap());
    }
    let idp = counting_idp();
    let cache = TokenCache::builder_arc(idp.clone()).store(store).build();
    let request = TokenRequest::builder().scope("tls-cluster").build();
    let first = cache.get_token(&request).await.unwrap();
    assert!(cache.get_token(&request).await.unwrap().same_secret(&first));
    assert_eq!(idp.calls(), 1);

    conformance(config).await;

    // A client that does not trust the cluster's CA is refused. The cluster
    // client reports a refused certificate like an unreachable node (an I/O
    // error with the reason in its text), so only with `connect_at_start`
    // is it an error at start-up; otherwise the store logs the reason and
    // keeps trying in the background.
    let stranger = Pki::new("cluster-stranger");
    let err = bounded(RedisStore::connect(
        RedisConfig::cluster(urls)
            .with_plaintext()
            .with_tls_root_certificates(stranger.ca_pem.as_bytes())
            .with_connect_timeout(Duration::from_secs(2))
            .with_connect_at_start(true),
    ))
    .await
    .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, RedisStoreError::Connect { .. }), "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error says why: {text}"
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused_with_a_clear_error() {
    let server_pki = Pki::new("untrusted-server");
    let other_ca = Pki::new("other-ca");
    let Some(server) = server_pki.server(false) else {
        return;
    };
    let refusals = [
        // Trusting another CA only.
        ("another CA", config(&server, &other_ca)),
        // The system's roots, which do not know the throwaway CA.
        (
            "the system roots",
            RedisConfig::new(server.url())
                .with_plaintext()
                .with_connect_timeout(Duration::from_secs(2)),
        ),
    ];
    for (trusting, config) in refusals {
        let err = bounded(RedisStore::connect(config)).await.unwrap_err();
        let text = chain(&err);
        assert!(
            matches!(err, RedisStoreError::Connect { .. }),
            "trusting {trusting}: {text}"
        );
        assert!(
            text.to_lowercase().contains("certificate"),
            "trusting {trusting}, the error says why: {text}"
        );
        assert!(
            !text.contains("timed out"),
            "trusting {trusting}, refused, not timed out: {text}"
        );
    }
    // And the same server is fine for a client that trusts its CA.
    bounded(RedisStore::connect(config(&server, &server_pki)))
        .await
        .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new("mtls");
    let Some(server) = pki.server(true) else {
        return;
    };
    // With the client certificate: works.
    let with_cert = config(&server, &pki).with_tls_client_certificate(
        pki.client_cert_pem.as_bytes(),
        pki.client_key_pem.as_bytes(),
    );
    let store = bounded(RedisStore::connect(with_cert.clone()))
        .await
        .unwrap();
    let key = CacheKey::from_raw("tc1|tls|mtls");
    let t = token("access-over-mtls");
    store.put(&key, &t).await.unwrap();
    assert!(store.get(&key).await.unwrap().unwrap().same_secret(&t));

    // Without: refused at connect, not later and not by a timeout.
    let err = bounded(RedisStore::connect(config(&server, &pki)))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, RedisStoreError::Connect { .. }), "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error says why: {text}"
    );
    assert!(
        !text.contains("timed out"),
        "refused, not timed out: {text}"
    );

    // A certificate from another CA: refused too.
    let stranger = Pki::new("mtls-stranger");
    let wrong = config(&server, &pki).with_tls_client_certificate(
        stranger.client_cert_pem.as_bytes(),
        stranger.client_key_pem.as_bytes(),
    );
    let wrong_err = bounded(RedisStore::connect(wrong)).await.unwrap_err();
    assert!(
        matches!(wrong_err, RedisStoreError::Connect { .. }),
        "{}",
        chain(&wrong_err)
    );

    // The key appears nowhere.
    let seen = format!(
        "{with_cert:?} {store:?} {text} {err:?} {} {wrong_err:?}",
        chain(&wrong_err)
    );
    for line in pki.key_lines().into_iter().chain(stranger.key_lines()) {
        assert!(!seen.contains(line), "key material shown:\n{seen}");
    }
    drop(server);
}

#[tokio::test]
async fn key_material_never_shows_in_debug_or_config_errors() {
    let pki = Pki::new("debug");
    let config = RedisConfig::new("rediss://127.0.0.1:1")
        .with_plaintext()
        .with_tls_root_certificates(pki.ca_pem.as_bytes())
        .with_tls_client_certificate(
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        );
    let debug = format!("{config:?}");
    assert!(debug.contains("private key ***"), "{debug}");

    // A truncated key and a key under a plain redis:// URL are
    // configuration errors, found before any connection.
    let truncated: String = pki
        .client_key_pem
        .lines()
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    let bad_key = RedisConfig::new("rediss://127.0.0.1:1")
        .with_plaintext()
        .with_tls_client_certificate(pki.client_cert_pem.as_bytes(), truncated.as_bytes());
    let bad_key_err = RedisStore::connect_lazy(bad_key.clone()).unwrap_err();
    assert!(
        matches!(bad_key_err, RedisStoreError::InvalidConfig(_)),
        "{bad_key_err}"
    );
    let plain = RedisConfig::new("redis://127.0.0.1:1")
        .with_plaintext()
        .with_tls_client_certificate(
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        );
    let plain_err = RedisStore::connect_lazy(plain).unwrap_err();
    assert!(
        plain_err.to_string().contains("not a rediss:// URL"),
        "{plain_err}"
    );

    let seen =
        format!("{debug} {bad_key:?} {bad_key_err} {bad_key_err:?} {plain_err} {plain_err:?}");
    for line in pki.key_lines() {
        assert!(!seen.contains(line), "key material shown:\n{seen}");
    }
}
