//! HTTP/1.1 to an upstream without a connection task: the request's own
//! task writes the request, reads the response head and then, through
//! [`H1Body`], the body, straight from the upstream's socket.
//!
//! Why not hyper's client here: its connection runs as a task of its own,
//! which a request reaches through channels (the request, the response
//! head, every body chunk, the connection's readiness). For a gateway that
//! forwards one small request after another, doing without that hand-off
//! between two tasks (with the changes made beside it) took a quarter off
//! the user CPU per forwarded request (docs/BENCHMARKS.md, "The gateway
//! beside nginx and haproxy"). nginx,
//! haproxy and Pingora read and write both sockets from one place; this
//! does the same for a request whose body is in memory already (no body,
//! or one of at most `retry_body_limit` bytes, which the gateway buffers
//! anyway). A streamed request body still goes through hyper's client,
//! which sends it while watching for an early response.
//!
//! What a response must be, as hyper's client asks:
//! - a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields that
//!   httparse accepts, with a status of `100` to `999`;
//! - one `Content-Length` (copies of one value are one value), or
//!   `Transfer-Encoding`, which wins over a `Content-Length` (the
//!   `Content-Length` is dropped, and the connection is not reused);
//! - chunked framing exactly: hex sizes, `CRLF` line ends, chunk lines of
//!   at most [`MAX_CHUNK_LINE`] bytes, trailers of at most
//!   [`MAX_TRAILERS`] bytes;
//! - no body after `HEAD`, `1xx`, `204` or `304`. Interim `1xx` responses
//!   are skipped (at most [`MAX_INTERIM`]); a `101` ends the exchange and
//!   the connection.
//!
//! A connection is reused only after a response that leaves it clean:
//! HTTP/1.1 without `Connection: close` (HTTP/1.0 with `keep-alive`), a
//! body framed by length or chunks and read to its end, and nothing sent
//! after it. An idle connection is checked before each reuse without a
//! system call ([`Conn::is_idle_open`]): the reactor knows when the
//! upstream closed it or sent something unasked.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;
use zeroize::Zeroizing;

/// The largest response head read, status line and fields.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
pub(crate) const MAX_HEADERS: usize = 128;
/// The largest trailer section of a chunked response.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// The longest chunk-size line of a chunked response (size and extensions).
pub(crate) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most interim (`1xx`) responses skipped before the final one.
pub(crate) const MAX_INTERIM: usize = 8;
/// How much is read at a time, at least.
const READ_SIZE: usize = 8 * 1024;
/// How much is read at a time, at most (a long body's reads grow to it).
const READ_SIZE_MAX: usize = 64 * 1024;
/// A request body up to this size is sent in the head's buffer, with one
/// write; a larger one is written after it.
const INLINE_BODY: usize = 16 * 1024;

