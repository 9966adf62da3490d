//! A tower middleware that puts the cached token on every request: for
//! hyper, tonic (gRPC) and any other `tower::Service` client.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use token_core::{AccessToken, TokenCache, TokenHandle, TokenRequest};
use tower_layer::Layer;
use tower_service::Service;

use crate::challenge::{asks_for_dpop_nonce, rejects_dpop_token, rejects_token};
use crate::dpop::{count_nonce_retry, resource_proof, DpopKey, DpopRole, DPOP};
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
/// can tell when a request is clonable.) The one request this layer does
/// resend is a DPoP resource server's nonce challenge, below: that server
/// refused the request before acting on it (RFC 9449 §9), so even a `POST`
/// is safe to repeat once.
///
/// # DPoP
///
/// With a key ([`dpop`](Self::dpop)) each request carries
/// `Authorization: DPoP <token>` and a fresh `DPoP` proof with `ath` and the
/// resource server's last nonce (the request URI must then be absolute, as
/// a hyper or tonic client's is). The server's `DPoP-Nonce` is learned from
/// every answer. When the answer is a `401` whose `DPoP` challenge says
/// `error="use_dpop_nonce"` and brings a nonce we had not used, the request
/// is sent **once** more with a new proof carrying that nonce, if its body
/// can be had a second time; otherwise that `401` is returned as is (and
/// the next request carries the nonce). A server that keeps asking gets two
/// requests, never more. Bearer requests are never resent.
///
/// Whether a body can be had again is decided, before the request is sent,
/// by a [`CloneBody`] policy (the same idea as `tower-http`'s
/// `FollowRedirect`, whose `Body + Default` bound this shares):
///
/// - [`EmptyBodies`], the default: a body that
///   [`Body::size_hint`](http_body::Body::size_hint) says is empty (a `GET`
///   with `Full::default()`, `Empty`, `String::new()`, tonic's empty body) is
///   resent as `ReqBody::default()`; any other is not. This is why, with
///   the default policy, [`AddToken`] needs `ReqBody: http_body::Body +
///   Default`, which hyper's `Full`, `Empty`, `BoxBody`/`UnsyncBoxBody`,
///   `String`, `Bytes` and tonic's bodies are.
/// - [`CloneBodies`]: clones bodies that are `Clone` (buffered ones, such as
///   `Full<Bytes>`, whose clone shares the bytes), so a `POST` with a
///   buffered body is resent too:
///   `AddTokenLayer::new(&cache, &request).dpop(key).resend(CloneBodies)`.
/// - [`NeverResend`]: for body types that are neither (hyper's `Incoming`
///   forwarded by a proxy); any [`CloneBody`] of your own fits as well.
///
/// A resent request has the same method, URI, version, headers and
/// extensions; the copy of the body is made only when a DPoP key is set.
#[derive(Clone)]
pub struct AddTokenLayer<R = EmptyBodies> {
    handle: TokenHandle,
    dpop: Option<DpopKey>,
    resend: R,
}

impl AddTokenLayer {
    /// Tokens for `request` from `cache`.
    pub fn new(cache: &TokenCache, request: &TokenRequest) -> Self {
        Self::from_handle(cache.handle(request))
    }

    /// Tokens from a pre-bound handle.
    pub fn from_handle(handle: TokenHandle) -> Self {
        Self {
            handle,
            dpop: None,
            resend: EmptyBodies,
        }
    }
}

impl<R> AddTokenLayer<R> {
    /// Signs a DPoP proof with `key` for every request (see "DPoP" above).
    pub fn dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// How a request's body is had again to resend it on a resource
    /// server's `use_dpop_nonce` (see "DPoP" above; [`EmptyBodies`] unless
    /// set).
    pub fn resend<P>(self, policy: P) -> AddTokenLayer<P> {
        AddTokenLayer {
            handle: self.handle,
            dpop: self.dpop,
            resend: policy,
        }
    }
}

impl<S, R: Clone> Layer<S> for AddTokenLayer<R> {
    type Service = AddToken<S, R>;

    fn layer(&self, inner: S) -> AddToken<S, R> {
        AddToken {
            inner,
            handle: self.handle.clone(),
            dpop: self.dpop.clone(),
            resend: self.resend.clone(),
        }
    }
}

impl<R> fmt::Debug for AddTokenLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddTokenLayer")
            .field("key", self.handle.cache_key())
            .field("dpop", &self.dpop)
            .field("resend", &std::any::type_name::<R>())
            .finish()
    }
}

/// How [`AddToken`] has a request's body a second time, to resend the
/// request once when a DPoP resource server asks for a new nonce (see
/// [`AddTokenLayer`]'s "DPoP"). Called before the request is sent, only
/// when a DPoP key is set.
pub trait CloneBody<B> {
    /// A body equal to `body`, or `None` when there is none to be had (the
    /// request is then not resent).
    fn clone_body(&self, body: &B) -> Option<B>;
}

/// The default [`CloneBody`]: a body known to be empty
/// ([`Body::size_hint`](http_body::Body::size_hint) exactly 0) is had again
/// as `B::default()`; others are not.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyBodies;

impl<B: http_body::Body + Default> CloneBody<B> for EmptyBodies {
    fn clone_body(&self, body: &B) -> Option<B> {
        (body.size_hint().exact() == Some(0)).then(B::default)
    }
}

/// A [`CloneBody`] for buffered bodies that are `Clone` (`Full<Bytes>`,
/// `String`, `Bytes`): every body is cloned, so any request can be resent.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBodies;

