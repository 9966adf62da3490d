//! The token-conformance suite on `RedisStore` against a standalone server
//! (xtask's, from `TOKEN_CACHE_REDIS_URL`, or a private one).

mod support;

use token_conformance::{libtest_mimic::Arguments, Fixture};
use token_redis::{RedisConfig, RedisStore};

fn main() {
    let Some((url, server)) = support::standalone("the redis conformance suite") else {
        return;
    };
    let conclusion = token_conformance::run(
        "redis",
        move || {
            let url = url.clone();
            async move {
                // Each check gets its own prefix; the second handle is a
                // separate client on the same prefix, as another process is.
                let prefix = support::fresh_prefix("conformance");
                let config = RedisConfig::new(url).key_prefix(prefix);
                let store = RedisStore::connect(config.clone()).await?;
                let second = RedisStore::connect(config).await?;
                Ok(Fixture::new(store.clone())
                    .with_second(second)
                    .with_raw_access(support::Raw(store)))
            }
        },
        &Arguments::from_args(),
    );
    drop(server);
    conclusion.exit()
}
