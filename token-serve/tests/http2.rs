//! HTTP/2 through the gateway with hyper on both ends (h2c with prior
//! knowledge): request and response trailers pass both ways with `TE:
//! trailers`, and a shutdown lets a stream in flight finish (GOAWAY) before
//! the drain completes; an HTTP/1.1 caller reaches an h2c upstream.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::StaticIdp;
use token_cache::{TokenCache, TokenRequest};
use token_serve::{Drained, ServeConfig, Sidecar};

/// What the upstream saw of one request.
#[derive(Debug, Default, Clone)]
struct Saw {
    authorization: Vec<String>,
    te: Option<String>,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(data: &'static [u8], trailers: &[(&'static str, &'static str)]) -> Frames {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, HeaderValue::from_static(v));
    }
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(t)),
    ]))
}

/// An h2c-only hyper upstream: records each request (its trailers too),
/// waits `delay`, and answers `echo` with response trailers.
async fn h2c_upstream(delay: Duration) -> (u16, Arc<Mutex<Vec<Saw>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let authorization = req
                            .headers()
                            .get_all("authorization")
                            .iter()
                            .map(|v| v.to_str().unwrap().to_owned())
                            .collect();
                        let te = req
                            .headers()
                            .get("te")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let collected = req.into_body().collect().await.unwrap();
                        let trailers = collected.trailers().cloned();
                        record.lock().unwrap().push(Saw {
                            authorization,
                            te,
                            body: collected.to_bytes().to_vec(),
                            trailers,
                        });
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(frames(
                            b"echo",
                            &[("grpc-status", "0"), ("x-response-trailer", "kept")],
                        ));
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/grpc"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (port, seen)
}

/// An h2c client connection (prior knowledge) to `addr`.
async fn h2c_client(addr: &str) -> hyper::client::conn::http2::SendRequest<Frames> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn grpc_request(addr: &str) -> Request<Frames> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/svc.Echo/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", "Bearer the-caller-s-own")
        .body(frames(b"hello", &[("x-request-trailer", "sent")]))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_between_h2c_client_and_h2c_upstream() {
    let (port, seen) = h2c_upstream(Duration::ZERO).await;
    let base = support::gateway(
        &format!(
            "[[serve.routes]]\nprefix = \"/svc.Echo/\"\nupstream = \"http://127.0.0.1:{port}/svc.Echo\"\nprofile = \"p\"\nprotocol = \"h2c\"\n"
        ),
        "p",
        StaticIdp("h2-token"),
    )
    .await;
    let addr = base.trim_start_matches("http://").to_owned();
    let mut client = h2c_client(&addr).await;
    let resp = client.send_request(grpc_request(&addr)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-response-trailer"], "kept");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "echo");

    let saw = seen.lock().unwrap().clone();
    assert_eq!(saw.len(), 1);
    assert_eq!(saw[0].authorization, ["Bearer h2-token"]);
    assert_eq!(saw[0].te.as_deref(), Some("trailers"));
    assert_eq!(saw[0].body, b"hello");
    let t = saw[0].trailers.as_ref().expect("request trailers");
    assert_eq!(t["x-request-trailer"], "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_an_h2_stream_in_flight_finish() {
    let (port, _seen) = h2c_upstream(Duration::from_millis(500)).await;
    let config = ServeConfig::parse(&format!(
        "[[serve.routes]]\nprefix = \"/svc.Echo/\"\nupstream = \"http://127.0.0.1:{port}/svc.Echo\"\nprofile = \"p\"\nprotocol = \"h2c\"\n"
    ))
    .unwrap();
    let cache = TokenCache::builder(StaticIdp("h2-token")).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile("p", &cache, &request)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(10),
    ));
    let mut client = h2c_client(&addr).await;
    let call = tokio::spawn(async move {
        let resp = client.send_request(grpc_request(&addr)).await.unwrap();
        let collected = resp.into_body().collect().await.unwrap();
        (collected.trailers().cloned(), collected.to_bytes())
    });
    // The request is at the upstream (it answers after 500 ms) when the
    // shutdown comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let (trailers, body) = call.await.unwrap();
    assert_eq!(body, "echo");
    assert_eq!(trailers.expect("trailers")["x-response-trailer"], "kept");
    assert_eq!(served.await.unwrap(), Drained::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_reaches_an_h2c_upstream() {
    let (port, _seen) = h2c_upstream(Duration::ZERO).await;
    let base = support::gateway(
        &format!(
            "[[serve.routes]]\nprefix = \"/svc.Echo/\"\nupstream = \"http://127.0.0.1:{port}/svc.Echo\"\nprofile = \"p\"\nprotocol = \"h2c\"\n"
        ),
        "p",
        StaticIdp("h2-token"),
    )
    .await;
    // HTTP/1.1 in, h2c out.
    let r = reqwest::Client::new()
        .post(format!("{base}/svc.Echo/Call"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "echo");
}
