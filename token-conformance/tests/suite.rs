//! Tests of the suite itself: a correct reference store passes every check
//! (none skipped when the fixture offers everything), and stores with one
//! planted bug each fail the check that names that bug.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use token_conformance::{
    checks, run_all, run_check, trials, Check, Fixture, FixtureFactory, Outcome, RawAccess, Report,
};
use token_core::backend::{
    decode_token, encode_token, random_u128, storable_expiry, StoreEvent, TokenFingerprint,
};
use token_core::{
    AccessToken, CacheKey, CacheStore, Lease, PutOutcome, StoreCapabilities, StoreError, StoreStats,
};
use tokio::sync::broadcast;

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// `put` always overwrites.
    NoNewerWins,
    /// `get` ignores `expires_at`.
    ServesExpired,
    /// Every acquire is granted.
    LeaseNotExclusive,
    /// `release_lease` ignores who holds the lease.
    ReleaseIgnoresOwner,
    /// Leases never lapse.
    LeaseNeverExpires,
    /// `remove` also drops the lease.
    RemoveDropsLease,
    /// Keys are compared case-insensitively.
    CaseInsensitiveKeys,
    /// Secrets are cut to 32 KiB.
    TruncatesLargeSecrets,
    /// Undecodable bytes are an error instead of a miss.
    CorruptIsError,
    /// Undecodable bytes are a miss that is not counted.
    CorruptNotCounted,
    /// A corrupt value makes every put keep it.
    CorruptBlocksPut,
    /// The "encryption" writes the plaintext.
    PlaintextAtRest,
    /// The envelope is not bound to its key.
    EnvelopeNotBound,
    /// `get` panics.
    Panics,
    /// `invalidate` reads, compares and removes in separate steps.
    InvalidateNotAtomic,
    /// `invalidate` removes whatever is stored.
    InvalidateIgnoresSecret,
    /// Events carry the wrong fingerprint.
    EventWrongFingerprint,
}

/// A serialized store on a map of bytes, optionally "encrypted" with a toy
/// keyed stream (NOT cryptography: just enough structure for the
/// encryption checks to have something to look at).
#[derive(Debug)]
struct BytesStore {
    data: Arc<Shared>,
    shared: bool,
    encrypted: bool,
    bug: Option<Bug>,
}

#[derive(Debug)]
struct Shared {
    values: Mutex<HashMap<String, Vec<u8>>>,
    leases: Mutex<HashMap<String, (Lease, Instant)>>,
    corrupt_reads: AtomicU64,
    nonce: AtomicU64,
    events: broadcast::Sender<StoreEvent>,
}

impl BytesStore {
    /// A store; `shared` ones are "shared" between their handles, with
    /// events, the way a Redis store is between processes.
    fn new(shared: bool, encrypted: bool, bug: Option<Bug>) -> Self {
        let data = Shared {
            values: Mutex::default(),
            leases: Mutex::default(),
            corrupt_reads: AtomicU64::default(),
            nonce: AtomicU64::default(),
            events: broadcast::channel(64).0,
        };
        Self {
            data: Arc::new(data),
            shared,
            encrypted,
            bug,
        }
    }

    fn handle(&self) -> Self {
        Self {
            data: Arc::clone(&self.data),
            shared: self.shared,
            encrypted: self.encrypted,
            bug: self.bug,
        }
    }

    fn id(&self, key: &CacheKey) -> String {
        if self.bug == Some(Bug::CaseInsensitiveKeys) {
            key.as_str().to_lowercase()
        } else {
            key.as_str().to_owned()
        }
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        if !self.encrypted {
            return plain.to_vec();
        }
        let nonce = self.data.nonce.fetch_add(1, Ordering::Relaxed) ^ (random_u128() as u64);
        let bound = if self.bug == Some(Bug::EnvelopeNotBound) {
            ""
        } else {
            key
        };
        let mut out = vec![1];
        out.extend_from_slice(&nonce.to_le_bytes());
        out.extend_from_slice(&tag(bound, nonce, plain).to_le_bytes());
        if self.bug == Some(Bug::PlaintextAtRest) {
            out.extend_from_slice(plain);
        } else {
            out.extend(
                plain
                    .iter()
                    .zip(keystream(bound, nonce))
                    .map(|(p, k)| p ^ k),
            );
        }
        out
    }

    fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if !self.encrypted {
            return Some(sealed.to_vec());
        }
        if sealed.len() < 17 || sealed[0] != 1 {
            return None;
        }
        let nonce = u64::from_le_bytes(sealed[1..9].try_into().ok()?);
        let expected = u64::from_le_bytes(sealed[9..17].try_into().ok()?);
        let bound = if self.bug == Some(Bug::EnvelopeNotBound) {
            ""
        } else {
            key
        };
        let plain: Vec<u8> = if self.bug == Some(Bug::PlaintextAtRest) {
            sealed[17..].to_vec()
        } else {
            sealed[17..]
                .iter()
                .zip(keystream(bound, nonce))
                .map(|(c, k)| c ^ k)
                .collect()
        };
        (tag(bound, nonce, &plain) == expected).then_some(plain)
    }

    /// The stored token, `Err(())` when the bytes are corrupt.
    fn decode(&self, key: &str, bytes: &[u8]) -> Result<AccessToken, ()> {
        let plain = self.open(key, bytes).ok_or(())?;
        decode_token(&plain).map_err(|_| ())
    }
}

fn keystream(key: &str, nonce: u64) -> impl Iterator<Item = u8> + '_ {
    (0u64..).flat_map(move |block| {
        let mut h = DefaultHasher::new();
        (key, nonce, block).hash(&mut h);
        h.finish().to_le_bytes()
    })
}

fn tag(key: &str, nonce: u64, plain: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (key, nonce, plain, "tag").hash(&mut h);
    h.finish()
}

#[async_trait]
impl CacheStore for BytesStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local()
            .with_shared(self.shared)
            .with_serialized(true)
            .with_encrypted(self.encrypted)
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        assert!(self.bug != Some(Bug::Panics), "planted panic");
        let id = self.id(key);
        let Some(bytes) = self.data.values.lock().unwrap().get(&id).cloned() else {
            return Ok(None);
        };
        match self.decode(&id, &bytes) {
            Ok(t) if self.bug == Some(Bug::ServesExpired) || t.is_live_at(SystemTime::now()) => {
                Ok(Some(t))
            }
            Ok(_) => Ok(None),
            Err(()) if self.bug == Some(Bug::CorruptIsError) => {
                Err(StoreError::Rejected("corrupt".into()))
            }
            Err(()) => {
                if self.bug != Some(Bug::CorruptNotCounted) {
                    self.data.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        let expires_at = storable_expiry(token)?;
        let id = self.id(key);
        let mut token = token.clone();
        if self.bug == Some(Bug::TruncatesLargeSecrets) && token.secret().len() > 32 * 1024 {
            let cut = token.secret().expose()[..32 * 1024].to_owned();
            token = AccessToken::new(cut, token.obtained_at()).with_expires_at(expires_at);
        }
        let mut values = self.data.values.lock().unwrap();
        if self.bug != Some(Bug::NoNewerWins) {
            if let Some(bytes) = values.get(&id) {
                let kept = match self.decode(&id, bytes) {
                    Ok(stored) => stored.expires_at().is_some_and(|at| at > expires_at),
                    Err(()) => self.bug == Some(Bug::CorruptBlocksPut),
                };
                if kept {
                    return Ok(PutOutcome::KeptNewer);
                }
            }
        }
        let sealed = self.seal(&id, &encode_token(&token));
        values.insert(id, sealed);
        Ok(PutOutcome::Stored)
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        let id = self.id(key);
        if self.bug == Some(Bug::RemoveDropsLease) {
            self.data.leases.lock().unwrap().remove(&id);
        }
        self.data.values.lock().unwrap().remove(&id);
        Ok(())
    }

    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = Instant::now();
        let mut leases = self.data.leases.lock().unwrap();
        let id = self.id(key);
        let live = |deadline: &Instant| self.bug == Some(Bug::LeaseNeverExpires) || *deadline > now;
        if self.bug != Some(Bug::LeaseNotExclusive) && leases.get(&id).is_some_and(|(_, d)| live(d))
        {
            return Ok(None);
        }
        let lease = Lease::new_random();
        leases.insert(id, (lease.clone(), now + ttl));
        Ok(Some(lease))
    }

    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut leases = self.data.leases.lock().unwrap();
        let id = self.id(key);
        let holds = match leases.get(&id) {
            Some((_, deadline)) if self.bug == Some(Bug::ReleaseIgnoresOwner) => *deadline > now,
            Some((held, deadline)) => held == lease && *deadline > now,
            None => false,
        };
        if holds {
            leases.remove(&id);
        }
        Ok(holds)
    }

    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        let id = self.id(key);
        if self.bug == Some(Bug::InvalidateNotAtomic) {
            let stored = self.get(key).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            return Ok(match stored {
                Some(t) if t.same_secret(rejected) => {
                    self.remove(key).await?;
                    true
                }
                _ => false,
            });
        }
        let mut values = self.data.values.lock().unwrap();
        let matches = match values.get(&id) {
            None => false,
            Some(_) if self.bug == Some(Bug::InvalidateIgnoresSecret) => true,
            Some(bytes) => self
                .decode(&id, bytes)
                .is_ok_and(|t| t.same_secret(rejected)),
        };
        if matches {
            values.remove(&id);
            let fingerprint = if self.bug == Some(Bug::EventWrongFingerprint) {
                TokenFingerprint::from_bytes([7; 32])
            } else {
                TokenFingerprint::of(rejected)
            };
            let _ = self.data.events.send(StoreEvent::Invalidated {
                key: key.clone(),
                fingerprint,
            });
        }
        Ok(matches)
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        self.shared.then(|| self.data.events.subscribe())
    }

    fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        stats.corrupt_reads = self.data.corrupt_reads.load(Ordering::Relaxed);
        stats
    }
}

