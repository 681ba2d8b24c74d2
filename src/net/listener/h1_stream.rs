//! An HTTP/1.1 event stream (`GET /api/messages`, `GET /api/events`)
//! served without hyper, so that a parked stream keeps no HTTP buffers.
//!
//! **Why.** hyper keeps a connection's read buffer (8, then 16 KiB) and its
//! header write buffer (8 KiB) for the connection's whole life: an SSE
//! stream parked for hours held 24 of the 27 KB it cost (BENCHMARKS.md,
//! "Where an idle SSE stream's bytes live"). EventSource needs nothing of
//! HTTP/1.1 beyond one GET and one chunked response, so for that request
//! alone this module:
//!
//! - reads the head into a buffer that is freed once it is parsed, by
//!   httparse, within the connection's header timeout;
//! - sends the request through the same axum router as every other request
//!   (token, CORS, request log, limits: nothing here knows the route's
//!   rules);
//! - writes the response head, then the body's frames as chunks as the
//!   body yields them, with `connection: close` (one request per
//!   connection, as EventSource makes);
//! - watches the connection for the client leaving with a one-byte buffer.
//!   A stream client has nothing more to send, so bytes after the head
//!   close the connection too.
//!
//! Anything else (another method, path or HTTP version, HTTP/2's preface,
//! a request with a body, `Expect` or `Upgrade`, more than [`MAX_HEADERS`]
//! headers, a head longer than [`MAX_HEAD`], a head followed by more bytes)
//! goes to hyper with the bytes read so far, so hyper's rules and errors
//! apply to it unchanged. So does a stream requested on a connection that
//! began with another request (a browser reusing a keep-alive connection):
//! correct either way, only larger.

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderName, HeaderValue, Method, Version, header},
};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::SystemTime,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// The paths served here: the HTTP door's stream routes, one list for both
/// (a route renamed there is taken here too).
const ROUTES: [&str; 2] = crate::doors::http::STREAM_PATHS;
/// The longest head read here; a longer one (a huge token, say) goes to
/// hyper, whose limits and answers then apply.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// The most headers read here; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;

/// What a connection's first bytes turned out to be.
pub(super) enum First<I> {
    /// A stream request, parsed: serve it with [`serve`].
    Stream(I, Box<Request>),
    /// Anything else: hyper serves the connection, from these bytes on.
    Other(Rewind<I>),
    /// The client left, or sent no whole head before the deadline.
    Closed,
}

/// Reads the connection's first request head if it could be a stream
/// request, until `deadline`; stops at the first byte that rules it out.
pub(super) async fn read_first<I>(mut io: I, deadline: Instant) -> First<I>
where
    I: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    loop {
        if head.len() == head.capacity() {
            head.reserve(head.len().min(MAX_HEAD.saturating_sub(head.len())));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut head)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return First::Closed,
            Ok(Ok(_)) => {}
        }
        if !ROUTES.iter().any(|route| could_start(&head, route)) {
            return First::Other(Rewind::new(io, head));
        }
        match parse(&head) {
            Parsed::Partial if head.len() < MAX_HEAD => continue,
            Parsed::Stream(request) => return First::Stream(io, request),
            Parsed::Partial | Parsed::Other => return First::Other(Rewind::new(io, head)),
        }
    }
}

/// For the fuzzer (`herald::fuzz_network_input`): a connection's first
/// bytes, as this module reads them.
pub(super) fn fuzz(head: &[u8]) {
    let _ = ROUTES.iter().any(|route| could_start(head, route));
    let _ = parse(head);
}

/// Whether `head` and the request line `GET <path>` agree as far as both
/// go, and the path, if whole, ends where the head's does.
fn could_start(head: &[u8], path: &str) -> bool {
    let line = b"GET ".iter().chain(path.as_bytes());
    let mut at = 0;
    for expected in line {
        match head.get(at) {
            None => return true,
            Some(byte) if byte == expected => at += 1,
            Some(_) => return false,
        }
    }
    head.get(at).is_none_or(|next| matches!(next, b'?' | b' '))
}

enum Parsed {
    Partial,
    Stream(Box<Request>),
    Other,
}

fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        // Bytes after the head would be a pipelined request: hyper's.
        Ok(httparse::Status::Complete(length)) if length == head.len() => {
            request(&parsed).map_or(Parsed::Other, |request| Parsed::Stream(Box::new(request)))
        }
        _ => Parsed::Other,
    }
}

/// The request as axum expects it, if it is one served here.
fn request(parsed: &httparse::Request) -> Option<Request> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(parsed.path?)
        .version(Version::HTTP_11);
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let has_body = name == header::CONTENT_LENGTH && field.value != b"0"
            || name == header::TRANSFER_ENCODING;
        if has_body || name == header::EXPECT || name == header::UPGRADE {
            return None;
        }
        builder = builder.header(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    builder.body(Body::empty()).ok()
}

/// What ends a served stream besides its body: the connection's eviction
/// (which the watch also uses for a client that stopped reading), and the
/// server stopping.
pub(super) struct Watch<'a> {
    pub evict: &'a CancellationToken,
    pub stop: &'a CancellationToken,
    pub connections: &'a super::Connections,
    pub conn: &'a super::Conn,
}

