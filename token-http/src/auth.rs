//! A tower middleware that puts the cached token on every request: for
//! hyper, tonic (gRPC) and any other `tower::Service` client.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use token_core::{TokenCache, TokenHandle, TokenRequest};
use tower_layer::Layer;
use tower_service::Service;

use crate::challenge::{rejects_dpop_token, rejects_token};
use crate::dpop::{resource_proof, DpopKey, DpopRole, DPOP};
use crate::header::authorization_value;

/// The error type of [`AddToken`]: the inner service's error, or the cache's
/// [`token_core::Error`] when no token could be had (downcast to tell).
pub use token_core::BoxError;

/// Wraps services in [`AddToken`]:
/// A tower middleware that puts the cached token on every request: for
/// hyper, tonic (gRPC) and any other `tower::Service` client.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use std::time::{Duration, SystemTime};
///
/// use http::{Request, Response};
/// use async_trait::async_trait;
/// use token_core::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
/// use token_http::AddTokenLayer;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[derive(Debug)] struct Idp;
/// # #[async_trait] impl Credential for Idp {
/// #     fn id(&self) -> &str { "idp" }
/// #     async fn fetch(&self, _: &TokenRequest, _: Option<&AccessToken>) -> Result<AccessToken, CredentialError> {
/// #         Ok(AccessToken::new("t0ken", SystemTime::now()).with_expires_in(Duration::from_secs(3600)))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let cache = TokenCache::builder(Idp).build();
/// let request = TokenRequest::builder().scope("orders.read").build();
///
/// // Stands in for a hyper client or a tonic channel.
/// let client = service_fn(|req: Request<String>| async move {
///     let auth = req.headers()["authorization"].clone();
///     assert!(auth.is_sensitive());
///     Ok::<_, Infallible>(Response::new(auth.to_str().unwrap().len()))
/// });
/// let client = AddTokenLayer::new(&cache, &request).layer(client);
/// let response = client.oneshot(Request::new(String::new())).await?;
/// assert_eq!(*response.body(), "Bearer t0ken".len());
/// # Ok(()) }
/// ```
///
/// # Rejected tokens
///
/// On a `401` whose `WWW-Authenticate` says `error="invalid_token"`,
/// [`AddToken`] invalidates exactly the token it sent (if it is still the
/// cached one), so the next request carries a fresh token and a burst of
/// 401s for one old token causes one refresh. It does **not** resend the
/// request itself: a tower request body (hyper's `Incoming`, a tonic
/// stream) is consumed when sent and cannot, in general, be cloned, and
/// gRPC calls may not be safe to repeat. Where bodies are buffered and
/// calls idempotent, put `tower::retry` with a policy that clones the
/// request around this layer: every attempt passes through [`AddToken`] again
/// and picks up the fresh token. (The reqwest middleware,
/// [`TokenMiddleware`](crate::TokenMiddleware), does retry, since reqwest
/// can tell when a request is clonable.)
///
/// # DPoP
///
/// With a key ([`dpop`](Self::dpop)) each request carries
/// `Authorization: DPoP <token>` and a fresh `DPoP` proof with `ath` and the
/// resource server's last nonce (the request URI must then be absolute, as
/// a hyper or tonic client's is). The server's `DPoP-Nonce` is learned from
/// every answer, so after a `401` `use_dpop_nonce` the next attempt (a
/// `tower::retry` around this layer, as above) carries the new nonce; for
/// the same body reasons this layer does not resend by itself.
#[derive(Clone)]
pub struct AddTokenLayer {
    handle: TokenHandle,
    dpop: Option<DpopKey>,
}

impl AddTokenLayer {
    /// Tokens for `request` from `cache`.
    pub fn new(cache: &TokenCache, request: &TokenRequest) -> Self {
        Self::from_handle(cache.handle(request))
    }

    /// Tokens from a pre-bound handle.
    pub fn from_handle(handle: TokenHandle) -> Self {
        Self { handle, dpop: None }
    }

    /// Signs a DPoP proof with `key` for every request (see "DPoP" above).
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }
}

impl<S> Layer<S> for AddTokenLayer {
    type Service = AddToken<S>;

    fn layer(&self, inner: S) -> AddToken<S> {
        AddToken {
            inner,
            handle: self.handle.clone(),
            dpop: self.dpop.clone(),
        }
    }
}

impl fmt::Debug for AddTokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddTokenLayer")
            .field("key", self.handle.cache_key())
            .field("dpop", &self.dpop)
            .finish()
    }
}

/// Sets `Authorization: <type> <token>` (marked sensitive) on each request
/// and invalidates a token the server rejected. See [`AddTokenLayer`] for an
/// example and for what happens on a `401`.
#[derive(Clone)]
pub struct AddToken<S> {
    inner: S,
    handle: TokenHandle,
    dpop: Option<DpopKey>,
}

impl<S> AddToken<S> {
    /// Wraps `inner`, with tokens from `handle`.
    pub fn new(inner: S, handle: TokenHandle) -> Self {
        Self {
            inner,
            handle,
            dpop: None,
        }
    }

    /// Signs a DPoP proof with `key` for every request.
    pub fn with_dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AddToken<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The service that was driven to readiness goes with this call; a
        // clone stays behind for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handle = self.handle.clone();
        let dpop = self.dpop.clone();
        Box::pin(async move {
            let sent = handle.token().await?.to_access_token();
            let value = authorization_value(&sent)?;
            let url = request.uri().to_string();
            let proof = resource_proof(dpop.as_ref(), &sent, request.method().as_str(), &url)?;
            request.headers_mut().insert(AUTHORIZATION, value);
            if let Some(proof) = proof {
                request.headers_mut().insert(DPOP, proof);
            }
            let response = inner.call(request).await.map_err(Into::into)?;
            if let Some(key) = &dpop {
                key.learn_nonce(DpopRole::ResourceServer, &url, response.headers());
            }
            let rejected = if dpop.is_some() {
                rejects_dpop_token(response.status(), response.headers())
            } else {
                rejects_token(response.status(), response.headers())
            };
            if rejected {
                let dropped = handle.invalidate(&sent).await;
                tracing::info!(
                    key = %handle.cache_key(),
                    dropped,
                    "the server rejected the access token (401 invalid_token); the next request gets a fresh one"
                );
            }
            Ok(response)
        })
    }
}

impl<S: fmt::Debug> fmt::Debug for AddToken<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddToken")
            .field("inner", &self.inner)
            .field("key", self.handle.cache_key())
            .field("dpop", &self.dpop)
            .finish()
    }
}
