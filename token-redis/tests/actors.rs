//! 100,000 on-behalf-of requests ([`Actor`]) over the Redis store: each
//! user's token is its own, in the process that fetched it and in a fresh
//! process that finds it in Redis. Runs its own private `redis-server`.

mod support;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use token_core::{
    AccessToken, Actor, Credential, CredentialError, RefreshPolicy, TokenCache, TokenRequest,
};
use token_redis::{RedisConfig, RedisStore};
use token_testkit::RedisServer;

/// Distinct users, one key each.
const USERS: usize = 100_000;
/// One user in this many asks with an assertion (a secret) instead of a
/// subject id.
const ASSERTION_EVERY: usize = 10;
/// Requests in flight at once.
const CONCURRENCY: usize = 64;
/// Users a second cache (a fresh process) reads back from Redis.
const SAMPLE: usize = 2_000;
/// The credential id both caches share, so they share the cache keys.
const IDP_ID: &str = "obo-idp";
/// Issued tokens last an hour: nothing expires or refreshes during the test.
const LIFETIME: Duration = Duration::from_secs(3600);
/// Generous on a loaded 2-core machine, so a slow reply is not a store
/// failure (which would bypass the store and break the counts).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// An IdP for on-behalf-of requests: it issues `tok-for-<user>-<n>` (`n`:
/// its call number) for the user the request acts for, reading the user
/// from an assertion as a real IdP reads a verified JWT's `sub`, and records
/// every token it issued per user.
struct OboIdp {
    calls: AtomicUsize,
    issued: Mutex<HashMap<String, Vec<String>>>,
}

impl OboIdp {
    fn new() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            issued: Mutex::new(HashMap::new()),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn issued(&self) -> HashMap<String, Vec<String>> {
        self.issued.lock().unwrap().clone()
    }
}

impl fmt::Debug for OboIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OboIdp")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

/// The assertion user `i` presents: a stand-in for a JWT whose `sig` part is
/// random, so it can be searched for.
fn assertion(user: &str, sig: &str) -> String {
    format!("jwt.sub={user}.sig={sig}")
}

/// The user an [`assertion`] names.
fn assertion_subject(assertion: &str) -> Option<&str> {
    let rest = assertion.strip_prefix("jwt.sub=")?;
    rest.split_once(".sig=").map(|(user, _)| user)
}

#[async_trait]
impl Credential for OboIdp {
    fn id(&self) -> &str {
        IDP_ID
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let user = match request.actor() {
            Some(Actor::Subject(s)) => s.clone(),
            Some(Actor::Assertion(a)) => assertion_subject(a.expose())
                .ok_or_else(|| CredentialError::permanent("malformed assertion"))?
                .to_owned(),
            _ => return Err(CredentialError::permanent("not an on-behalf-of request")),
        };
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let secret = format!("tok-for-{user}-{n}");
        self.issued
            .lock()
            .unwrap()
            .entry(user)
            .or_default()
            .push(secret.clone());
        Ok(AccessToken::new(secret, SystemTime::now()).with_expires_in(LIFETIME))
    }
}

/// One user and the request made on their behalf.
struct User {
    name: String,
    /// The assertion's random part, for assertion users.
    sig: Option<String>,
    request: TokenRequest,
}

fn users() -> Vec<User> {
    (0..USERS)
        .map(|i| {
            let name = format!("user-{i}");
            let (actor, sig) = if i % ASSERTION_EVERY == 0 {
                let sig = format!("{:032x}", token_core::backend::random_u128());
                (Actor::Assertion(assertion(&name, &sig).into()), Some(sig))
            } else {
                (Actor::Subject(name.clone()), None)
            };
            let request = TokenRequest::builder()
                .scope("orders.read")
                .actor(actor)
                .build();
            User { name, sig, request }
        })
        .collect()
}

fn config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_plaintext()
        .with_key_prefix(prefix)
        // The store's own per-command timeout (250 ms by default) would fail
        // calls long before the policy's store timeout on a loaded machine.
        .with_command_timeout(STORE_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5))
}

fn new_cache(idp: Arc<OboIdp>, store: RedisStore) -> TokenCache {
    TokenCache::builder(idp)
        .store(store)
        .policy(RefreshPolicy::default().with_store_timeout(STORE_TIMEOUT))
        .max_keys(USERS)
        .build()
}