/// A connection's socket: TCP, or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange on a connection failed. The connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("the connection closed before any response{}", io_suffix(.error))]
    NoResponse { error: Option<io::Error> },
    #[error("sending the request failed: {error}")]
    Write { error: io::Error },
    #[error("reading the response failed: {error}")]
    Read { error: io::Error },
    #[error("the connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the response head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the response head is malformed ({0})")]
    BadHead(&'static str),
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
    #[error("no response by the deadline")]
    Timeout,
    #[error("the chunked response body is malformed ({0})")]
    BadChunk(&'static str),
    #[error("the connection closed {0} bytes before the end of the response body")]
    Truncated(u64),
    #[error("the connection closed before the end of the chunked response body")]
    TruncatedChunked,
}

fn io_suffix(error: &Option<io::Error>) -> String {
    error
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

impl H1Error {
    /// Whether the upstream cannot have acted on the request: the
    /// connection failed while it was being written or before any byte of
    /// a response came.
    pub(crate) fn before_response(&self) -> bool {
        matches!(self, Self::NoResponse { .. } | Self::Write { .. })
    }
}

/// A request ready to be written: its head (and a small body) in one
/// buffer, a larger body beside it.
pub(crate) struct Encoded {
    /// Zeroed when dropped: it holds the route's token.
    head: Zeroizing<Vec<u8>>,
    body: Bytes,
    /// A `HEAD` request: its response has no body, whatever it says.
    head_method: bool,
}

/// Encodes a request for HTTP/1.1: origin-form target, the head's headers
/// (the caller has removed hop-by-hop fields) with `extra` in place of
/// those of the same names, `host` when the head has no `Host` (a request
/// that came over HTTP/2), and `Content-Length` from `body` (the caller's
/// own is replaced). The head must not carry `Transfer-Encoding`: the body
/// is framed by its length. The head is borrowed, not consumed, so that
/// the caller can send it again.
pub(crate) fn encode(
    parts: &Parts,
    extra: &[(HeaderName, HeaderValue)],
    host: &HeaderValue,
    body: &Bytes,
) -> Encoded {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if target.is_empty() { "/" } else { target };
    // Sized up front so that it never grows: a grown buffer would leave a
    // copy of the token behind in the freed one.
    let fields: usize = parts
        .headers
        .iter()
        .chain(extra.iter().map(|(n, v)| (n, v)))
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let inline = if body.len() <= INLINE_BODY {
        body.len()
    } else {
        0
    };
    let mut head = Vec::with_capacity(
        parts.method.as_str().len() + target.len() + 12 // request line
            + host.len() + 8 // a Host of our own
            + fields
            + 40 // content-length
            + 2
            + inline,
    );
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &HeaderName, value: &HeaderValue| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    if !parts.headers.contains_key(header::HOST) && !extra.iter().any(|(n, _)| n == header::HOST) {
        field(&header::HOST, host);
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || extra.iter().any(|(n, _)| n == name) {
            continue;
        }
        field(name, value);
    }
    for (name, value) in extra {
        field(name, value);
    }
    // A body, or a method whose body means something, says its length
    // (RFC 9110 8.6); a GET without one says nothing.
    if !body.is_empty() || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(body.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let body = if body.len() <= INLINE_BODY {
        head.extend_from_slice(body);
        Bytes::new()
    } else {
        body.clone()
    };
    Encoded {
        head: Zeroizing::new(head),
        body,
        head_method: parts.method == Method::HEAD,
    }
}

/// An HTTP/1.1 connection to an upstream, between requests.
pub(crate) struct Conn {
    io: Stream,
    /// What was read and not yet taken: a head being parsed, body bytes.
    buf: BytesMut,
    /// The deadline of the exchange in progress. One timer for the
    /// connection's life: moving a registered timer's deadline later is
    /// one atomic store in Tokio, where a timer per request is a lock and
    /// a timer-wheel insert and removal each time.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            timer: None,
        }
    }

    /// The socket, for hyper's client (a new connection, nothing read).
    pub(crate) fn into_stream(self) -> Stream {
        self.io
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it nor sent anything since the last response. No system
    /// call while the socket had no event: the read finds no readiness and
    /// returns at once.
    pub(crate) fn is_idle_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.buf),
            Poll::Pending
        )
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.clamp(READ_SIZE, READ_SIZE_MAX));
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, READ_SIZE)).await
    }

    /// Sends `request` and reads the response head, by `deadline`
    /// ([`H1Error::Timeout`] after it); the body follows in the returned
    /// [`H1Body`], which owns the connection from then on.
    pub(crate) async fn exchange(
        mut self,
        request: &Encoded,
        deadline: Instant,
    ) -> Result<Response<H1Body>, H1Error> {
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline.into());
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline.into())),
        };
        let outcome = {
            let mut work = std::pin::pin!(self.write_and_read(request));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = work.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                timer.as_mut().poll(cx).map(|()| Err(H1Error::Timeout))
            })
            .await
        };
        self.timer = Some(timer);
        let (head, framing, keep_alive) = outcome?;
        Ok(head.map(|()| H1Body {
            conn: Some(self),
            framing,
            keep_alive,
        }))
    }

    async fn write_and_read(
        &mut self,
        request: &Encoded,
    ) -> Result<(Response<()>, Framing, bool), H1Error> {
        self.write(request)
            .await
            .map_err(|error| H1Error::Write { error })?;
        let mut received = false;
        for _ in 0..=MAX_INTERIM {
            let head = self.read_head(request.head_method, &mut received).await?;
            let status = head.0.status();
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(head);
        }
        Err(H1Error::TooManyInterim)
    }

    async fn write(&mut self, request: &Encoded) -> io::Result<()> {
        self.io.write_all(&request.head).await?;
        if !request.body.is_empty() {
            self.io.write_all(&request.body).await?;
        }
        self.io.flush().await
    }

    /// Reads one response head: the head, how its body is framed, and
    /// whether the connection can carry another request after it.
    async fn read_head(
        &mut self,
        head_method: bool,
        received: &mut bool,
    ) -> Result<(Response<()>, Framing, bool), H1Error> {
        let mut scanned = 0;
        loop {
            if let Some(end) = head_end(&self.buf, &mut scanned) {
                if end > MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
                return self.parse_head(end, head_method);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            match self.fill().await {
                Ok(0) if !*received => return Err(H1Error::NoResponse { error: None }),
                Ok(0) => return Err(H1Error::ClosedInHead),
                Ok(_) => *received = true,
                Err(error) if !*received => return Err(H1Error::NoResponse { error: Some(error) }),
                Err(error) => return Err(H1Error::Read { error }),
            }
        }
    }

    /// Takes the head that ends at `end` out of the buffer and parses it.
    /// Header values share the head's bytes instead of being copied.
    fn parse_head(
        &mut self,
        end: usize,
        head_method: bool,
    ) -> Result<(Response<()>, Framing, bool), H1Error> {
        let head = self.buf.split_to(end).freeze();
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &head,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) if len == end => {}
            Ok(_) => return Err(H1Error::BadHead("the head does not end at its empty line")),
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::TooManyHeaders),
            Err(e) => return Err(H1Error::BadHead(parse_error(e))),
        }
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(H1Error::BadHead("invalid status code"))?;
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| H1Error::BadHead("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
                .map_err(|_| H1Error::BadHead("invalid header value"))?;
            headers.append(name, value);
        }
        let mut keep_alive = match version {
            Version::HTTP_11 => !has_token(&headers, header::CONNECTION, "close"),
            _ => has_token(&headers, header::CONNECTION, "keep-alive"),
        };
        let code = status.as_u16();
        let framing = if head_method || status.is_informational() || code == 204 || code == 304 {
            Framing::Done
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            if headers.remove(header::CONTENT_LENGTH).is_some() {
                // Both: a message an intermediary may have misread; this
                // connection carries nothing more (RFC 9112 6.3).
                keep_alive = false;
            }
            if last_coding_is_chunked(&headers) {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else if headers.contains_key(header::CONTENT_LENGTH) {
            match content_length(&headers)? {
                // Ended already: hyper drops a body that says so unread,
                // and the connection must go back to the pool all the same.
                0 => Framing::Done,
                n => Framing::Length(n),
            }
        } else {
            Framing::Close
        };
        if matches!(framing, Framing::Close) || status == StatusCode::SWITCHING_PROTOCOLS {
            keep_alive = false;
        }
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok((resp, framing, keep_alive))
    }
}