/// Answers `request` with `app` on `io`, then closes the connection: when
/// the body ends, the client leaves or sends anything, a write fails, the
/// connection is evicted (or its client stopped reading: see `registry`),
/// or the server stops, even while a write is blocked.
pub(super) async fn serve<I>(mut io: I, request: Box<Request>, app: Router, watch: Watch<'_>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed: answering (the router's future, the response head) is needed
    // only until the head is written, not for the stream's life.
    // Unboxed in a block of its own, so the box is freed now, not when the
    // stream ends.
    let request = {
        let boxed = request;
        *boxed
    };
    let Some((mut body, chunked, ends)) = Box::pin(respond(&mut io, request, app)).await else {
        return;
    };
    let progress = watch.connections.progress(watch.conn, ends);
    // One byte is enough to learn that the client sent something or left.
    let mut probe = [0u8; 1];
    // Made once: each `cancelled()` future registers with the token.
    let evicted = watch.evict.cancelled();
    tokio::pin!(evicted);
    let stopped = watch.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    progress.handed();
                    let written = tokio::select! {
                        written = write_data(&mut io, data, chunked) => written,
                        _ = &mut evicted => return,
                        _ = &mut stopped => return,
                    };
                    if written.is_err() {
                        return;
                    }
                    progress.taken();
                }
                // Cut short: closing without the last chunk says so.
                Some(Err(error)) => {
                    tracing::debug!(%error, "stream body failed");
                    return;
                }
                None => break,
            },
            _ = io.read(&mut probe) => return,
            _ = &mut evicted => return,
            _ = &mut stopped => return,
        }
    }
    if chunked && io.write_all(b"0\r\n\r\n").await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
}

/// Calls `app` and writes the response head; the body, whether it goes in
/// chunks, and when it must end whatever, if the head went out.
async fn respond<I>(
    io: &mut I,
    request: Request,
    mut app: Router,
) -> Option<(Body, bool, Option<Instant>)>
where
    I: AsyncWrite + Unpin,
{
    let response = match app.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let ends = parts
        .extensions
        .get::<super::StreamEnds>()
        .map(|ends| ends.0);
    let length = body.size_hint().exact();
    let head = response_head(&parts, length);
    io.write_all(&head).await.ok()?;
    Some((body, length.is_none(), ends))
}

/// Headers this writer sets itself, whatever the response carried.
const OURS: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::DATE,
];

/// The status line and headers, ours replacing any framing the response
/// carried.
fn response_head(parts: &axum::http::response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let status = parts.status;
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if OURS.contains(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    match length {
        Some(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// One body frame: as a chunk, or as is when the length was sent. One
/// write call (vectored where the socket takes it).
async fn write_data<I>(io: &mut I, data: axum::body::Bytes, chunked: bool) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    use hyper::body::Buf;
    let mut data = data;
    if !chunked {
        return io.write_all_buf(&mut data).await;
    }
    let size = format!("{:x}\r\n", data.len());
    let mut chunk = Buf::chain(size.as_bytes(), data).chain(&b"\r\n"[..]);
    io.write_all_buf(&mut chunk).await
}

/// A connection whose first bytes were already read: they are read again
/// first, then the connection itself.
pub(super) struct Rewind<I> {
    io: I,
    read: Vec<u8>,
    at: usize,
}

impl<I> Rewind<I> {
    pub(super) fn new(io: I, read: Vec<u8>) -> Self {
        Self { io, read, at: 0 }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let rest = &this.read[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(context, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(context, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::{Parsed, could_start, parse};

    #[test]
    fn only_whole_stream_requests_are_taken() {
        let stream = |head: &str| matches!(parse(head.as_bytes()), Parsed::Stream(_));
        let other = |head: &str| matches!(parse(head.as_bytes()), Parsed::Other);
        assert!(stream(
            "GET /api/messages?token=t HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(stream(
            "GET /api/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(matches!(
            parse(b"GET /api/messages HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        assert!(other("GET /api/messages HTTP/1.0\r\n\r\n"));
        assert!(other("HEAD /api/messages HTTP/1.1\r\n\r\n"));
        assert!(other(
            "GET /api/messages HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(other(
            "GET /api/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(other(
            "GET /api/messages HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(other(
            "GET /api/messages HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"
        ));
        // A pipelined second request is hyper's to answer.
        assert!(other(
            "GET /api/messages HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        ));
        let many = "X-A: b\r\n".repeat(super::MAX_HEADERS + 1);
        assert!(other(&format!("GET /api/messages HTTP/1.1\r\n{many}\r\n")));
    }

    #[test]
    fn other_requests_are_told_apart_by_their_first_bytes() {
        let could = |head: &str| {
            super::ROUTES
                .iter()
                .any(|route| could_start(head.as_bytes(), route))
        };
        assert!(could("G"));
        assert!(could("GET /api/mess"));
        assert!(could("GET /api/messages?"));
        assert!(could("GET /api/events "));
        assert!(!could("GET /api/messagesX"));
        assert!(!could("GET /api/conversations"));
        assert!(!could("POST /api/messages"));
        assert!(!could("PRI * HTTP/2.0\r\n"));
    }
}
