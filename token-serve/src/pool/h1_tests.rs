//! The direct HTTP/1.1 path against scripted upstreams: a loopback
//! listener that reads the request and writes exactly the bytes a test
//! gives it, so that each framing rule and each malformed response is met.
//!
//! Each test has its own listener ([`upstream`]), which follows a script
//! of [`Action`]s on its one connection: read a request (its head and the
//! body its `Content-Length` announces), write bytes (several writes with
//! short sleeps between them split a head or a chunk across reads), wait
//! for the test's signal, hold the connection open until the client
//! closes it, or, at the end of the script, close it. The requests it read
//! come back, byte for byte, from its task.
//!
//! Two tests were written for bugs they found, since fixed:
//! - [`a_content_length_zero_body_gives_its_connection_back_without_a_poll`]:
//!   hyper's server never polls a body that says it has ended, so a
//!   `Content-Length: 0` body must give its connection back unpolled;
//! - [`a_chunk_size_line_with_a_stray_cr_is_rejected`]: a bare `CR` in a
//!   chunk-size line (`5\r\r\n`, `5;a\rb\r\n`) is refused, as hyper's
//!   client and RFC 9112 7.1 refuse it.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;

/// How long any one await of a test may take before the test fails
/// instead of hanging.
const STALL: Duration = Duration::from_secs(5);

/// One step of a scripted upstream, on its one connection.
enum Action {
    /// Reads one request: its head, then the body its `Content-Length`
    /// announces.
    Read,
    /// Writes these bytes, in one write.
    Write(Vec<u8>),
    /// Sleeps this many milliseconds.
    Sleep(u64),
    /// Waits for the test's signal ([`Upstream::go`]).
    Go,
    /// Keeps the connection open until the client closes it.
    Hold,
}

/// A scripted upstream listening on loopback.
struct Upstream {
    addr: SocketAddr,
    go: mpsc::UnboundedSender<()>,
    /// The requests read, byte for byte, once the script has ended.
    requests: JoinHandle<Vec<Vec<u8>>>,
}

/// Starts an upstream that accepts one connection and follows `script`
/// on it, then closes it.
async fn upstream(script: Vec<Action>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, mut signals) = mpsc::unbounded_channel();
    let requests = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        let mut requests = Vec::new();
        for step in script {
            match step {
                Action::Read => match read_request(&mut socket, &mut pending).await {
                    Some(request) => requests.push(request),
                    None => break,
                },
                Action::Write(bytes) => {
                    // The client may have given up and closed already.
                    if socket.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Action::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Action::Go => {
                    signals.recv().await;
                }
                Action::Hold => {
                    let mut sink = [0u8; 1024];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            }
        }
        requests
    });
    Upstream { addr, go, requests }
}

/// Reads one request from `socket` (bytes read beyond it stay in
/// `pending`); `None` if the client closed first.
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_len = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(socket, pending).await?;
    };
    let head = std::str::from_utf8(&pending[..head_len]).unwrap();
    let body_len = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse::<usize>().unwrap());
    while pending.len() < head_len + body_len {
        read_more(socket, pending).await?;
    }
    Some(pending.drain(..head_len + body_len).collect())
}

async fn read_more(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A script that reads one request, answers it with `response` and keeps
/// the connection open.
fn answer(response: impl Into<Vec<u8>>) -> Vec<Action> {
    vec![Action::Read, Action::Write(response.into()), Action::Hold]
}

/// A request with these headers and body.
fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Encoded {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let parts = builder.body(()).unwrap().into_parts().0;
    encode(
        &parts,
        &[],
        &HeaderValue::from_static("up"),
        &Bytes::copy_from_slice(body),
    )
}

/// `GET /x` with `host: up`.
fn get() -> Encoded {
    request(Method::GET, "/x", &[("host", "up")], b"")
}

async fn connect(addr: SocketAddr) -> Conn {
    Conn::new(Stream::Tcp(TcpStream::connect(addr).await.unwrap()))
}

async fn exchange(conn: Conn, request: &Encoded) -> Result<Response<H1Body>, H1Error> {
    tokio::time::timeout(STALL, conn.exchange(request, Instant::now() + STALL))
        .await
        .expect("the exchange stalled")
}

/// Sends `GET /x` on a new connection to `addr`.
async fn get_from(addr: SocketAddr) -> Result<Response<H1Body>, H1Error> {
    exchange(connect(addr).await, &get()).await
}

/// The error of an exchange that must fail.
fn expect_error<T>(result: Result<T, H1Error>) -> H1Error {
    match result {
        Ok(_) => panic!("expected an error, got a response"),
        Err(e) => e,
    }
}

/// What reading a body to its end (or to its error) gave.
#[derive(Default)]
struct Read {
    data: Vec<u8>,
    /// The length of each data frame.
    frames: Vec<usize>,
    trailers: Option<HeaderMap>,
    error: Option<H1Error>,
    /// `size_hint().exact()` before the first frame and after each.
    hints: Vec<Option<u64>>,
}

async fn read_body(body: &mut H1Body) -> Read {
    let mut read = Read::default();
    loop {
        read.hints.push(body.size_hint().exact());
        let next = tokio::time::timeout(STALL, poll_fn(|cx| body.poll_frame(cx)))
            .await
            .expect("the body stalled");
        match next {
            None => break,
            Some(Err(e)) => {
                read.error = Some(e);
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.frames.push(data.len());
                    read.data.extend_from_slice(&data);
                }
                Err(frame) => {
                    assert!(read.trailers.is_none(), "two trailer frames");
                    read.trailers =
                        Some(frame.into_trailers().unwrap_or_else(|_| {
                            panic!("a frame that is neither data nor trailers")
                        }));
                }
            },
        }
    }
    read
}