/// Gets a token for each of `users[i]`, `i` in `which`, at most
/// [`CONCURRENCY`] at once; returns each one's secret, in `which`'s order.
async fn fetch_all(cache: &TokenCache, users: &Arc<Vec<User>>, which: &[usize]) -> Vec<String> {
    let which: Arc<Vec<usize>> = Arc::new(which.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (cache, users, which, next) = (
                cache.clone(),
                Arc::clone(users),
                Arc::clone(&which),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = which.get(at) else {
                        return got;
                    };
                    let user = &users[i];
                    let secret = match cache.get_token(&user.request).await {
                        Ok(token) => token.secret().expose().to_owned(),
                        Err(e) => panic!("{}: {e}", user.name),
                    };
                    got.push((at, secret));
                }
            })
        })
        .collect();
    let mut secrets = vec![String::new(); which.len()];
    for worker in workers {
        for (at, secret) in worker.await.unwrap() {
            secrets[at] = secret;
        }
    }
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_on_behalf_of_token_is_its_users_own() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let started = Instant::now();
    let prefix = support::fresh_prefix("actors");
    let users = Arc::new(users());
    let all: Vec<usize> = (0..USERS).collect();

    let idp = Arc::new(OboIdp::new());
    let store = RedisStore::connect(config(server.url(), &prefix))
        .await
        .unwrap();
    let cache = new_cache(Arc::clone(&idp), store);

    // No assertion reaches a cache key or a Debug line; every user has a
    // key of their own.
    let mut keys = HashSet::with_capacity(USERS);
    for user in users.iter() {
        let key = cache.cache_key(&user.request);
        let debug = format!("{:?} {:?}", user.request, user.request.actor());
        match &user.sig {
            Some(sig) => {
                let secret = assertion(&user.name, sig);
                for text in [key.as_str(), debug.as_str()] {
                    assert!(!text.contains(sig), "{}'s assertion in {text}", user.name);
                    assert!(
                        !text.contains(&secret),
                        "{}'s assertion in {text}",
                        user.name
                    );
                    assert!(!text.contains("jwt."), "an assertion in {text}");
                }
            }
            None => assert!(
                key.as_str().contains(&format!("act={};", user.name)),
                "{key:?}"
            ),
        }
        assert!(keys.insert(key), "{} shares a key", user.name);
    }
    drop(keys);
    let checked = started.elapsed();

    // Cold: one IdP call per user, each answered with that user's token.
    let t = Instant::now();
    let cold = fetch_all(&cache, &users, &all).await;
    let cold_time = t.elapsed();
    let issued = idp.issued();
    assert_eq!(idp.calls(), USERS, "one IdP call per user");
    assert_eq!(issued.len(), USERS, "every user was fetched for");
    for (user, secret) in users.iter().zip(&cold) {
        let theirs = &issued[&user.name];
        assert_eq!(
            theirs.len(),
            1,
            "{} fetched {} times",
            user.name,
            theirs.len()
        );
        assert_eq!(secret, &theirs[0], "{} got another's token", user.name);
        assert!(secret.starts_with(&format!("tok-for-{}-", user.name)));
    }
    let stats = cache.stats();
    eprintln!("after the cold pass: {stats:?}");
    assert_eq!(stats.keys, USERS as u64, "{stats:?}");
    assert_eq!(stats.evictions, 0, "{stats:?}");
    assert_eq!(stats.idp_calls, USERS as u64, "{stats:?}");
    assert_eq!(stats.store_hits, 0, "{stats:?}");
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    assert_eq!(stats.store_bypassed, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");

    // Warm: the same tokens, all hits, no IdP call.
    let t = Instant::now();
    let warm = fetch_all(&cache, &users, &all).await;
    let warm_time = t.elapsed();
    assert!(warm == cold, "the warm pass returned other tokens");
    assert_eq!(idp.calls(), USERS, "the warm pass called the IdP");
    let after = cache.stats();
    eprintln!("after the warm pass: {after:?}");
    assert_eq!(after.hits - stats.hits, USERS as u64, "{after:?}");
    assert_eq!(after.misses, stats.misses, "{after:?}");
    assert_eq!(after.idp_calls, USERS as u64, "{after:?}");
    assert_eq!(after.keys, USERS as u64, "{after:?}");
    assert_eq!(after.evictions, 0, "{after:?}");

    // Redis holds one token per user and no leftover lease.
    let dbsize = server.command(&["DBSIZE"]).unwrap();
    assert_eq!(dbsize, USERS.to_string(), "keys in Redis");

    // A fresh process over the same Redis: a sample of users (subjects and
    // assertions) get their own tokens from the store, with no IdP call.
    let sample: Vec<usize> = (0..SAMPLE).map(|k| (k * 7_919 + 13) % USERS).collect();
    let assertions = sample.iter().filter(|&&i| users[i].sig.is_some()).count();
    assert!(assertions > 0 && assertions < SAMPLE, "{assertions}");
    let idp2 = Arc::new(OboIdp::new());
    let store2 = RedisStore::connect(config(server.url(), &prefix))
        .await
        .unwrap();
    let cache2 = new_cache(Arc::clone(&idp2), store2);
    let t = Instant::now();
    let fresh = fetch_all(&cache2, &users, &sample).await;
    let fresh_time = t.elapsed();
    assert_eq!(idp2.calls(), 0, "the fresh process called the IdP");
    for (&i, secret) in sample.iter().zip(&fresh) {
        let user = &users[i];
        assert_eq!(
            secret, &issued[&user.name][0],
            "{} got another's token from Redis",
            user.name
        );
    }
    let stats2 = cache2.stats();
    eprintln!("the fresh process: {stats2:?}");
    assert_eq!(stats2.store_hits, SAMPLE as u64, "{stats2:?}");
    assert_eq!(stats2.idp_calls, 0, "{stats2:?}");
    assert_eq!(stats2.keys, SAMPLE as u64, "{stats2:?}");
    assert_eq!(stats2.store_errors, 0, "{stats2:?}");
    assert_eq!(stats2.store_corrupt_reads, 0, "{stats2:?}");

    eprintln!(
        "{USERS} users ({} by assertion), {CONCURRENCY} at once: keys checked in {checked:.2?}, \
         cold {cold_time:.2?}, warm {warm_time:.2?}, {SAMPLE} from Redis in {fresh_time:.2?}, \
         total {:.2?}",
        USERS / ASSERTION_EVERY,
        started.elapsed()
    );
}
