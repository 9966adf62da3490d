//! On-behalf-of: a token per user, by token exchange (RFC 8693).
//!
//! An API receives its callers' bearer tokens and calls another API on
//! their behalf: each caller's token is exchanged for one to call the other
//! API with, and cached per caller (the request's `Actor`): a user's
//! repeated requests cost one exchange per token lifetime, and one user's
//! token is never handed to another. Only a SHA-256 digest of the caller's
//! token is in the cache key.
//!
//! ```sh
//! export TOKEN_URL=https://idp.example/oauth2/token CLIENT_ID=orders-api CLIENT_SECRET=...
//! export SCOPE=orders.read USER_TOKENS=eyJ...,eyJ...   # callers' bearer tokens
//! cargo run -p token-cache --features http --example on_behalf_of
//! ```

use std::error::Error;

use token_cache::{Actor, OAuthCredential, Secret, TokenCache, TokenRequest};

/// What the example needs, from the environment in `main`.
pub struct Config {
    /// The IdP's token endpoint.
    pub token_url: String,
    /// This API's client.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The scope to ask for on the callers' behalf.
    pub scope: String,
    /// The callers' bearer tokens, one per user.
    pub user_tokens: Vec<String>,
}

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    /// Requests served (three per user).
    pub requests: usize,
    /// Token exchanges made.
    pub idp_calls: u64,
    /// Whether every user got a token of their own.
    pub distinct_per_user: bool,
}

/// The request for one caller: their token is the actor (a secret).
fn on_behalf_of(scope: &str, user_token: &str) -> TokenRequest {
    TokenRequest::builder()
        .scope(scope)
        .actor(Actor::Assertion(Secret::from(user_token)))
        .build()
}

/// Runs the example.
pub async fn run(config: &Config) -> Result<Outcome, Box<dyn Error>> {
    let credential =
        OAuthCredential::token_exchange(config.token_url.as_str(), config.client_id.as_str())
            .client_secret(config.client_secret.as_str())
            .build()?;
    let cache = TokenCache::builder(credential).build();

    let mut tokens = Vec::new();
    let mut requests = 0;
    for (user, user_token) in config.user_tokens.iter().enumerate() {
        // Three requests of this user: one exchange, then the cache.
        for _ in 0..3 {
            let token = cache
                .get_token(&on_behalf_of(&config.scope, user_token))
                .await?;
            requests += 1;
            if tokens.len() == user {
                tokens.push(token.to_access_token());
            }
        }
        println!("user {user}: served 3 requests");
    }
    let distinct_per_user = tokens
        .iter()
        .enumerate()
        .all(|(i, a)| tokens[i + 1..].iter().all(|b| !a.same_secret(b)));
    Ok(Outcome {
        requests,
        idp_calls: cache.stats().idp_calls,
        distinct_per_user,
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
        user_tokens: env("USER_TOKENS")?.split(',').map(str::to_owned).collect(),
    };
    let outcome = run(&config).await?;
    println!("{outcome:?}");
    Ok(())
}