/// Reads a body that must end well: its data and trailers.
async fn read_ok(body: &mut H1Body) -> (Vec<u8>, Option<HeaderMap>) {
    let read = read_body(body).await;
    if let Some(e) = read.error {
        panic!("the body failed: {e:?}");
    }
    (read.data, read.trailers)
}

/// Reads the body of a response whose body must be malformed: its error
/// and the data before it. The connection must be gone afterwards.
async fn read_err(resp: Result<Response<H1Body>, H1Error>) -> (H1Error, Vec<u8>) {
    let mut body = resp.unwrap().into_body();
    let read = read_body(&mut body).await;
    let e = read.error.expect("expected the body to fail");
    assert!(body.is_end_stream());
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
    assert!(body.take_reusable().is_none());
    (e, read.data)
}

/// The second request on a connection: `GET /again`, answered with
/// `second` (a `content-length: 5` body) by the upstream.
fn again() -> Encoded {
    request(Method::GET, "/again", &[("host", "up")], b"")
}

const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain";

/// Sends [`again`] on `conn` and checks the answer ([`SECOND`]).
async fn second_exchange_works(conn: Conn) {
    let mut body = exchange(conn, &again()).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"again");
    assert!(body.take_reusable().is_some());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// 1. A Content-Length body, and reuse.

#[tokio::test]
async fn a_content_length_body_split_across_writes_arrives_whole_and_the_connection_is_reused() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()),
        Action::Sleep(10),
        Action::Write(b"ngth: 11\r\nx-a: 1\r\n\r\nhel".to_vec()),
        Action::Sleep(10),
        Action::Write(b"lo wo".to_vec()),
        Action::Sleep(10),
        Action::Write(b"rld".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.headers()["content-length"], "11");
    assert_eq!(resp.headers()["x-a"], "1");
    let mut body = resp.into_body();
    let (data, trailers) = read_ok(&mut body).await;
    assert_eq!(data, b"hello world");
    assert!(trailers.is_none());
    assert!(body.is_end_stream());
    let conn = body.take_reusable().expect("the connection is reusable");
    // Taken once only.
    assert!(body.take_reusable().is_none());
    second_exchange_works(conn).await;
    assert_eq!(
        up.requests.await.unwrap(),
        [
            b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n".to_vec(),
            b"GET /again HTTP/1.1\r\nhost: up\r\n\r\n".to_vec(),
        ]
    );
}

#[tokio::test]
async fn a_body_that_has_not_been_read_to_its_end_does_not_give_its_connection_back() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd".to_vec()),
        Action::Go,
        Action::Write(b"efghij".to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    let first = poll_fn(|cx| body.poll_frame(cx)).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "abcd");
    assert!(!body.is_end_stream());
    assert!(body.take_reusable().is_none());
    up.go.send(()).unwrap();
    assert_eq!(read_ok(&mut body).await.0, b"efghij");
    assert!(body.take_reusable().is_some());
}

// 15. size_hint.

#[tokio::test]
async fn size_hint_is_the_exact_remaining_length_of_a_content_length_body() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd".to_vec()),
        Action::Sleep(20),
        Action::Write(b"ef".to_vec()),
        Action::Sleep(20),
        Action::Write(b"ghij".to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(body.size_hint().exact(), Some(10));
    assert_eq!(body.size_hint().lower(), 10);
    let read = read_body(&mut body).await;
    assert!(read.error.is_none());
    assert_eq!(read.data, b"abcdefghij");
    // Before each frame, what is left.
    let mut left = 10;
    let mut expected = vec![Some(left)];
    for len in &read.frames {
        left -= *len as u64;
        expected.push(Some(left));
    }
    assert_eq!(read.hints, expected);
    assert_eq!(body.size_hint().exact(), Some(0));
}

#[tokio::test]
async fn size_hint_of_a_chunked_body_is_unknown() {
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(body.size_hint().exact(), None);
    assert_eq!(body.size_hint().upper(), None);
    assert!(!body.is_end_stream());
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert_eq!(body.size_hint().exact(), Some(0));
}