/// httparse's error, as words.
fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Where the head at the front of `buf` ends (the index after its empty
/// line), if it has ended. `scanned`: how far earlier calls looked, so a
/// head that arrives in pieces is scanned once.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    *scanned = buf.len();
    let tail = buf.get(from..)?;
    tail.windows(2).enumerate().find_map(|(i, w)| match w {
        [b'\n', b'\n'] => Some(from + i + 2),
        [b'\n', b'\r'] if tail.get(i + 2) == Some(&b'\n') => Some(from + i + 3),
        _ => None,
    })
}

/// Whether a comma-separated header has `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the last transfer coding is `chunked`.
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The one `Content-Length` of a response: every value (and every
/// element of a list) must be the same number.
fn content_length(headers: &HeaderMap) -> Result<u64, H1Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::BadHead("invalid Content-Length"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match length {
                Some(m) if m != n => {
                    return Err(H1Error::BadHead("conflicting Content-Length values"))
                }
                _ => length = Some(n),
            }
        }
    }
    length.ok_or(H1Error::BadHead("invalid Content-Length"))
}

/// How the rest of a response body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// This many bytes more.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// The body has ended.
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes more.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
}

/// A response body read from an upstream connection that [`Conn::exchange`]
/// handed over. When it has been read to its end and the connection is
/// clean, [`take_reusable`](Self::take_reusable) gives the connection
/// back; a body dropped earlier closes it.
pub(crate) struct H1Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

