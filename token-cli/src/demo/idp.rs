//! The demo's IdP: a token endpoint on loopback, served by hyper, that
//! checks `client_secret_basic`, counts its calls and issues short-lived
//! tokens, so the real `OAuthCredential` is exercised end to end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::error::CliError;

/// How long the IdP takes to issue a token: a real one takes tens of ms.
pub(crate) const LATENCY: Duration = Duration::from_millis(20);

/// The largest request body read: a token request is a short form.
const MAX_BODY: usize = 64 * 1024;

/// A running local IdP. Stops when dropped.
#[derive(Debug)]
pub(crate) struct LocalIdp {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct Config {
    client_id: String,
    secret: Zeroizing<String>,
    lifetime: u64,
    calls: Arc<AtomicU64>,
}

impl LocalIdp {
    /// Listens on 127.0.0.1 (a free port) for `client_id` / `secret`,
    /// issuing tokens that live `lifetime` seconds.
    pub(crate) async fn start(
        client_id: &str,
        secret: &str,
        lifetime: u64,
    ) -> Result<Self, CliError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
            CliError::internal(format!("cannot start the local IdP on loopback: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::internal(format!("cannot start the local IdP: {e}")))?;
        let calls = Arc::new(AtomicU64::new(0));
        let config = Arc::new(Config {
            client_id: client_id.to_owned(),
            secret: Zeroizing::new(secret.to_owned()),
            lifetime,
            calls: Arc::clone(&calls),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&config)));
                    // Keep-alive connections from the credential's pool; a
                    // connection error ends only that connection.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, calls, task })
    }

    /// The token endpoint URL.
    pub(crate) fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Token requests answered so far (successful or not).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// A shared handle on the call counter (for the progress line).
    pub(crate) fn calls_handle(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.calls)
    }
}

impl Drop for LocalIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Answers one request: `POST /token` with the client's Basic credentials
/// gets a token, anything else an OAuth-style error.
async fn handle(
    request: Request<Incoming>,
    config: Arc<Config>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || request.uri().path() != "/token" {
        return Ok(json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found"}"#.to_owned(),
        ));
    }
    let n = config.calls.fetch_add(1, Ordering::Relaxed) + 1;
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| Zeroizing::new(v.to_owned()));
    // The form itself is not needed (client credentials, any scope), but
    // is read to the end so the connection can be reused.
    if Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .is_err()
    {
        return Ok(json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_request"}"#.to_owned(),
        ));
    }
    if !authorized(authorization.as_deref().map(String::as_str), &config) {
        return Ok(json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client"}"#.to_owned(),
        ));
    }
    tokio::time::sleep(LATENCY).await;
    Ok(json(
        StatusCode::OK,
        format!(
            r#"{{"access_token":"demo-{n}-{:016x}","token_type":"Bearer","expires_in":{}}}"#,
            token_core::backend::random_u128() as u64,
            config.lifetime
        ),
    ))
}

fn authorized(header: Option<&str>, config: &Config) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let decoded = Zeroizing::new(decoded);
    let expected = Zeroizing::new(format!("{}:{}", config.client_id, config.secret.as_str()));
    decoded.as_slice() == expected.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_tokens_to_its_client_only_and_counts_every_call() {
        let idp = LocalIdp::start("c", "s3cret", 60).await.expect("start");
        let good = token_http::OAuthCredential::client_credentials(idp.token_url(), "c")
            .client_secret(token_core::Secret::new("s3cret"))
            .build()
            .expect("credential");
        let bad = token_http::OAuthCredential::client_credentials(idp.token_url(), "c")
            .client_secret(token_core::Secret::new("wrong"))
            .build()
            .expect("credential");
        let request = token_core::TokenRequest::builder().scope("x").build();
        use token_core::Credential as _;
        let token = good.fetch(&request, None).await.expect("a token");
        assert!(token.secret().expose().starts_with("demo-1-"));
        let err = bad.fetch(&request, None).await.expect_err("refused");
        assert_eq!(err.code(), Some("invalid_client"));
        assert_eq!(idp.calls(), 2);
    }
}