// 2. Chunked bodies.

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_is_decoded() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=val\r\nhel".to_vec(),
        ),
        Action::Sleep(10),
        Action::Write(b"lo\r\n6 ; a=\"b c\";d\r\n world\r".to_vec()),
        Action::Sleep(10),
        Action::Write(b"\n0;last\r\nx-a: 1\r\nx-b: two\r\n\r\n".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let (data, trailers) = read_ok(&mut body).await;
    assert_eq!(data, b"hello world");
    let trailers = trailers.expect("a trailers frame");
    assert_eq!(trailers.len(), 2);
    assert_eq!(trailers["x-a"], "1");
    assert_eq!(trailers["x-b"], "two");
    assert!(body.is_end_stream());
    second_exchange_works(body.take_reusable().expect("reusable")).await;
}

#[tokio::test]
async fn a_chunked_body_with_upper_case_hex_sizes_is_decoded() {
    let a = pattern(0x1A);
    let b = pattern(0xFF);
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1A\r\n".to_vec();
    response.extend_from_slice(&a);
    response.extend_from_slice(b"\r\n0fF\r\n");
    response.extend_from_slice(&b);
    response.extend_from_slice(b"\r\n0\r\n\r\n");
    let up = upstream(answer(response)).await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    let (data, trailers) = read_ok(&mut body).await;
    assert_eq!(data, [a, b].concat());
    assert!(trailers.is_none(), "no trailers frame for an empty section");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn a_chunk_size_of_16_hex_digits_is_accepted() {
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
         0000000000000005\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn a_chunk_size_line_of_max_chunk_line_bytes_is_accepted() {
    let mut line = b"5;".to_vec();
    line.resize(MAX_CHUNK_LINE - 2, b'a');
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), MAX_CHUNK_LINE);
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(&line);
    response.extend_from_slice(b"hello\r\n0\r\n\r\n");
    let up = upstream(answer(response)).await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.take_reusable().is_some());
}

// 3. Malformed chunked bodies.

/// The error of a chunked body whose chunks (after the head) are `chunks`,
/// and the data handed out before it. The upstream keeps the connection
/// open, so that the error is not the connection's end.
async fn chunked_error(chunks: &[u8]) -> (H1Error, Vec<u8>) {
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(chunks);
    let up = upstream(answer(response)).await;
    read_err(get_from(up.addr).await).await
}

#[tokio::test]
async fn a_non_hex_chunk_size_is_a_bad_chunk() {
    let (e, data) = chunked_error(b"zz\r\nhello\r\n0\r\n\r\n").await;
    assert!(matches!(e, H1Error::BadChunk("no chunk size")), "{e:?}");
    assert!(data.is_empty());
    let (e, _) = chunked_error(b"5x\r\nhello\r\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("invalid chunk size")),
        "{e:?}"
    );
    let (e, _) = chunked_error(b"0x5\r\nhello\r\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("invalid chunk size")),
        "{e:?}"
    );
    let (e, _) = chunked_error(b"-5\r\nhello\r\n0\r\n\r\n").await;
    assert!(matches!(e, H1Error::BadChunk("no chunk size")), "{e:?}");
    // The size of a later chunk, after good data.
    let (e, data) = chunked_error(b"5\r\nhello\r\nG\r\n").await;
    assert!(matches!(e, H1Error::BadChunk("no chunk size")), "{e:?}");
    assert_eq!(data, b"hello");
}

#[tokio::test]
async fn a_chunk_without_crlf_after_its_data_is_a_bad_chunk() {
    let (e, data) = chunked_error(b"5\r\nhelloX\r\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("no CRLF after a chunk's data")),
        "{e:?}"
    );
    assert_eq!(data, b"hello");
    // A bare LF after the data.
    let (e, _) = chunked_error(b"5\r\nhello\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("no CRLF after a chunk's data")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_bare_lf_ending_a_chunk_size_line_is_a_bad_chunk() {
    let (e, data) = chunked_error(b"5\nhello\r\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk-size line without CRLF")),
        "{e:?}"
    );
    assert!(data.is_empty());
    // The last chunk's line too.
    let (e, data) = chunked_error(b"5\r\nhello\r\n0\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk-size line without CRLF")),
        "{e:?}"
    );
    assert_eq!(data, b"hello");
}

