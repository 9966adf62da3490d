//! `SledStore` against its floors, in one run:
//!
//! - hit: `SledStore::get` (sled get + AES-256-GCM open + token decode +
//!   expiry check) against `floor_raw_get_decrypt`: a raw sled `get` of the
//!   same envelope bytes and an AES-256-GCM decrypt of them with a prepared
//!   cipher, nothing else.
//! - put: `SledStore::put` with `Durability::Flush` (newer-wins
//!   compare-and-swap, seal, flush to disk, on tokio's blocking pool)
//!   against `floor_raw_insert_flush`: a raw sled `insert` of an envelope of
//!   the same size and `flush`. `put_background` shows what the flush
//!   costs.
//!
//! Run with `cargo bench -p benches --bench sled`; results are in
//! docs/BENCHMARKS.md. Target: within 1.3x of each floor.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use benches::poll_once;
use criterion::Criterion;
use token_core::{
    AccessToken, CacheKey, CacheStore, EncryptionKey, Keyring, PutOutcome, TokenRequest,
};
use token_sled::{Durability, SledStore};

const RAW_KEY: [u8; 32] = [0x5c; 32];

fn access_token(expires_in: Duration) -> AccessToken {
    // A realistic JWT-sized access token.
    AccessToken::new("e".repeat(900), SystemTime::now())
        .with_expires_in(expires_in)
        .with_refresh_at(SystemTime::now() + expires_in / 2)
}

