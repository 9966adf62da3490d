//! HTTP/1.1 servers on loopback for the tests: any handler
//! ([`HttpServer`]), and an upstream that records what it receives
//! ([`Upstream`]).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A hyper HTTP/1.1 server on a free 127.0.0.1 port, serving a handler on
/// every connection. It lives as long as the runtime that started it.
#[derive(Clone, Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl HttpServer {
    /// Serves `handler`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start<F, Fut, B>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::serve(None, plain, handler).await
    }

    /// Serves `handler`, closing a kept-alive connection that sends no new
    /// request within `idle` (hyper's header-read timeout), as real servers
    /// do.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start_with_idle_timeout<F, Fut, B>(idle: Duration, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::serve(Some(idle), plain, handler).await
    }

    /// Serves `handler` over what `wrap` makes of each accepted TCP
    /// connection (a TLS acceptor's `accept`, say); a connection it turns
    /// into `None` is dropped.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start_wrapped<W, WFut, Io, F, Fut, B>(wrap: W, handler: F) -> Self
    where
        W: Fn(TcpStream) -> WFut + Send + Sync + 'static,
        WFut: Future<Output = Option<Io>> + Send + 'static,
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::serve(None, wrap, handler).await
    }

    async fn serve<W, WFut, Io, F, Fut, B>(idle: Option<Duration>, wrap: W, handler: F) -> Self
    where
        W: Fn(TcpStream) -> WFut + Send + Sync + 'static,
        WFut: Future<Output = Option<Io>> + Send + 'static,
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let stream = wrap(tcp);
                tokio::spawn(async move {
                    let Some(stream) = stream.await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let response = handler(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    if let Some(idle) = idle {
                        builder.timer(TokioTimer::new()).header_read_timeout(idle);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, connections }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The plain-TCP connection wrapper: the connection itself.
async fn plain(tcp: TcpStream) -> Option<TcpStream> {
    Some(tcp)
}

/// One request an [`Upstream`] received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: String,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The whole body; `None` when it could not be read to the end.
    pub body: Option<Bytes>,
}

impl Seen {
    /// The `Authorization` header, when it was there and is text.
    pub fn authorization(&self) -> Option<&str> {
        self.header(AUTHORIZATION.as_str())
    }

    /// The token of a `Bearer` `Authorization`.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization()?.strip_prefix("Bearer ")
    }

    /// A header's value, when it was there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An upstream that records every request ([`seen`](Self::seen)) and
/// answers `401` with `WWW-Authenticate: Bearer error="invalid_token"` to
/// the bearer tokens it was told to [`reject`](Self::reject); anything else
/// gets its responder's answer (by default `200 ok <path and query>`).
#[derive(Clone, Debug)]
pub struct Upstream {
    server: HttpServer,
    seen: Arc<Mutex<Vec<Seen>>>,
    rejected: Arc<Mutex<HashSet<String>>>,
}

impl Upstream {
    /// Answers `200` with `ok <path and query>`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start() -> Self {
        Self::start_with(|seen: Seen| async move {
            Response::new(Full::new(Bytes::from(format!(
                "ok {}",
                seen.path_and_query
            ))))
        })
        .await
    }

    /// Answers what `respond` makes of each recorded request (unless its
    /// token is rejected).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start_with<F, Fut>(respond: F) -> Self
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(Mutex::new(HashSet::<String>::new()));
        let (log, refused) = (Arc::clone(&seen), Arc::clone(&rejected));
        let server = HttpServer::start(move |req: Request<Incoming>| {
            let (log, refused, respond) = (log.clone(), refused.clone(), respond.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes()).ok();
                let request = Seen {
                    method: parts.method,
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    headers: parts.headers,
                    body,
                };
                log.lock().expect("lock").push(request.clone());
                let rejected = request
                    .bearer()
                    .is_some_and(|t| refused.lock().expect("lock").contains(t));
                if rejected {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                    );
                    return r;
                }
                respond(request).await
            }
        })
        .await;
        Self {
            server,
            seen,
            rejected,
        }
    }

    /// From now on, answers `401 invalid_token` to `Bearer <token>`.
    pub fn reject(&self, token: &str) {
        self.rejected.lock().expect("lock").insert(token.to_owned());
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The server it runs on (address, connection count).
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_requests_and_rejects_the_tokens_it_was_told_to() {
        let upstream = Upstream::start().await;
        upstream.reject("old");
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{}/a?b=c", upstream.url()))
            .header("authorization", "Bearer new")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok /a?b=c");
        let r = client
            .get(format!("{}/x", upstream.url()))
            .header("authorization", "Bearer old")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(seen[0].bearer(), Some("new"));
        assert_eq!(seen[0].body.as_deref(), Some(&b"hello"[..]));
        assert_eq!(seen[1].authorization(), Some("Bearer old"));
        assert!(upstream.server().connections() >= 1);
    }
}