#[tokio::test]
async fn a_chunk_size_line_longer_than_max_chunk_line_is_a_bad_chunk() {
    let mut chunks = b"5;".to_vec();
    chunks.resize(MAX_CHUNK_LINE - 1, b'a');
    chunks.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let (e, _) = chunked_error(&chunks).await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk-size line too long")),
        "{e:?}"
    );
    // Without any line end, and the upstream waiting: the limit, not the
    // connection's end, stops it.
    let chunks = vec![b'a'; MAX_CHUNK_LINE + 10];
    let (e, _) = chunked_error(&chunks).await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk-size line too long")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_chunk_size_of_more_than_16_hex_digits_is_a_bad_chunk() {
    let (e, _) = chunked_error(b"00000000000000005\r\nhello\r\n0\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk size too large")),
        "{e:?}"
    );
    let (e, _) = chunked_error(b"10000000000000000\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("chunk size too large")),
        "{e:?}"
    );
}

#[tokio::test]
async fn trailers_larger_than_max_trailers_are_a_bad_chunk() {
    let mut chunks = b"5\r\nhello\r\n0\r\nx-a: ".to_vec();
    chunks.resize(chunks.len() + MAX_TRAILERS, b'a');
    chunks.extend_from_slice(b"\r\n\r\n");
    let (e, data) = chunked_error(&chunks).await;
    assert!(
        matches!(e, H1Error::BadChunk("trailers larger than 16 KiB")),
        "{e:?}"
    );
    assert_eq!(data, b"hello");
}

#[tokio::test]
async fn malformed_trailers_are_a_bad_chunk() {
    let (e, data) = chunked_error(b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n").await;
    assert!(
        matches!(e, H1Error::BadChunk("malformed trailers")),
        "{e:?}"
    );
    assert_eq!(data, b"hello");
}

/// A `CR` not followed by `LF`, or another control character, in a
/// chunk-size line is refused (hyper's client refuses it too).
#[tokio::test]
async fn a_chunk_size_line_with_a_stray_cr_is_rejected() {
    let mut accepted = Vec::new();
    for chunks in [
        &b"5\r\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5\x0c\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        response.extend_from_slice(chunks);
        let up = upstream(answer(response)).await;
        let mut body = get_from(up.addr).await.unwrap().into_body();
        let read = read_body(&mut body).await;
        if !matches!(read.error, Some(H1Error::BadChunk(_))) {
            accepted.push(String::from_utf8_lossy(chunks).into_owned());
        }
    }
    assert!(
        accepted.is_empty(),
        "malformed chunk-size lines accepted: {accepted:?}"
    );
}

// 4. Content-Length values.

#[tokio::test]
async fn two_different_content_lengths_are_a_bad_head() {
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5, 6\r\n\r\nhello",
    ] {
        let up = upstream(answer(head)).await;
        let e = expect_error(get_from(up.addr).await);
        assert!(
            matches!(e, H1Error::BadHead("conflicting Content-Length values")),
            "{head:?}: {e:?}"
        );
        assert!(!e.before_response());
    }
}

#[tokio::test]
async fn the_same_content_length_twice_is_one_length() {
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length:5,5 , 05\r\n\r\nhello",
    ] {
        let up = upstream(answer(head)).await;
        let mut body = get_from(up.addr).await.unwrap().into_body();
        assert_eq!(body.size_hint().exact(), Some(5), "{head:?}");
        assert_eq!(read_ok(&mut body).await.0, b"hello", "{head:?}");
        assert!(body.take_reusable().is_some(), "{head:?}");
    }
}

#[tokio::test]
async fn a_content_length_that_is_not_a_number_is_a_bad_head() {
    for value in [
        "abc",
        "+5",
        "-5",
        "5,",
        "0x5",
        "5 5",
        "12345678901234567890",
    ] {
        let up = upstream(answer(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\nhello"
        )))
        .await;
        let e = expect_error(get_from(up.addr).await);
        assert!(
            matches!(e, H1Error::BadHead("invalid Content-Length")),
            "{value:?}: {e:?}"
        );
    }
}

// 5. Content-Length with Transfer-Encoding.

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_the_connection_is_not_reused() {
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert!(!resp.headers().contains_key("content-length"));
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    assert_eq!(body.size_hint().exact(), None);
    let (data, _) = read_ok(&mut body).await;
    assert_eq!(data, b"hello");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn a_transfer_encoding_that_does_not_end_in_chunked_is_read_to_the_close() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\ncontent-length: 3\r\n\r\n5\r\nab"
                .to_vec(),
        ),
        Action::Sleep(10),
        Action::Write(b"cde".to_vec()),
    ])
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert!(!resp.headers().contains_key("content-length"));
    let mut body = resp.into_body();
    let (data, _) = read_ok(&mut body).await;
    assert_eq!(data, b"5\r\nabcde");
    assert!(body.take_reusable().is_none());
}

// 6. Malformed heads.

#[tokio::test]
async fn a_head_larger_than_max_head_is_too_large() {
    // The whole head, its end past the limit.
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.resize(MAX_HEAD, b'a');
    head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let up = upstream(answer(head)).await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::HeadTooLarge), "{e:?}");
    assert!(!e.before_response());
    // A head that does not end: the limit stops it, not the connection's
    // end (the upstream keeps it open).
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.resize(MAX_HEAD + 100, b'a');
    let up = upstream(answer(head)).await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::HeadTooLarge), "{e:?}");
}

