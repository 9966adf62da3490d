//! The token-conformance suite on `RedisStore` against a 3-master Redis Cluster
//! (xtask's, from `TOKEN_CACHE_REDIS_CLUSTER_URLS`, or a private one): in
//! clear (`redis-cluster::...`) and, with the `encryption` feature, with a
//! keyring (`redis-cluster-encrypted::...`), so the encryption checks run on
//! a cluster too.

mod support;

use token_conformance::{libtest_mimic, libtest_mimic::Arguments, Fixture};
use token_redis::{RedisConfig, RedisStore};

/// A fresh fixture: its own prefix; the second handle is a separate client
/// on the same prefix, as another process is.
async fn fixture(config: RedisConfig) -> Result<Fixture, token_core::BoxError> {
    let config = config.with_key_prefix(support::fresh_prefix("conformance"));
    let store = RedisStore::connect(config.clone()).await?;
    let second = RedisStore::connect(config).await?;
    Ok(Fixture::new(store.clone())
        .with_second(second)
        .with_raw_access(support::Raw(store)))
}

fn main() {
    let Some((urls, cluster)) = token_testkit::redis_cluster() else {
        return;
    };
    let plain = urls.clone();
    #[allow(unused_mut)]
    let mut trials = token_conformance::trials("redis-cluster", move || {
        fixture(RedisConfig::cluster(plain.clone()).with_plaintext())
    });
    #[cfg(feature = "encryption")]
    trials.extend(token_conformance::trials(
        "redis-cluster-encrypted",
        move || {
            let urls = urls.clone();
            async move {
                let keyring = token_core::Keyring::new(token_core::EncryptionKey::generate()?);
                fixture(RedisConfig::cluster(urls).with_encryption(keyring)).await
            }
        },
    ));
    let conclusion = libtest_mimic::run(&Arguments::from_args(), trials);
    drop(cluster);
    conclusion.exit()
}
