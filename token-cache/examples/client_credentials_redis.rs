//! Client credentials, with tokens shared through Redis and encrypted there.
//!
//! Two caches stand for two instances of a service: the first asks the IdP,
//! the second finds the token in Redis (sealed with the keyring's key) and
//! asks nobody.
//!
//! ```sh
//! export TOKEN_URL=https://idp.example/oauth2/token CLIENT_ID=orders-client
//! export CLIENT_SECRET=...  SCOPE=orders.read  REDIS_URL=redis://127.0.0.1:6379
//! export TOKEN_CACHE_KEYS=$(head -c 32 /dev/urandom | base64)
//! cargo run -p token-cache --features http,redis --example client_credentials_redis
//! ```

use std::error::Error;

use token_cache::{Keyring, OAuthCredential, RedisConfig, RedisStore, TokenCache, TokenRequest};

/// What the example needs, from the environment in `main`.
pub struct Config {
    /// The IdP's token endpoint.
    pub token_url: String,
    /// The client.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The scope to ask for.
    pub scope: String,
    /// `redis://host:port`.
    pub redis_url: String,
    /// Prefix of the Redis keys.
    pub key_prefix: String,
    /// The keys values are sealed with: base64 AES-256 keys, comma-separated,
    /// the first one current (what `Keyring::from_env` reads from a variable).
    pub keys: String,
}

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    /// IdP calls made by the first instance.
    pub first_idp_calls: u64,
    /// IdP calls made by the second instance (0: it found the token in Redis).
    pub second_idp_calls: u64,
    /// Whether both instances hold the same token.
    pub same_token: bool,
}

/// One instance of the service: a cache on the shared, encrypted store.
async fn instance(config: &Config) -> Result<TokenCache, Box<dyn Error>> {
    let credential =
        OAuthCredential::client_credentials(config.token_url.as_str(), config.client_id.as_str())
            .client_secret(config.client_secret.as_str())
            .build()?;
    let store = RedisStore::connect(
        RedisConfig::new(config.redis_url.as_str())
            .with_key_prefix(config.key_prefix.as_str())
            .with_encryption(Keyring::from_base64_list(&config.keys)?),
    )
    .await?;
    Ok(TokenCache::builder(credential).store(store).build())
}

/// Runs the example.
pub async fn run(config: &Config) -> Result<Outcome, Box<dyn Error>> {
    let request = TokenRequest::builder().scope(&config.scope).build();

    let first = instance(config).await?;
    let token = first.get_token(&request).await?;
    // The header value, for a request you build by hand (print it nowhere).
    let header = token.authorization_header();
    println!(
        "instance 1: got a {} token ({} bytes of header) expiring at {:?}",
        token.token_type(),
        header.expose().len(),
        token.expires_at()
    );

    let second = instance(config).await?;
    let again = second.get_token(&request).await?;
    println!(
        "instance 2: got the same token from Redis: {}",
        again.same_secret(&token)
    );

    Ok(Outcome {
        first_idp_calls: first.stats().idp_calls,
        second_idp_calls: second.stats().idp_calls,
        same_token: again.same_secret(&token),
    })
}

fn env(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let config = Config {
        token_url: env("TOKEN_URL")?,
        client_id: env("CLIENT_ID")?,
        client_secret: env("CLIENT_SECRET")?,
        scope: env("SCOPE").unwrap_or_else(|_| "orders.read".into()),
        redis_url: env("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        key_prefix: "example:tokens:".into(),
        keys: env("TOKEN_CACHE_KEYS")?,
    };
    let outcome = run(&config).await?;
    println!("{outcome:?}");
    Ok(())
}
