//! The token-conformance suite on `RedisStore` against a 3-master Redis Cluster
//! (xtask's, from `TOKEN_CACHE_REDIS_CLUSTER_URLS`, or a private one).

mod support;

use token_conformance::{libtest_mimic::Arguments, Fixture};
use token_redis::{RedisConfig, RedisStore};

fn main() {
    let Some((urls, cluster)) = token_testkit::redis_cluster() else {
        return;
    };
    let conclusion = token_conformance::run(
        "redis-cluster",
        move || {
            let urls = urls.clone();
            async move {
                // Each check gets its own prefix; the second handle is a
                // separate client on the same prefix, as another process is.
                let prefix = support::fresh_prefix("conformance");
                let config = RedisConfig::cluster(urls).with_key_prefix(prefix);
                let store = RedisStore::connect(config.clone()).await?;
                let second = RedisStore::connect(config).await?;
                Ok(Fixture::new(store.clone())
                    .with_second(second)
                    .with_raw_access(support::Raw(store)))
            }
        },
        &Arguments::from_args(),
    );
    drop(cluster);
    conclusion.exit()
}
