//! The gateway's upstream connections against a real hyper upstream that
//! counts the connections it accepts: sequential requests share one
//! keep-alive connection and carry the upstream's `Host`; connections the
//! upstream closed (`Connection: close`, its idle timeout) are not reused;
//! a response abandoned by the caller midway leaves its connection out of
//! the pool; a large response streams through whole and its connection is
//! reused afterwards.
//!
//! Against a scripted upstream (a loopback listener writing exact bytes):
//! a pooled connection that the upstream closes on the next request, as an
//! upstream's idle timeout racing that request does, gets an idempotent
//! request sent again on a new connection and a `POST` a 502, never sent
//! twice; a malformed response is a 502 that names what was wrong.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use token_testkit::HttpServer;

mod support;
use support::StaticIdp;

/// A response body fed chunk by chunk from a channel.
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Default)]
struct Seen {
    hosts: Mutex<Vec<String>>,
    /// Chunks of `/slow` the upstream managed to hand to its connection.
    slow_sent: AtomicUsize,
}

/// `/small`: "ok". `/close`: "ok" with `Connection: close`. `/big`: 4 MiB
/// at once. `/slow`: 200 chunks of 1 KiB, 10 ms apart. Idle keep-alive
/// connections are closed after 150 ms.
async fn upstream(seen: Arc<Seen>) -> HttpServer {
    HttpServer::start_with_idle_timeout(
        Duration::from_millis(150),
        move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.hosts.lock().unwrap().push(host);
                let body: Either<Full<Bytes>, Chunks> = match req.uri().path() {
                    "/big" => Either::Left(Full::new(Bytes::from(vec![b'b'; 4 << 20]))),
                    "/slow" => {
                        let (tx, rx) = tokio::sync::mpsc::channel(1);
                        tokio::spawn(async move {
                            for _ in 0..200 {
                                if tx.send(Bytes::from(vec![b's'; 1024])).await.is_err() {
                                    return;
                                }
                                seen.slow_sent.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        });
                        Either::Right(Chunks(rx))
                    }
                    _ => Either::Left(Full::new(Bytes::from_static(b"ok"))),
                };
                let mut r = Response::new(body);
                if req.uri().path() == "/close" {
                    r.headers_mut()
                        .insert("connection", "close".parse().unwrap());
                }
                r
            }
        },
    )
    .await
}

async fn gateway(port: u16) -> String {
    let config = format!(
        "[[serve.routes]]\nprefix = \"/up/\"\nupstream = \"http://127.0.0.1:{port}\"\nprofile = \"p\"\n"
    );
    support::gateway(&config, "p", StaticIdp("pool-test-token")).await
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Bytes) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection_and_carry_its_host() {
    let seen = Arc::new(Seen::default());
    let server = upstream(seen.clone()).await;
    let port = server.port();
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let (status, body) = get(&client, &format!("{base}/up/small")).await;
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(server.connections(), 1, "one kept-alive connection");
    let hosts = seen.hosts.lock().unwrap();
    assert_eq!(hosts.len(), 100);
    assert!(
        hosts.iter().all(|h| *h == format!("127.0.0.1:{port}")),
        "the upstream's authority, not the caller's: {:?}",
        &hosts[..3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_are_not_reused() {
    let seen = Arc::new(Seen::default());
    let server = upstream(seen.clone()).await;
    let port = server.port();
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let (status, _) = get(&client, &format!("{base}/up/close")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.connections(), 5, "one per `Connection: close`");
    // The upstream drops idle connections after 150 ms.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, _) = get(&client, &format!("{base}/up/small")).await;
        assert_eq!(status, 200, "a closed pooled connection is not used");
    }
    assert_eq!(server.connections(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_midway_leaves_its_connection_out_of_the_pool() {
    let seen = Arc::new(Seen::default());
    let server = upstream(seen.clone()).await;
    let port = server.port();
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    let mut r = client.get(format!("{base}/up/slow")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(r);
    // The gateway notices the caller is gone when it next writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = seen.slow_sent.load(Ordering::SeqCst);
    assert!(
        sent < 200,
        "the upstream's body was cut short ({sent} chunks)"
    );
    let fresh = reqwest::Client::new();
    let (status, body) = get(&fresh, &format!("{base}/up/small")).await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    assert_eq!(
        server.connections(),
        2,
        "the half-read connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_streams_through_whole_and_its_connection_is_reused() {
    let seen = Arc::new(Seen::default());
    let server = upstream(seen.clone()).await;
    let port = server.port();
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    let (status, body) = get(&client, &format!("{base}/up/big")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 4 << 20);
    assert!(body.iter().all(|b| *b == b'b'));
    let (status, _) = get(&client, &format!("{base}/up/small")).await;
    assert_eq!(status, 200);
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_not_listening_gets_a_502_naming_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = gateway(port).await;
    let r = reqwest::get(format!("{base}/up/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("upstream_unreachable"), "{body}");
    assert!(
        body.contains(&format!("connecting to http://127.0.0.1:{port} failed")),
        "{body}"
    );
    assert!(!body.contains("pool-test-token"), "{body}");
}

/// What a scripted upstream does with the `n`th request (from 0) of a
/// connection: answer these bytes, or close the connection unanswered.
type Script = fn(usize, &str) -> Option<&'static [u8]>;

/// A loopback upstream that answers by `script`: the request lines it
/// read, in order, and how many connections it accepted.
async fn scripted(script: Script) -> (u16, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen, count) = (lines.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0.. {
                    // One request: its head, then its Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(line.clone());
                    match script(n, &line) {
                        Some(answer) => socket.write_all(answer).await.unwrap(),
                        None => return,
                    }
                }
            });
        }
    });
    (port, lines, connections)
}

/// Answers a connection's first request, closes it on the second.
fn answer_once(n: usize, _line: &str) -> Option<&'static [u8]> {
    (n == 0).then_some(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_pooled_connection_closed_unanswered_is_sent_again_on_a_new_one() {
    let (port, lines, connections) = scripted(answer_once).await;
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    let (status, body) = get(&client, &format!("{base}/up/a")).await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    // The pooled connection takes this one and is closed unanswered.
    let (status, body) = get(&client, &format!("{base}/up/b")).await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /b HTTP/1.1"]
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_pooled_connection_closed_unanswered_is_a_502_and_never_sent_twice() {
    let (port, lines, connections) = scripted(answer_once).await;
    let base = gateway(port).await;
    let client = reqwest::Client::new();
    let (status, _) = get(&client, &format!("{base}/up/a")).await;
    assert_eq!(status, 200);
    let r = client
        .post(format!("{base}/up/pay"))
        .body("amount=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("upstream_unreachable") && body.contains("closed before any response"),
        "{body}"
    );
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /a HTTP/1.1", "POST /pay HTTP/1.1"],
        "the POST went out once"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_conflicting_lengths_is_a_502_that_names_the_problem() {
    fn conflicting(_: usize, _: &str) -> Option<&'static [u8]> {
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!")
    }
    let (port, _, _) = scripted(conflicting).await;
    let base = gateway(port).await;
    let r = reqwest::get(format!("{base}/up/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("conflicting Content-Length values"), "{body}");
    assert!(!body.contains("pool-test-token"), "{body}");
}