#[tokio::test]
async fn a_head_of_exactly_max_head_bytes_is_accepted() {
    let end = b"\r\ncontent-length: 2\r\n\r\n";
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.resize(MAX_HEAD - end.len(), b'a');
    head.extend_from_slice(end);
    assert_eq!(head.len(), MAX_HEAD);
    head.extend_from_slice(b"ok");
    let up = upstream(answer(head)).await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.headers()["x-big"].len(), MAX_HEAD - end.len() - 24);
    let mut body = resp.into_body();
    assert_eq!(read_ok(&mut body).await.0, b"ok");
    assert!(body.take_reusable().is_some());
}

fn head_with_fields(n: usize) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..n - 1 {
        head.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    head.extend_from_slice(b"content-length: 2\r\n\r\nok");
    head
}

#[tokio::test]
async fn more_than_max_headers_fields_are_too_many() {
    let up = upstream(answer(head_with_fields(MAX_HEADERS + 1))).await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::TooManyHeaders), "{e:?}");
    // The limit itself is fine.
    let up = upstream(answer(head_with_fields(MAX_HEADERS))).await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.headers().len(), MAX_HEADERS);
    assert_eq!(read_ok(&mut resp.into_body()).await.0, b"ok");
}

#[tokio::test]
async fn a_garbage_status_line_is_a_bad_head() {
    for head in [
        "FOO BAR\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx-a : 1\r\n\r\n",
    ] {
        let up = upstream(answer(head)).await;
        let e = expect_error(get_from(up.addr).await);
        assert!(matches!(e, H1Error::BadHead(_)), "{head:?}: {e:?}");
        assert!(!e.before_response());
    }
}

#[tokio::test]
async fn a_head_with_bare_lf_line_ends_is_accepted() {
    let up = upstream(answer("HTTP/1.1 200 OK\ncontent-length: 2\n\nok")).await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(read_ok(&mut body).await.0, b"ok");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn a_head_whose_empty_line_is_split_across_reads_is_found() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r".to_vec()),
        Action::Sleep(20),
        Action::Write(b"\nok".to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"ok");
    assert!(body.take_reusable().is_some());
}

// 7. Interim responses.

#[tokio::test]
async fn a_100_continue_before_the_response_is_skipped() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        Action::Sleep(10),
        Action::Write(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n".to_vec(),
        ),
        Action::Sleep(10),
        Action::Write(b"content-length: 2\r\n\r\nok".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("link"));
    let mut body = resp.into_body();
    assert_eq!(read_ok(&mut body).await.0, b"ok");
    second_exchange_works(body.take_reusable().expect("reusable")).await;
}

#[tokio::test]
async fn max_interim_responses_are_skipped_and_one_more_is_too_many() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\n";
    let up = upstream(answer(format!(
        "{}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        interim.repeat(MAX_INTERIM)
    )))
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_ok(&mut resp.into_body()).await.0, b"ok");

    let up = upstream(answer(format!(
        "{}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        interim.repeat(MAX_INTERIM + 1)
    )))
    .await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::TooManyInterim), "{e:?}");
    assert!(!e.before_response());
}

#[tokio::test]
async fn a_101_is_returned_and_ends_the_connection() {
    let up = upstream(answer(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    ))
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut body = resp.into_body();
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
    assert!(body.take_reusable().is_none());
}

// 8. Responses without a body.

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_content_length() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let head = request(Method::HEAD, "/x", &[("host", "up")], b"");
    assert!(head.head_method);
    let resp = exchange(connect(up.addr).await, &head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    let mut body = resp.into_body();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    // Reusable at once, before any poll.
    let conn = body.take_reusable().expect("reusable");
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
    second_exchange_works(conn).await;
    assert_eq!(
        up.requests.await.unwrap()[0],
        b"HEAD /x HTTP/1.1\r\nhost: up\r\n\r\n"
    );
}

#[tokio::test]
async fn a_204_and_a_304_have_no_body() {
    for status in ["204 No Content", "304 Not Modified"] {
        let up = upstream(vec![
            Action::Read,
            Action::Write(format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n").into_bytes()),
            Action::Read,
            Action::Write(SECOND.to_vec()),
            Action::Hold,
        ])
        .await;
        let resp = get_from(up.addr).await.unwrap();
        assert_eq!(resp.status().as_u16(), status[..3].parse::<u16>().unwrap());
        let mut body = resp.into_body();
        assert!(body.is_end_stream(), "{status}");
        let read = read_body(&mut body).await;
        assert!(read.error.is_none() && read.data.is_empty(), "{status}");
        second_exchange_works(body.take_reusable().expect("reusable")).await;
    }
}

#[tokio::test]
async fn a_content_length_zero_body_ends_at_once_and_is_reusable_after_its_end() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
    second_exchange_works(body.take_reusable().expect("reusable")).await;
}

