//! A `reqwest-middleware` middleware that puts the cached token on every
//! request and recovers from a rejected one.

use std::fmt;

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use token_core::{AccessToken, TokenCache, TokenHandle, TokenRequest};

use crate::challenge::{asks_for_dpop_nonce, rejects_dpop_token, rejects_token};
use crate::dpop::{count_nonce_retry, resource_proof, DpopKey, DpopRole, DPOP};
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
/// - With a DPoP key ([`dpop`](Self::dpop)) the token must be a DPoP token:
///   each request carries `Authorization: DPoP <token>` and a fresh `DPoP`
///   proof (`htm`, `htu`, `ath`, the resource server's last nonce). The
///   server's `DPoP-Nonce` is learned from every answer, and a `401` with
///   `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a new nonce is
///   sent once more with a new proof (when the request can be cloned).
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
    dpop: Option<DpopKey>,
}

impl TokenMiddleware {
    /// Tokens for `request` from `cache`.
    pub fn new(cache: &TokenCache, request: &TokenRequest) -> Self {
        Self::from_handle(cache.handle(request))
    }

    /// Tokens from a pre-bound handle.
    pub fn from_handle(handle: TokenHandle) -> Self {
        Self { handle, dpop: None }
    }

    /// Signs a DPoP proof with `key` for every request (RFC 9449 §7): the
    /// key whose thumbprint the cache's request is bound to.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
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
        let token = token.to_access_token();
        let proof = resource_proof(
            self.dpop.as_ref(),
            &token,
            request.method().as_str(),
            request.url().as_str(),
        )
        .map_err(|e| reqwest_middleware::Error::Middleware(anyhow::Error::new(e)))?;
        request.headers_mut().insert(AUTHORIZATION, value);
        if let Some(proof) = proof {
            request.headers_mut().insert(DPOP, proof);
        }
        Ok(token)
    }

    /// Learns the resource server's nonce from `response`; true when it
    /// asks for one (`use_dpop_nonce`) that we had not used.
    fn wants_new_nonce(&self, url: &str, response: &Response) -> bool {
        let Some(key) = &self.dpop else {
            return false;
        };
        let new = key.learn_nonce(DpopRole::ResourceServer, url, response.headers());
        new && asks_for_dpop_nonce(response.status(), response.headers())
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
        let url = req.url().to_string();
        let mut retry = req.try_clone();
        let mut sent = self.authorize(&mut req).await?;
        let mut response = next.clone().run(req, extensions).await?;
        if self.wants_new_nonce(&url, &response) {
            if let Some(mut again) = retry.take() {
                retry = again.try_clone();
                count_nonce_retry(DpopRole::ResourceServer);
                sent = self.authorize(&mut again).await?;
                drop(response);
                response = next.clone().run(again, extensions).await?;
                // Remember a nonce this answer brings for the next request.
                let _ = self.wants_new_nonce(&url, &response);
            }
        }
        let rejected = if self.dpop.is_some() {
            rejects_dpop_token(response.status(), response.headers())
        } else {
            rejects_token(response.status(), response.headers())
        };
        if !rejected {
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
            .field("dpop", &self.dpop)
            .finish()
    }
}