impl H1Body {
    /// The connection, once the body has ended and the connection can
    /// carry another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Conn> {
        if !matches!(self.framing, Framing::Done) || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    pub(crate) fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(n) => hyper::body::SizeHint::with_exact(n),
            Framing::Done => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }

    /// The next frame: data, the trailers of a chunked body, or the end.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let polled = self.poll_inner(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // The connection is in an unknown state: closed with the body.
            self.framing = Framing::Done;
            self.keep_alive = false;
            self.conn = None;
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(rest) => {
                    if !conn.buf.is_empty() {
                        let n = rest.min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(n as usize).freeze();
                        self.framing = match rest - n {
                            0 => Framing::Done,
                            rest => Framing::Length(rest),
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = usize::try_from(rest).unwrap_or(usize::MAX);
                    match ready!(conn.poll_fill(cx, want)) {
                        Ok(0) => return Poll::Ready(Some(Err(H1Error::Truncated(rest)))),
                        Ok(_) => {}
                        Err(error) => return Poll::Ready(Some(Err(H1Error::Read { error }))),
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_fill(cx, READ_SIZE_MAX)) {
                        Ok(0) => {
                            self.framing = Framing::Done;
                            self.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(error) => return Poll::Ready(Some(Err(H1Error::Read { error }))),
                    }
                }
                Framing::Chunked(state) => match chunk_step(&mut conn.buf, state) {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(Step::Next(next, frame)) => {
                        self.framing = next;
                        if let Some(frame) = frame {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                    }
                    Ok(Step::More(want)) => match ready!(conn.poll_fill(cx, want)) {
                        Ok(0) => return Poll::Ready(Some(Err(H1Error::TruncatedChunked))),
                        Ok(_) => {}
                        Err(error) => return Poll::Ready(Some(Err(H1Error::Read { error }))),
                    },
                },
            }
        }
    }
}

/// What one step of chunked decoding did.
enum Step {
    /// Moved on to this framing, maybe with a frame to hand out.
    Next(Framing, Option<Frame<Bytes>>),
    /// Needs more bytes (about this many) before it can go on.
    More(usize),
}

/// One step of decoding a chunked body from `buf`.
fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, H1Error> {
    match state {
        Chunk::Size => {
            let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
                if buf.len() >= MAX_CHUNK_LINE {
                    return Err(H1Error::BadChunk("chunk-size line too long"));
                }
                return Ok(Step::More(READ_SIZE));
            };
            let size = chunk_size(&buf[..lf])?;
            buf.advance(lf + 1);
            Ok(Step::Next(
                Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }),
                None,
            ))
        }
        Chunk::Data(rest) => {
            if buf.is_empty() {
                return Ok(Step::More(usize::try_from(rest).unwrap_or(usize::MAX)));
            }
            let n = rest.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = match rest - n {
                0 => Chunk::DataEnd,
                rest => Chunk::Data(rest),
            };
            Ok(Step::Next(Framing::Chunked(next), Some(Frame::data(data))))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More(READ_SIZE));
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::BadChunk("no CRLF after a chunk's data"));
            }
            buf.advance(2);
            Ok(Step::Next(Framing::Chunked(Chunk::Size), None))
        }
        Chunk::Trailers => {
            if buf.len() < 2 {
                return Ok(Step::More(READ_SIZE));
            }
            if &buf[..2] == b"\r\n" {
                buf.advance(2);
                return Ok(Step::Next(Framing::Done, None));
            }
            let Some(end) = buf
                .windows(4)
                .take(MAX_TRAILERS)
                .position(|w| w == b"\r\n\r\n")
            else {
                if buf.len() >= MAX_TRAILERS {
                    return Err(H1Error::BadChunk("trailers larger than 16 KiB"));
                }
                return Ok(Step::More(READ_SIZE));
            };
            let section = buf.split_to(end + 4);
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let fields = match httparse::parse_headers(&section, &mut fields) {
                Ok(httparse::Status::Complete((_, fields))) => fields,
                _ => return Err(H1Error::BadChunk("malformed trailers")),
            };
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| H1Error::BadChunk("malformed trailers"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| H1Error::BadChunk("malformed trailers"))?;
                trailers.append(name, value);
            }
            Ok(Step::Next(Framing::Done, Some(Frame::trailers(trailers))))
        }
    }
}

/// The size of a chunk-size line (without its `\n`): hex digits, then
/// optional extensions after `;`, then `\r`.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(H1Error::BadChunk("chunk-size line without CRLF"))?;
    // No other control character (a stray CR, a form feed) anywhere, the
    // extensions included; a tab is whitespace.
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(H1Error::BadChunk(
            "a control character in a chunk-size line",
        ));
    }
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(H1Error::BadChunk("no chunk size"));
    }
    if digits > 16 {
        return Err(H1Error::BadChunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(H1Error::BadChunk("invalid chunk size"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = (size << 4) | u64::from(v);
    }
    Ok(size)
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
