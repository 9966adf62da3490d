//! SledStore behaviour beyond the conformance suite: bad bytes, keys and
//! rotation, the directory, damage and future formats, sweeping.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{contains, files_under, key, token};
use token_core::backend::{encode_token, envelope_key_id};
use token_core::{AccessToken, CacheStore, EncryptionKey, Keyring, StoreError};
use token_sled::{Durability, SledError, SledStore};

fn key_n(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([n; 32])
}

async fn open(path: &Path, ring: Keyring) -> SledStore {
    SledStore::builder(path, ring)
        .durability(Durability::Background)
        .open()
        .await
        .unwrap()
}

/// Opens, retrying while the previous store of the same path (just
/// dropped) still holds sled's own file lock in a background thread.
async fn reopen(path: &Path, ring: impl Fn() -> Keyring) -> Result<SledStore, SledError> {
    reopen_with(|| SledStore::builder(path, ring())).await
}

/// [`reopen`] with a builder of the test's choosing.
async fn reopen_with(
    builder: impl Fn() -> token_sled::SledStoreBuilder,
) -> Result<SledStore, SledError> {
    for _ in 0..200 {
        match builder().open().await {
            Err(SledError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(SledError::Sled { source, .. }) if source.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            other => return other,
        }
    }
    builder().open().await
}

async fn expect_counted_miss(store: &SledStore, k: &token_core::CacheKey, what: &str) {
    let before = store.stats().corrupt_reads;
    let got = store.get(k).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(got.is_none(), "{what}: returned a token");
    assert_eq!(
        store.stats().corrupt_reads,
        before + 1,
        "{what}: not counted"
    );
}

#[tokio::test]
async fn every_bit_flip_truncation_and_swap_reads_as_a_counted_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Keyring::new(key_n(1))).await;
    let (a, b) = (key("a"), key("b"));
    store.put(&a, &token("flip-secret-a")).await.unwrap();
    store.put(&b, &token("flip-secret-b")).await.unwrap();
    let good_a = store.read_envelope(&a).unwrap().unwrap();
    let good_b = store.read_envelope(&b).unwrap().unwrap();

    for i in 0..good_a.len() {
        for bit in 0..8 {
            let mut bytes = good_a.clone();
            bytes[i] ^= 1 << bit;
            store.write_envelope(&a, &bytes).await.unwrap();
            expect_counted_miss(&store, &a, &format!("byte {i} bit {bit} flipped")).await;
        }
    }
    for len in 0..good_a.len() {
        store.write_envelope(&a, &good_a[..len]).await.unwrap();
        expect_counted_miss(&store, &a, &format!("truncated to {len}")).await;
    }
    store.write_envelope(&a, &good_b).await.unwrap();
    store.write_envelope(&b, &good_a).await.unwrap();
    expect_counted_miss(&store, &a, "b's value under a").await;
    expect_counted_miss(&store, &b, "a's value under b").await;

    // The intact bytes still read: the misses came from the damage.
    store.write_envelope(&a, &good_a).await.unwrap();
    let t = store.get(&a).await.unwrap().unwrap();
    assert_eq!(t.secret().expose(), "flip-secret-a");
}

#[tokio::test]
async fn no_token_or_refresh_token_bytes_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let secrets: Vec<(String, String)> = (0..50)
        .map(|i| {
            (
                format!(
                    "disk-scan-access-{i:04}-{:032x}",
                    token_core::backend::random_u128()
                ),
                format!(
                    "disk-scan-refresh-{i:04}-{:032x}",
                    token_core::backend::random_u128()
                ),
            )
        })
        .collect();
    {
        let store = SledStore::open(&path, Keyring::new(key_n(1)))
            .await
            .unwrap();
        for (i, (access, refresh)) in secrets.iter().enumerate() {
            let t = token(access).with_refresh_token(refresh.clone());
            store.put(&key(&format!("scan-{i}")), &t).await.unwrap();
        }
        // Rewritten under another key too, so old versions may linger in
        // the log.
        drop(store);
        let store = reopen(&path, || {
            Keyring::new(key_n(2)).with_previous(key_n(1)).unwrap()
        })
        .await
        .unwrap();
        store.rekey().await.unwrap();
        store.flush().await.unwrap();
    }
    let files = files_under(&path);
    assert!(!files.is_empty());
    let mut all = Vec::new();
    for f in &files {
        all.extend(std::fs::read(f).unwrap());
    }
    // The scan can find things: the cache keys are stored in clear.
    assert!(contains(&all, b"tc1|test|scan-7"), "scan found no key text");
    for (access, refresh) in &secrets {
        assert!(
            !contains(&all, access.as_bytes()),
            "access token found on disk"
        );
        assert!(
            !contains(&all, refresh.as_bytes()),
            "refresh token found on disk"
        );
        // Nor a long prefix of one (a JSON field split across pages).
        assert!(!contains(&all, &access.as_bytes()[..24]));
    }
}