/// hyper's server drops a body that `is_end_stream()` without polling it,
/// and `UpstreamBody`'s drop then asks `take_reusable()`: a
/// `Content-Length: 0` body must give its connection back unpolled.
#[tokio::test]
async fn a_content_length_zero_body_gives_its_connection_back_without_a_poll() {
    let up = upstream(answer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert!(body.is_end_stream());
    assert!(
        body.take_reusable().is_some(),
        "a body that is_end_stream() did not give its clean connection back"
    );
}

// 9. Bodies framed by the connection's end, and keep-alive.

#[tokio::test]
async fn a_body_without_length_or_chunks_is_read_to_the_close_and_not_reused() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nabc".to_vec()),
        Action::Sleep(10),
        Action::Write(b"def".to_vec()),
        Action::Sleep(10),
        Action::Write(b"ghi".to_vec()),
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().exact(), None);
    let (data, trailers) = read_ok(&mut body).await;
    assert_eq!(data, b"abcdefghi");
    assert!(trailers.is_none());
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn an_http_1_0_response_without_keep_alive_is_not_reused() {
    let up = upstream(answer("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_10);
    let mut body = resp.into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn an_http_1_0_response_with_keep_alive_is_reused() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(
            b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
        ),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let resp = get_from(up.addr).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_10);
    let mut body = resp.into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    second_exchange_works(body.take_reusable().expect("reusable")).await;
}

#[tokio::test]
async fn an_http_1_0_keep_alive_response_without_a_length_is_not_reused() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\nhello".to_vec()),
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn an_http_1_1_response_with_connection_close_is_not_reused() {
    for connection in ["close", "Close", "upgrade, CLOSE"] {
        let up = upstream(answer(format!(
            "HTTP/1.1 200 OK\r\nconnection: {connection}\r\ncontent-length: 5\r\n\r\nhello"
        )))
        .await;
        let mut body = get_from(up.addr).await.unwrap().into_body();
        assert_eq!(read_ok(&mut body).await.0, b"hello", "{connection}");
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_none(), "{connection}");
    }
    // Another token is no close.
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\nconnection: keep-alive, closed\r\ncontent-length: 5\r\n\r\nhello",
    ))
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.take_reusable().is_some());
}

// 10. Truncated bodies.

#[tokio::test]
async fn a_content_length_body_cut_short_is_truncated_by_the_missing_bytes() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab".to_vec()),
        Action::Sleep(10),
        Action::Write(b"cd".to_vec()),
    ])
    .await;
    let (e, data) = read_err(get_from(up.addr).await).await;
    assert!(matches!(e, H1Error::Truncated(6)), "{e:?}");
    assert_eq!(data, b"abcd");
    // A head and nothing more.
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n".to_vec()),
    ])
    .await;
    let (e, data) = read_err(get_from(up.addr).await).await;
    assert!(matches!(e, H1Error::Truncated(7)), "{e:?}");
    assert!(data.is_empty());
}

#[tokio::test]
async fn a_chunked_body_cut_short_is_truncated() {
    for chunks in [
        &b"5\r\nhel"[..],
        b"5\r\nhello",
        b"5\r\nhello\r\n",
        b"5\r\nhello\r\n0\r\n",
        b"5\r\nhello\r\n0\r\nx-a: 1\r\n",
        b"5",
    ] {
        let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        response.extend_from_slice(chunks);
        let up = upstream(vec![Action::Read, Action::Write(response)]).await;
        let (e, _) = read_err(get_from(up.addr).await).await;
        assert!(
            matches!(e, H1Error::TruncatedChunked),
            "{:?}: {e:?}",
            String::from_utf8_lossy(chunks)
        );
    }
}

// 11. No response, or half a head.

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_no_response() {
    let up = upstream(vec![Action::Read]).await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::NoResponse { error: None }), "{e:?}");
    assert!(e.before_response());
    assert_eq!(
        up.requests.await.unwrap(),
        [b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n".to_vec()]
    );
}

#[tokio::test]
async fn a_connection_closed_in_the_middle_of_a_head_is_closed_in_head() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-".to_vec()),
    ])
    .await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::ClosedInHead), "{e:?}");
    assert!(!e.before_response());
    // After an interim response, too: a response had begun.
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
    ])
    .await;
    let e = expect_error(get_from(up.addr).await);
    assert!(matches!(e, H1Error::ClosedInHead), "{e:?}");
    assert!(!e.before_response());
}

// 12. is_idle_open.

