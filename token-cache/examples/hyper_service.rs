//! A hyper service that calls a downstream API through the token
//! middleware: every incoming request is answered with the downstream's
//! answer to `GET <downstream><path>`, sent with `Authorization: Bearer ...`
//! from the cache (one IdP call per token lifetime, whatever the traffic).
//!
//! ```sh
//! export TOKEN_URL=https://idp.example/oauth2/token CLIENT_ID=orders-client CLIENT_SECRET=...
//! export SCOPE=orders.read DOWNSTREAM_URL=https://orders.internal
//! cargo run -p token-cache --features http --example hyper_service
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use token_cache::{
    reqwest, reqwest_middleware, OAuthCredential, TokenCache, TokenMiddleware, TokenRequest,
};
use tokio::net::TcpListener;

/// What the example needs, from the environment in `main`.
pub struct Config {
    /// The IdP's token endpoint.
    pub token_url: String,
    /// The client.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The scope the downstream API wants.
    pub scope: String,
    /// The downstream API's base URL.
    pub downstream_url: String,
    /// How many requests to send to the service.
    pub requests: usize,
}

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    /// The status of each request to the service.
    pub statuses: Vec<u16>,
    /// IdP calls made.
    pub idp_calls: u64,
}

/// The service's shared state: a client that puts the cached token on every
/// request.
struct State {
    downstream: reqwest_middleware::ClientWithMiddleware,
    downstream_url: String,
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let url = format!("{}{}", state.downstream_url, req.uri().path());
    let (status, body) = match state.downstream.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap_or_default())
        }
        // No token could be had, or the downstream is unreachable.
        Err(e) => (502, Bytes::from(format!("downstream failed: {e}\n"))),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(response)
}

/// Starts the service on a loopback port, sends it `config.requests`
/// requests, and stops it.
pub async fn run(config: &Config) -> Result<Outcome, Box<dyn Error>> {
    let credential =
        OAuthCredential::client_credentials(config.token_url.as_str(), config.client_id.as_str())
            .client_secret(config.client_secret.as_str())
            .build()?;
    let cache = TokenCache::builder(credential).build();
    let request = TokenRequest::builder().scope(&config.scope).build();
    let state = Arc::new(State {
        downstream: reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(TokenMiddleware::new(&cache, &request))
            .build(),
        downstream_url: config.downstream_url.trim_end_matches('/').to_owned(),
    });

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("service listening on http://{addr}");
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&state), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    // Callers of the service (they know nothing of tokens).
    let caller = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..config.requests {
        let response = caller
            .get(format!("http://{addr}/v1/orders/{i}"))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
    }
    server.abort();
    Ok(Outcome {
        statuses,
        idp_calls: cache.stats().idp_calls,
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
        downstream_url: env("DOWNSTREAM_URL")?,
        requests: 5,
    };
    let outcome = run(&config).await?;
    println!("{outcome:?}");
    Ok(())
}