#[tokio::test]
async fn the_directory_is_0700_and_its_files_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("tokens");
    let store = SledStore::open(&path, Keyring::new(key_n(1)))
        .await
        .unwrap();
    store.put(&key("k"), &token("perm-secret")).await.unwrap();
    store.sweep().await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700, "{}", path.display());
    let files = files_under(&path);
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // An existing directory with loose permissions is tightened.
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _store = reopen(&path, || Keyring::new(key_n(1))).await.unwrap();
    assert_eq!(mode(&path), 0o700);
}

#[tokio::test]
async fn a_second_store_on_the_same_path_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    let err = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, SledError::Locked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("already open"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}

#[tokio::test]
async fn a_keyring_that_decrypts_nothing_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    store
        .put(&key("k"), &token("wrong-key-secret"))
        .await
        .unwrap();
    drop(store);
    let err = reopen(dir.path(), || Keyring::new(key_n(2)))
        .await
        .unwrap_err();
    let SledError::WrongKey { sealed_with, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*sealed_with, key_n(1).id());
    let text = format!("{err} {err:?}");
    assert!(text.contains(&key_n(1).id().to_string()), "{text}");
    assert!(text.contains(&key_n(2).id().to_string()), "{text}");
    for material in [key_n(1).to_base64(), key_n(2).to_base64()] {
        assert!(!text.contains(&*material), "{text}");
    }
    assert!(!text.contains("wrong-key-secret"));
    // The right key still opens it, with the data intact.
    let store = reopen(dir.path(), || Keyring::new(key_n(1))).await.unwrap();
    assert!(store.get(&key("k")).await.unwrap().is_some());
}

#[tokio::test]
async fn rekey_moves_every_entry_to_the_current_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Keyring::new(key_n(1))).await;
    for i in 0..20 {
        store
            .put(&key(&format!("r{i}")), &token(&format!("rekey-{i}")))
            .await
            .unwrap();
    }
    // An expired entry, written as it would have been before it expired.
    let expired = AccessToken::new("old", SystemTime::now() - Duration::from_secs(7200))
        .with_expires_at(SystemTime::now() - Duration::from_secs(60));
    let sealed = store
        .keyring()
        .seal(&key("expired"), &encode_token(&expired))
        .unwrap();
    store
        .write_envelope(&key("expired"), &sealed)
        .await
        .unwrap();
    drop(store);

    let rotated = || Keyring::new(key_n(2)).with_previous(key_n(1)).unwrap();
    let store = reopen(dir.path(), rotated).await.unwrap();
    // Old entries read before the rekey.
    assert!(store.get(&key("r3")).await.unwrap().is_some());
    store
        .put(&key("new"), &token("under-new-key"))
        .await
        .unwrap();
    let report = store.rekey().await.unwrap();
    assert_eq!(
        (report.rewritten, report.already_current, report.removed),
        (20, 1, 1)
    );
    for i in 0..20 {
        let env = store
            .read_envelope(&key(&format!("r{i}")))
            .unwrap()
            .unwrap();
        assert_eq!(envelope_key_id(&env).unwrap(), key_n(2).id());
    }
    drop(store);

    // The old key can go now.
    let store = reopen(dir.path(), || Keyring::new(key_n(2))).await.unwrap();
    for i in 0..20 {
        let t = store.get(&key(&format!("r{i}"))).await.unwrap().unwrap();
        assert_eq!(t.secret().expose(), format!("rekey-{i}"));
    }
    assert_eq!(store.stats().corrupt_reads, 0);
}