struct Raw(BytesStore);

#[async_trait]
impl RawAccess for Raw {
    async fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), StoreError> {
        self.0
            .data
            .values
            .lock()
            .unwrap()
            .insert(self.0.id(key), bytes.to_vec());
        Ok(())
    }

    async fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .data
            .values
            .lock()
            .unwrap()
            .get(&self.0.id(key))
            .cloned())
    }
}

/// A factory for a full fixture (second handle, raw access) on a fresh
/// reference store.
fn factory(shared: bool, encrypted: bool, bug: Option<Bug>) -> impl FixtureFactory {
    move || async move {
        let store = BytesStore::new(shared, encrypted, bug);
        let raw = Raw(store.handle());
        let second = store.handle();
        Ok(Fixture::new(store).with_second(second).with_raw_access(raw))
    }
}

fn check(name: &str) -> Check {
    *checks()
        .iter()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

fn summary(report: &Report) -> String {
    report.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_reference_store_passes_every_check_and_skips_none() {
    let report = run_all(factory(true, true, None)).await;
    assert_eq!(report.checks().len(), checks().len());
    assert!(report.is_success(), "{}", summary(&report));
    assert_eq!(report.skipped(), 0, "{}", summary(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_plain_store_skips_only_the_shared_and_encryption_checks() {
    let report = run_all(factory(false, false, None)).await;
    assert!(report.is_success(), "{}", summary(&report));
    let skipped: Vec<_> = report
        .checks()
        .iter()
        .filter(|c| c.outcome().is_skipped())
        .map(|c| c.name())
        .collect();
    assert_eq!(
        skipped,
        [
            "invalidate_is_atomic",
            "invalidate_notifies_other_handles",
            "encrypted_value_hides_the_secret",
            "encrypted_value_is_bound_to_its_key"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fixture_parts_are_skipped_with_a_reason() {
    let bare = || async { Ok(Fixture::new(BytesStore::new(true, false, None))) };
    for (name, reason) in [
        ("lease_exclusive_across_handles", "no second handle"),
        ("second_handle_shares_tokens", "no second handle"),
        ("garbage_bytes_read_as_miss", "no raw access"),
        ("invalidate_notifies_other_handles", "no second handle"),
    ] {
        match run_check(check(name), &bare).await {
            Outcome::Skipped { reason: r } => assert!(r.contains(reason), "{name}: {r}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_planted_bug_is_caught_by_its_check() {
    let cases = [
        (Bug::NoNewerWins, "older_put_keeps_newer"),
        (Bug::NoNewerWins, "concurrent_puts_keep_the_latest_expiry"),
        (Bug::ServesExpired, "expired_token_is_never_returned"),
        (Bug::ServesExpired, "token_disappears_when_it_expires"),
        (
            Bug::LeaseNotExclusive,
            "lease_second_acquire_fails_while_held",
        ),
        (Bug::LeaseNotExclusive, "lease_exclusive_under_contention"),
        (Bug::LeaseNotExclusive, "lease_contention_across_handles"),
        (
            Bug::ReleaseIgnoresOwner,
            "lease_release_by_non_holder_is_refused",
        ),
        (
            Bug::ReleaseIgnoresOwner,
            "stale_holder_cannot_release_new_lease",
        ),
        (Bug::LeaseNeverExpires, "lease_expires_after_holder_dies"),
        (Bug::RemoveDropsLease, "lease_and_token_are_independent"),
        (Bug::CaseInsensitiveKeys, "similar_keys_are_isolated"),
        (Bug::TruncatesLargeSecrets, "large_values_round_trip"),
        (Bug::CorruptIsError, "garbage_bytes_read_as_miss"),
        (Bug::CorruptNotCounted, "truncated_value_reads_as_miss"),
        (Bug::CorruptBlocksPut, "put_replaces_a_corrupt_value"),
        (Bug::PlaintextAtRest, "encrypted_value_hides_the_secret"),
        (Bug::InvalidateNotAtomic, "invalidate_is_atomic"),
        (
            Bug::InvalidateIgnoresSecret,
            "invalidate_removes_only_the_rejected_token",
        ),
        (
            Bug::InvalidateIgnoresSecret,
            "invalidate_spares_a_newer_token",
        ),
        (
            Bug::EventWrongFingerprint,
            "invalidate_notifies_other_handles",
        ),
        (Bug::EnvelopeNotBound, "encrypted_value_is_bound_to_its_key"),
    ];
    for (bug, name) in cases {
        let outcome = run_check(check(name), &factory(true, true, Some(bug))).await;
        assert!(
            outcome.is_failed(),
            "{bug:?} was not caught by {name}: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_store_fails_the_check_instead_of_the_run() {
    match run_check(
        check("get_missing_is_none"),
        &factory(false, false, Some(Bug::Panics)),
    )
    .await
    {
        Outcome::Failed { message } => assert!(message.contains("planted panic"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_factory_error_fails_the_check_with_its_message() {
    let broken = || async { Err("no server on 127.0.0.1:6379".into()) };
    match run_check(check("get_missing_is_none"), &broken).await {
        Outcome::Failed { message } => {
            assert!(message.contains("no server on 127.0.0.1:6379"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn trials_are_named_backend_theme_check() {
    let trials = trials("reference", factory(false, false, None));
    assert_eq!(trials.len(), checks().len());
    assert_eq!(trials[0].name(), "reference::basic::get_missing_is_none");
    assert!(trials.iter().all(|t| !t.has_ignored_flag()));
    assert!(trials
        .iter()
        .any(|t| t.name() == "reference::corruption::garbage_bytes_read_as_miss"));
}

#[test]
fn trials_run_and_report_skips_as_ignored() {
    let args = token_conformance::libtest_mimic::Arguments::from_iter([
        "conformance",
        "--quiet",
        "--test-threads",
        "2",
        "reference::corruption::",
    ]);
    let conclusion = token_conformance::run("reference", factory(false, false, None), &args);
    assert_eq!(conclusion.num_failed, 0);
    assert_eq!(conclusion.num_passed, 6);
    assert_eq!(conclusion.num_ignored, 2);
}