#[tokio::test]
async fn an_idle_healthy_connection_is_open() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()),
        Action::Read,
        Action::Write(SECOND.to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    let mut conn = body.take_reusable().expect("reusable");
    assert!(conn.is_idle_open());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(conn.is_idle_open());
    // The check leaves the connection usable.
    second_exchange_works(conn).await;
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_open() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()),
        Action::Go,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    let mut conn = body.take_reusable().expect("reusable");
    assert!(conn.is_idle_open());
    up.go.send(()).unwrap();
    // Let the FIN arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!conn.is_idle_open());
}

#[tokio::test]
async fn an_idle_connection_with_stray_bytes_from_the_upstream_is_not_open() {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()),
        Action::Go,
        Action::Write(b"HTTP/1.1 408 Request Timeout\r\n\r\n".to_vec()),
        Action::Hold,
    ])
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    let mut conn = body.take_reusable().expect("reusable");
    assert!(conn.is_idle_open());
    up.go.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!conn.is_idle_open());
    // And stays so: the bytes read are kept.
    assert!(!conn.is_idle_open());
}

// 13. More than announced.

#[tokio::test]
async fn bytes_after_a_content_length_body_are_not_body_and_the_connection_is_not_reused() {
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA BYTES",
    ))
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    let read = read_body(&mut body).await;
    assert!(read.error.is_none());
    assert_eq!(read.data, b"hello");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn bytes_after_a_chunked_body_leave_the_connection_unused() {
    let up = upstream(answer(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA",
    ))
    .await;
    let mut body = get_from(up.addr).await.unwrap().into_body();
    assert_eq!(read_ok(&mut body).await.0, b"hello");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn a_head_response_followed_by_body_bytes_is_not_reused() {
    let up = upstream(answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")).await;
    let head = request(Method::HEAD, "/x", &[("host", "up")], b"");
    let mut body = exchange(connect(up.addr).await, &head)
        .await
        .unwrap()
        .into_body();
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
    assert!(body.take_reusable().is_none());
}

// 14. encode.

/// What the upstream received for `request`, answered with an empty 200.
async fn received(request: &Encoded) -> Vec<u8> {
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()),
    ])
    .await;
    let resp = exchange(connect(up.addr).await, request).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    let mut requests = up.requests.await.unwrap();
    assert_eq!(requests.len(), 1);
    requests.pop().unwrap()
}

#[tokio::test]
async fn encode_writes_the_request_line_and_headers_in_order() {
    let req = request(
        Method::GET,
        "/x?y=1",
        &[
            ("host", "up"),
            ("accept", "*/*"),
            ("x-b", "1"),
            ("user-agent", "t/1"),
            ("x-b", "2"),
        ],
        b"",
    );
    assert!(!req.head_method);
    assert!(req.body.is_empty());
    assert_eq!(
        received(&req).await,
        b"GET /x?y=1 HTTP/1.1\r\nhost: up\r\naccept: */*\r\nx-b: 1\r\nx-b: 2\r\nuser-agent: t/1\r\n\r\n"
    );
}

#[tokio::test]
async fn encode_sends_an_absolute_uri_in_origin_form() {
    let req = request(
        Method::GET,
        "http://up:8080/a/b?c=d",
        &[("host", "up")],
        b"",
    );
    assert_eq!(&req.head[..], b"GET /a/b?c=d HTTP/1.1\r\nhost: up\r\n\r\n");
    let req = request(Method::GET, "http://up", &[("host", "up")], b"");
    assert_eq!(&req.head[..], b"GET / HTTP/1.1\r\nhost: up\r\n\r\n");
}