#[tokio::test]
async fn writes_stop_at_the_encryption_limit_and_ask_for_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 10;
    let open_with = |ring: Keyring| {
        SledStore::builder(dir.path(), ring)
            .durability(Durability::Background)
            .max_encryptions_per_key(limit)
            .open()
    };
    let store = open_with(Keyring::new(key_n(1))).await.unwrap();
    let mut stored = 0;
    let err = loop {
        match store
            .put(&key(&format!("l{stored}")), &token("limit"))
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored <= limit, "no limit enforced");
    };
    // One encryption went to the key check written at open.
    assert_eq!(stored, limit - 1);
    assert_eq!(store.encryptions(), limit);
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("rotate the key"), "{text}");
    assert!(text.contains(&key_n(1).id().to_string()), "{text}");
    // Reads go on.
    assert!(store.get(&key("l0")).await.unwrap().is_some());
    drop(store);

    // The count survives a restart...
    let store = loop {
        match open_with(Keyring::new(key_n(1))).await {
            Err(SledError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(25)).await,
            other => break other,
        }
    };
    // (opening writes nothing under an exhausted key that was already
    // current, so it succeeds and stays read-only)
    let store = store.unwrap();
    assert!(store.put(&key("again"), &token("limit")).await.is_err());
    drop(store);

    // ...and a rotation lifts it.
    let store = loop {
        match open_with(Keyring::new(key_n(2)).with_previous(key_n(1)).unwrap()).await {
            Err(SledError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(25)).await,
            other => break other.unwrap(),
        }
    };
    store
        .put(&key("after-rotation"), &token("limit"))
        .await
        .unwrap();
    assert!(store.get(&key("l0")).await.unwrap().is_some());
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .filter(|p| !p.ends_with("token-sled.lock"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_database_of_a_future_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    store.put(&key("k"), &token("future-secret")).await.unwrap();
    drop(store);
    // Let the dropped store's threads finish writing.
    drop(reopen(dir.path(), || Keyring::new(key_n(1))).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let marker = dir.path().join("token-sled.format");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "token-sled store format 1\n"
    );
    std::fs::write(&marker, "token-sled store format 2\n").unwrap();
    let before = snapshot(dir.path());
    let err = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, SledError::FutureFormat { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("store format 2"), "{text}");
    assert!(text.contains("left untouched"), "{text}");
    assert_eq!(snapshot(dir.path()), before, "files changed");
}

#[tokio::test]
async fn a_damaged_database_is_quarantined_and_the_store_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    store
        .put(&key("k"), &token("damaged-secret"))
        .await
        .unwrap();
    drop(store);
    drop(reopen(dir.path(), || Keyring::new(key_n(1))).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Damage sled's config file: its checksum no longer matches.
    let conf = dir.path().join("sled").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    for b in bytes.iter_mut().take(16) {
        *b ^= 0x5a;
    }
    std::fs::write(&conf, &bytes).unwrap();

    let store = reopen(dir.path(), || Keyring::new(key_n(1))).await.unwrap();
    let q = store
        .quarantine()
        .expect("the damaged database was not quarantined")
        .clone();
    assert_eq!(q.from, dir.path().join("sled"));
    assert!(q.to.starts_with(dir.path()), "{}", q.to.display());
    assert!(
        q.to.join("conf").is_file(),
        "the damaged files were not kept"
    );
    let warning = q.to_string();
    assert!(warning.contains(&q.from.display().to_string()), "{warning}");
    assert!(warning.contains(&q.to.display().to_string()), "{warning}");
    // Empty, and working.
    assert!(store.get(&key("k")).await.unwrap().is_none());
    store
        .put(&key("k"), &token("after-quarantine"))
        .await
        .unwrap();
    assert!(store.get(&key("k")).await.unwrap().is_some());
}

#[tokio::test]
async fn expired_entries_are_swept_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let expired = AccessToken::new("dead", SystemTime::now() - Duration::from_secs(7200))
        .with_expires_at(SystemTime::now() - Duration::from_secs(1));
    // Filled with no sweeper running, so that the count before sweeping is
    // certain; then reopened with a fast one.
    {
        let store = SledStore::builder(dir.path(), Keyring::new(key_n(1)))
            .sweep_interval(None)
            .open()
            .await
            .unwrap();
        store.put(&key("live"), &token("live")).await.unwrap();
        for i in 0..5 {
            let k = key(&format!("dead{i}"));
            let sealed = store.keyring().seal(&k, &encode_token(&expired)).unwrap();
            store.write_envelope(&k, &sealed).await.unwrap();
        }
        assert_eq!(store.len(), 6);
        store.flush().await.unwrap();
    }
    let store = reopen_with(|| {
        SledStore::builder(dir.path(), Keyring::new(key_n(1)))
            .sweep_interval(Some(Duration::from_millis(20)))
    })
    .await
    .unwrap();
    // Eventually (the sweeper's pace is not what is tested), only the live
    // entry remains.
    for _ in 0..1000 {
        if store.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.len(), 1);
    assert!(store.get(&key("live")).await.unwrap().is_some());
    // And by hand.
    let sealed = store
        .keyring()
        .seal(&key("dead"), &encode_token(&expired))
        .unwrap();
    store.write_envelope(&key("dead"), &sealed).await.unwrap();
    let manual = SledStore::builder(dir.path().join("manual"), Keyring::new(key_n(1)))
        .sweep_interval(None)
        .open()
        .await
        .unwrap();
    let sealed = manual
        .keyring()
        .seal(&key("dead"), &encode_token(&expired))
        .unwrap();
    manual.write_envelope(&key("dead"), &sealed).await.unwrap();
    manual.put(&key("live"), &token("live")).await.unwrap();
    let report = manual.sweep().await.unwrap();
    assert_eq!((report.kept, report.removed), (1, 1));
}