fn bench(c: &mut Criterion) {
    // A multi-thread runtime, as servers use: writes run under
    // `block_in_place` there.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let req = TokenRequest::builder()
        .scope("orders.read")
        .audience("https://api.example")
        .build();
    let key = CacheKey::new("bench-idp", &req);

    let open = |name: &str, durability| {
        rt.block_on(
            SledStore::builder(
                dir.path().join(name),
                Keyring::new(EncryptionKey::from_bytes(RAW_KEY)),
            )
            .durability(durability)
            .sweep_interval(None)
            .open(),
        )
        .expect("open")
    };
    let store = open("store", Durability::Flush);
    let background = open("background", Durability::Background);
    rt.block_on(store.put(&key, &access_token(Duration::from_secs(3600))))
        .expect("put");
    let envelope = store.read_envelope(&key).expect("read").expect("stored");

    // The floor: a plain sled database holding the same bytes.
    let raw = sled::Config::new()
        .path(dir.path().join("raw"))
        .cache_capacity(token_sled::DEFAULT_CACHE_CAPACITY)
        .open()
        .expect("raw sled");
    let raw_tree = raw.open_tree("tokens").expect("tree");
    raw_tree
        .insert(key.as_str().as_bytes(), envelope.as_slice())
        .expect("insert");
    let cipher = Aes256Gcm::new(<&Key<Aes256Gcm>>::from(&RAW_KEY));
    let mut aad = envelope[..5].to_vec();
    aad.extend_from_slice(key.as_str().as_bytes());
    let raw_key = key.as_str().as_bytes().to_vec();
    // The put floor writes elsewhere, so the hit floor keeps reading intact
    // bytes.
    let raw_put_key = [raw_key.as_slice(), b"/put"].concat();

    let mut g = c.benchmark_group("sled_hit");
    g.bench_function("floor_raw_get_decrypt", |b| {
        b.iter(|| floor_get(&raw_tree, &raw_key, &cipher, &aad, false))
    });
    g.bench_function("floor_raw_get_decrypt_decode", |b| {
        // The floor plus what any token store must also do with the
        // plaintext: decode it with token-core's codec (and zeroize it).
        b.iter(|| floor_get(&raw_tree, &raw_key, &cipher, &aad, true))
    });
    g.bench_function("sled_store_get", |b| {
        b.iter(|| {
            let t = poll_once(store.get(black_box(&key)))
                .expect("ready")
                .expect("get")
                .expect("hit");
            black_box(t.secret().len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sled_put");
    g.sample_size(20);
    let mut n = 0u64;
    g.bench_function("floor_raw_insert_flush", |b| {
        b.iter(|| {
            n += 1;
            let mut value = envelope.clone();
            value[20] ^= n as u8;
            raw_tree
                .insert(raw_put_key.as_slice(), value)
                .expect("insert");
            raw.flush().expect("flush");
        })
    });
    let mut lifetime = 3600u64;
    g.bench_function("sled_store_put_durable", |b| {
        b.iter(|| {
            // Each token expires later than the last: every put stores.
            lifetime += 1;
            let t = access_token(Duration::from_secs(lifetime));
            rt.block_on(store.put(&key, &t)).expect("put");
        })
    });
    let mut bg_lifetime = 3600u64;
    g.bench_function("sled_store_put_background", |b| {
        b.iter(|| {
            bg_lifetime += 1;
            let t = access_token(Duration::from_secs(bg_lifetime));
            rt.block_on(background.put(&key, &t)).expect("put");
        })
    });
    g.finish();

    // The ratios, from interleaved batches so that load from elsewhere hits
    // the store and its floor alike: the median of 30 batches each.
    let per_op = |batch: u64, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..batch {
            f();
        }
        start.elapsed().as_nanos() as f64 / batch as f64
    };
    let (mut floor, mut decode, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    let (mut flush_floor, mut put) = (Vec::new(), Vec::new());
    // Later than anything the criterion run stored, so every put stores.
    lifetime += 1 << 30;
    for _ in 0..30 {
        floor.push(per_op(2000, &mut || {
            black_box(floor_get(&raw_tree, &raw_key, &cipher, &aad, false));
        }));
        decode.push(per_op(2000, &mut || {
            black_box(floor_get(&raw_tree, &raw_key, &cipher, &aad, true));
        }));
        hit.push(per_op(2000, &mut || {
            let t = poll_once(store.get(&key))
                .expect("ready")
                .expect("get")
                .expect("hit");
            black_box(t.secret().len());
        }));
        flush_floor.push(per_op(20, &mut || {
            n += 1;
            let mut value = envelope.clone();
            value[20] ^= n as u8;
            raw_tree
                .insert(raw_put_key.as_slice(), value)
                .expect("insert");
            raw.flush().expect("flush");
        }));
        put.push(per_op(20, &mut || {
            lifetime += 1;
            let t = access_token(Duration::from_secs(lifetime));
            let outcome = rt.block_on(store.put(&key, &t)).expect("put");
            assert_eq!(outcome, PutOutcome::Stored);
        }));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, d, h) = (median(&mut floor), median(&mut decode), median(&mut hit));
    let (ff, p) = (median(&mut flush_floor), median(&mut put));
    println!(
        "\nsled hit: SledStore::get {:.2} us, floor (raw get + decrypt) {:.2} us, ratio {:.2} \
         (target <= 1.3); floor + decode_token {:.2} us, ratio {:.2}",
        h / 1000.0,
        f / 1000.0,
        h / f,
        d / 1000.0,
        h / d
    );
    println!(
        "sled durable put: SledStore::put {:.1} us, floor (raw insert + flush) {:.1} us, ratio {:.2} (target <= 1.3)",
        p / 1000.0,
        ff / 1000.0,
        p / ff
    );
}

/// The hit floor: a raw sled get and an AES-256-GCM decrypt with a prepared
/// cipher; with `decode`, also the token codec's decode of the plaintext.
fn floor_get(tree: &sled::Tree, key: &[u8], cipher: &Aes256Gcm, aad: &[u8], decode: bool) -> usize {
    let bytes = tree.get(black_box(key)).expect("get").expect("some");
    let nonce: [u8; 12] = bytes[5..17].try_into().expect("nonce");
    let tag: [u8; 16] = bytes[bytes.len() - 16..].try_into().expect("tag");
    let mut body = zeroize::Zeroizing::new(bytes[17..bytes.len() - 16].to_vec());
    cipher
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            body.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .expect("decrypt");
    if decode {
        token_core::backend::decode_token(&body)
            .expect("decode")
            .secret()
            .len()
    } else {
        body.len()
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