#[tokio::test]
async fn encode_replaces_the_callers_content_length_with_the_real_one() {
    let req = request(
        Method::POST,
        "/x",
        &[("host", "up"), ("content-length", "999"), ("x-a", "1")],
        b"hello",
    );
    assert_eq!(
        received(&req).await,
        b"POST /x HTTP/1.1\r\nhost: up\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[tokio::test]
async fn encode_says_no_content_length_for_a_get_without_a_body() {
    let req = request(
        Method::GET,
        "/x",
        &[("host", "up"), ("content-length", "0")],
        b"",
    );
    assert_eq!(received(&req).await, b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n");
    let req = request(Method::DELETE, "/x", &[("host", "up")], b"");
    assert_eq!(&req.head[..], b"DELETE /x HTTP/1.1\r\nhost: up\r\n\r\n");
    // A GET with a body says its length.
    let req = request(Method::GET, "/x", &[("host", "up")], b"ab");
    assert_eq!(
        received(&req).await,
        b"GET /x HTTP/1.1\r\nhost: up\r\ncontent-length: 2\r\n\r\nab"
    );
}

#[tokio::test]
async fn encode_says_content_length_0_for_an_empty_post_put_or_patch() {
    let req = request(Method::POST, "/x", &[("host", "up")], b"");
    assert_eq!(
        received(&req).await,
        b"POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n"
    );
    for method in [Method::PUT, Method::PATCH] {
        let req = request(method.clone(), "/x", &[("host", "up")], b"");
        let expected = format!("{method} /x HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(&req.head[..], expected.as_bytes());
    }
}

#[tokio::test]
async fn encode_sends_a_body_larger_than_inline_body_whole() {
    let body = pattern(INLINE_BODY * 4 + 123);
    let req = request(Method::PUT, "/big", &[("host", "up")], &body);
    // Beside the head, not copied into it.
    assert_eq!(&req.body[..], &body[..]);
    let head = format!(
        "PUT /big HTTP/1.1\r\nhost: up\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(&req.head[..], head.as_bytes());
    let got = received(&req).await;
    assert_eq!(got.len(), head.len() + body.len());
    assert_eq!(&got[..head.len()], head.as_bytes());
    assert!(got[head.len()..] == body[..], "the body arrived changed");
}

#[tokio::test]
async fn encode_sends_a_body_of_inline_body_bytes_in_the_heads_buffer() {
    let body = pattern(INLINE_BODY);
    let req = request(Method::POST, "/x", &[("host", "up")], &body);
    assert!(req.body.is_empty());
    let head = format!("POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: {INLINE_BODY}\r\n\r\n");
    let expected = [head.as_bytes(), &body[..]].concat();
    assert!(req.head[..] == expected[..]);
    assert!(received(&req).await == expected);
}

// The connection's own state.

#[tokio::test]
async fn a_connection_with_unread_bytes_is_not_idle_open() {
    let up = upstream(vec![Action::Hold]).await;
    let mut conn = connect(up.addr).await;
    assert!(conn.is_idle_open());
    conn.buf.extend_from_slice(b"x");
    assert!(!conn.is_idle_open());
}

// 16. Headers put over the head's, a head without `Host`, the deadline.

#[tokio::test]
async fn encode_puts_extra_headers_in_place_of_the_heads_and_adds_host_when_missing() {
    let parts = http::Request::builder()
        .method(Method::GET)
        .uri("/x")
        .header("authorization", "Bearer the-callers")
        .header("accept", "*/*")
        .header("authorization", "Basic another")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let extra = [(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer the-routes"),
    )];
    let req = encode(
        &parts,
        &extra,
        &HeaderValue::from_static("up:8080"),
        &Bytes::new(),
    );
    assert_eq!(
        &req.head[..],
        b"GET /x HTTP/1.1\r\nhost: up:8080\r\naccept: */*\r\nauthorization: Bearer the-routes\r\n\r\n"
    );
    // The head itself is untouched: it can be sent again.
    assert_eq!(parts.headers.get_all("authorization").iter().count(), 2);
}

#[tokio::test]
async fn no_response_by_the_deadline_is_a_timeout() {
    let up = upstream(vec![Action::Read, Action::Hold]).await;
    let started = Instant::now();
    let e = expect_error(
        connect(up.addr)
            .await
            .exchange(&get(), Instant::now() + Duration::from_millis(100))
            .await,
    );
    assert!(matches!(e, H1Error::Timeout), "{e}");
    assert!(!e.before_response());
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_connection_s_timer_is_moved_to_each_exchange_s_deadline() {
    // Two exchanges on one connection: the second's deadline is later
    // than the first's, and a slow second answer within it is not cut.
    let up = upstream(vec![
        Action::Read,
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na".to_vec()),
        Action::Read,
        Action::Sleep(80),
        Action::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb".to_vec()),
        Action::Hold,
    ])
    .await;
    let first = connect(up.addr)
        .await
        .exchange(&get(), Instant::now() + Duration::from_millis(50))
        .await
        .unwrap();
    let mut body = first.into_body();
    assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_some());
    let conn = body.take_reusable().expect("reusable");
    let second = conn
        .exchange(&get(), Instant::now() + Duration::from_secs(2))
        .await
        .expect("within the second deadline");
    assert_eq!(second.status(), 200);
}

#[test]
fn an_encoded_head_is_sized_up_front_and_never_grows() {
    // A grown buffer would leave a copy of the token in the freed one.
    let token = format!("Bearer {}", "t".repeat(8 * 1024));
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri("/orders?x=1");
    for i in 0..40 {
        builder = builder.header(format!("x-h{i}"), "v".repeat(i * 7));
    }
    let parts = builder.body(()).unwrap().into_parts().0;
    let extra = [(
        header::AUTHORIZATION,
        HeaderValue::from_str(&token).unwrap(),
    )];
    let req = encode(
        &parts,
        &extra,
        &HeaderValue::from_static("up:8080"),
        &Bytes::from_static(b"amount=1"),
    );
    assert!(
        req.head.capacity() - req.head.len() <= 64,
        "capacity {} for {} bytes: the buffer grew",
        req.head.capacity(),
        req.head.len()
    );
}