#[tokio::test]
async fn debug_and_errors_show_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key1 = key_n(0x42);
    let material = key1.to_base64();
    let store = SledStore::open(dir.path(), Keyring::new(key1))
        .await
        .unwrap();
    store
        .put(&key("k"), &token("debug-secret-value"))
        .await
        .unwrap();
    let text = format!(
        "{store:?} {:?}",
        SledStore::builder("/x", Keyring::new(key_n(0x42)))
    );
    assert!(!text.contains("debug-secret-value"), "{text}");
    assert!(!text.contains(&*material), "{text}");
    assert!(!text.contains("66, 66"), "{text}");
    assert!(text.contains(&key_n(0x42).id().to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_removes_only_the_rejected_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    let k = key("k");
    let current = token("current-token");
    store.put(&k, &current).await.unwrap();
    assert!(!store
        .invalidate(&k, &token("an-older-token"))
        .await
        .unwrap());
    assert!(store.get(&k).await.unwrap().is_some());
    assert!(store.invalidate(&k, &current).await.unwrap());
    assert!(store.get(&k).await.unwrap().is_none());
    assert!(!store.invalidate(&k, &current).await.unwrap());
}

#[tokio::test]
async fn keys_lists_every_stored_entry_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Keyring::new(key_n(1))).await;
    assert!(store.keys().unwrap().is_empty());
    for name in ["b", "a", "c"] {
        store
            .put(&key(name), &token(&format!("secret-{name}")))
            .await
            .unwrap();
    }
    store.remove(&key("c")).await.unwrap();
    let keys: Vec<String> = store
        .keys()
        .unwrap()
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(keys, [key("a").as_str(), key("b").as_str()]);
    assert_eq!(keys.len(), store.len());
}

#[tokio::test]
async fn a_database_whose_files_are_all_garbage_is_quarantined_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), Keyring::new(key_n(1)))
        .await
        .unwrap();
    store
        .put(&key("k"), &token("garbage-secret"))
        .await
        .unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Every file of sled's directory overwritten: sled calls this
    // "unsupported", not "corruption", and it must still be moved aside.
    let mut stack = vec![dir.path().join("sled")];
    let mut overwritten = 0;
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let len = std::fs::metadata(&path).unwrap().len() as usize;
                std::fs::write(&path, vec![0xA5; len.max(64)]).unwrap();
                overwritten += 1;
            }
        }
    }
    assert!(overwritten > 0);

    let store = reopen(dir.path(), || Keyring::new(key_n(1))).await.unwrap();
    let q = store
        .quarantine()
        .expect("garbage files were not quarantined");
    assert!(
        q.to.join("conf").is_file(),
        "the damaged files were not kept"
    );
    assert!(store.get(&key("k")).await.unwrap().is_none());
    store.put(&key("k"), &token("fresh")).await.unwrap();
    assert!(store.get(&key("k")).await.unwrap().is_some());
}