impl<B: Clone> CloneBody<B> for CloneBodies {
    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

/// A [`CloneBody`] that never has a body again: no request is resent (as
/// for any body type, such as hyper's `Incoming`).
#[derive(Clone, Copy, Debug, Default)]
pub struct NeverResend;

impl<B> CloneBody<B> for NeverResend {
    fn clone_body(&self, _: &B) -> Option<B> {
        None
    }
}

/// Sets `Authorization: <type> <token>` (marked sensitive) on each request
/// and invalidates a token the server rejected. See [`AddTokenLayer`] for an
/// example, for what happens on a `401` and for `R`.
#[derive(Clone)]
pub struct AddToken<S, R = EmptyBodies> {
    inner: S,
    handle: TokenHandle,
    dpop: Option<DpopKey>,
    resend: R,
}

impl<S> AddToken<S> {
    /// Wraps `inner`, with tokens from `handle`.
    pub fn new(inner: S, handle: TokenHandle) -> Self {
        Self {
            inner,
            handle,
            dpop: None,
            resend: EmptyBodies,
        }
    }
}

impl<S, R> AddToken<S, R> {
    /// Signs a DPoP proof with `key` for every request.
    pub fn with_dpop(mut self, key: DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// How a request's body is had again (see [`AddTokenLayer::resend`]).
    pub fn with_resend<P>(self, policy: P) -> AddToken<S, P> {
        AddToken {
            inner: self.inner,
            handle: self.handle,
            dpop: self.dpop,
            resend: policy,
        }
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

/// Sets the `Authorization` (and `DPoP`) headers of `request`; the token sent.
fn authorize<B>(
    sent: AccessToken,
    dpop: Option<&DpopKey>,
    request: &mut Request<B>,
) -> Result<AccessToken, BoxError> {
    let value = authorization_value(&sent)?;
    let url = request.uri().to_string();
    let proof = resource_proof(dpop, &sent, request.method().as_str(), &url)?;
    request.headers_mut().insert(AUTHORIZATION, value);
    match proof {
        Some(proof) => {
            request.headers_mut().insert(DPOP, proof);
        }
        None => {
            request.headers_mut().remove(DPOP);
        }
    }
    Ok(sent)
}

/// A request like `request` with `body`.
fn copy_request<B>(request: &Request<B>, body: B) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for AddToken<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    R: CloneBody<ReqBody>,
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
        // Only a DPoP request is ever resent (on use_dpop_nonce), so only
        // then is a second body had.
        let mut again = dpop
            .as_ref()
            .and_then(|_| self.resend.clone_body(request.body()))
            .map(|body| copy_request(&request, body));
        Box::pin(async move {
            let url = request.uri().to_string();
            let mut sent = authorize(
                handle.token().await?.to_access_token(),
                dpop.as_ref(),
                &mut request,
            )?;
            let mut response = inner.call(request).await.map_err(Into::into)?;
            if let Some(key) = &dpop {
                let new = key.learn_nonce(DpopRole::ResourceServer, &url, response.headers());
                if new && asks_for_dpop_nonce(response.status(), response.headers()) {
                    if let Some(mut again) = again.take() {
                        count_nonce_retry(DpopRole::ResourceServer);
                        tracing::debug!(
                            key = %handle.cache_key(),
                            "the resource server asked for a DPoP nonce; resending once with it"
                        );
                        sent = authorize(
                            handle.token().await?.to_access_token(),
                            Some(key),
                            &mut again,
                        )?;
                        drop(response);
                        std::future::poll_fn(|cx| inner.poll_ready(cx))
                            .await
                            .map_err(Into::into)?;
                        response = inner.call(again).await.map_err(Into::into)?;
                        // Remember a nonce this answer brings for the next
                        // request; never a third attempt.
                        key.learn_nonce(DpopRole::ResourceServer, &url, response.headers());
                    }
                }
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

impl<S: fmt::Debug, R> fmt::Debug for AddToken<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddToken")
            .field("inner", &self.inner)
            .field("key", self.handle.cache_key())
            .field("dpop", &self.dpop)
            .field("resend", &std::any::type_name::<R>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    #[test]
    fn empty_bodies_are_had_again_and_others_only_when_cloned() {
        assert_eq!(EmptyBodies.clone_body(&String::new()).as_deref(), Some(""));
        assert_eq!(EmptyBodies.clone_body(&"{}".to_owned()), None);
        let empty: Full<bytes::Bytes> = Full::default();
        assert!(EmptyBodies.clone_body(&empty).is_some());
        assert!(EmptyBodies
            .clone_body(&Empty::<bytes::Bytes>::new())
            .is_some());
        assert!(EmptyBodies
            .clone_body(&Full::new(bytes::Bytes::from_static(b"{}")))
            .is_none());
        assert_eq!(
            CloneBodies.clone_body(&"{}".to_owned()).as_deref(),
            Some("{}")
        );
        assert_eq!(NeverResend.clone_body(&String::new()), None);
    }

    #[test]
    fn a_copied_request_keeps_method_uri_version_headers_and_extensions() {
        let mut request = Request::post("https://api.example/v1/orders?x=1")
            .version(http::Version::HTTP_2)
            .header("content-type", "application/json")
            .body("{}".to_owned())
            .unwrap();
        request.extensions_mut().insert(7_u32);
        let copy = copy_request(&request, "{}".to_owned());
        assert_eq!(copy.method(), request.method());
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.version(), http::Version::HTTP_2);
        assert_eq!(copy.headers(), request.headers());
        assert_eq!(copy.extensions().get::<u32>(), Some(&7));
        assert_eq!(copy.body(), "{}");
    }
}
