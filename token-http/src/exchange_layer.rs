//! [`ExchangeLayer`] + [`Exchange`]: a tower middleware that sends a
//! token exchanged for the caller's own bearer token
//! ([`ExchangeCache`]), never the caller's token itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use token_core::{Secret, TokenRequest};
use tower_layer::Layer;
use tower_service::Service;

use crate::challenge::rejects_token;
use crate::exchange::ExchangeCache;
use crate::header::authorization_value;

/// Wraps services in [`Exchange`]: the caller's `Authorization: Bearer
/// <subject>` on each request is replaced with a token exchanged for it.
#[derive(Clone, Debug)]
pub struct ExchangeLayer {
    cache: ExchangeCache,
    request: TokenRequest,
}

impl ExchangeLayer {
    /// Exchanges each request's bearer token for `request` through `cache`.
    pub fn new(cache: &ExchangeCache, request: &TokenRequest) -> Self {
        Self {
            cache: cache.clone(),
            request: request.clone(),
        }
    }
}

impl<S> Layer<S> for ExchangeLayer {
    type Service = Exchange<S>;

    fn layer(&self, inner: S) -> Exchange<S> {
        Exchange {
            inner,
            cache: self.cache.clone(),
            request: self.request.clone(),
        }
    }
}

/// A tower middleware for a service that calls a downstream API on behalf
/// of its caller: takes the subject token from the request's
/// `Authorization: Bearer` header, exchanges it ([`ExchangeCache`]) and
/// sends the exchanged token instead (never the subject). A downstream
/// `401 invalid_token` drops the exchanged token (within the engine's
/// floor). A request without a usable subject fails with the
/// [`ExchangeError`](crate::ExchangeError) (downcast the [`BoxError`](token_core::BoxError)).
#[derive(Clone, Debug)]
pub struct Exchange<S> {
    inner: S,
    cache: ExchangeCache,
    request: TokenRequest,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Exchange<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<token_core::BoxError>,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = token_core::BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let wanted = self.request.clone();
        let subject = request
            .headers_mut()
            .remove(AUTHORIZATION)
            .and_then(|v| bearer_of(v.as_bytes()).map(Secret::from));
        Box::pin(async move {
            let subject = subject.unwrap_or_else(|| Secret::from(""));
            let token = cache.exchange(subject.expose(), &wanted).await?;
            let sent = token.to_access_token();
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization_value(&sent)?);
            let response = inner.call(request).await.map_err(Into::into)?;
            if rejects_token(response.status(), response.headers()) {
                let dropped = cache.invalidate(subject.expose(), &wanted, &sent).await;
                tracing::info!(
                    target: "token_http::exchange",
                    dropped,
                    "the server rejected the exchanged token (401 invalid_token); the next request exchanges again"
                );
            }
            Ok(response)
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive), if that is what it is.
pub fn bearer_of(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then(|| token.to_owned())
}
