//! A `reqwest-middleware` middleware that puts the cached token on every
//! request and recovers from a rejected one.

use std::fmt;

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use token_core::{AccessToken, TokenCache, TokenHandle, TokenRequest};

use crate::challenge::rejects_token;
use crate::header::authorization_value;

/// Sets `Authorization: <type> <token>` on each request from a
/// [`TokenCache`], and handles the resource server's rejection of a token.
///
/// - The header value is marked sensitive, so reqwest and hyper never log it.
/// - On `401` with `WWW-Authenticate: ... error="invalid_token"`, the token
///   that was sent is invalidated in the cache (only if it is still the
///   cached one, so 50 concurrent 401s for one old token cause one refresh),
///   and the request is sent once more with a fresh token when it can be
///   cloned (a streaming body cannot; the 401 is then returned as is).
/// - A `403` (`insufficient_scope`) or any other answer invalidates nothing:
///   a new token would have the same scopes.
/// - When no token can be had, the request is not sent and the error says
///   why; neither that error nor any other ever contains a token.
///
/// ```no_run
/// # async fn run(cache: token_core::TokenCache) -> Result<(), Box<dyn std::error::Error>> {
/// use token_core::TokenRequest;
/// use token_http::TokenMiddleware;
///
/// let request = TokenRequest::builder().scope("orders.read").build();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(TokenMiddleware::new(&cache, &request))
///     .build();
/// let orders = client.get("https://orders.example/v1/orders").send().await?;
/// # let _ = orders; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenMiddleware {
    handle: TokenHandle,
}

impl TokenMiddleware {
    /// Tokens for `request` from `cache`.
    pub fn new(cache: &TokenCache, request: &TokenRequest) -> Self {
        Self::from_handle(cache.handle(request))
    }

    /// Tokens from a pre-bound handle.
    pub fn from_handle(handle: TokenHandle) -> Self {
        Self { handle }
    }

    async fn authorize(
        &self,
        request: &mut Request,
    ) -> Result<AccessToken, reqwest_middleware::Error> {
        let token = self.handle.token().await.map_err(|e| {
            reqwest_middleware::Error::Middleware(
                anyhow::Error::new(e).context("could not obtain an access token for the request"),
            )
        })?;
        let value = authorization_value(&token)
            .map_err(|e| reqwest_middleware::Error::Middleware(anyhow::Error::new(e)))?;
        request.headers_mut().insert(AUTHORIZATION, value);
        Ok(token.to_access_token())
    }
}

#[async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let retry = req.try_clone();
        let sent = self.authorize(&mut req).await?;
        let response = next.clone().run(req, extensions).await?;
        if !rejects_token(response.status(), response.headers()) {
            return Ok(response);
        }
        let dropped = self.handle.invalidate(&sent).await;
        tracing::info!(
            key = %self.handle.cache_key(),
            dropped,
            "the resource server rejected the access token (401 invalid_token)"
        );
        let Some(mut retry) = retry else {
            return Ok(response);
        };
        let fresh = self.authorize(&mut retry).await?;
        if fresh.same_secret(&sent) {
            // The cache could not give anything newer: sending the same
            // token again would get the same answer.
            return Ok(response);
        }
        drop(response);
        next.run(retry, extensions).await
    }
}

impl fmt::Debug for TokenMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMiddleware")
            .field("key", self.handle.cache_key())
            .finish()
    }
}
