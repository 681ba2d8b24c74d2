//! Accepting and serving connections, the same way on both ports: the HTTP
//! port (HTTP/1.1 and HTTP/2) and the gRPC port (HTTP/2 only), with or
//! without TLS. Each port is an axum `Router` served by hyper.
//!
//! **What a connection may cost.** Whatever a client does, a connection
//! holds one file and one task, and no more than [`ConnectionLimits`]
//! allow:
//!
//! - a TLS handshake must finish within the header timeout;
//! - HTTP/1.1 request heads must arrive within the header timeout (hyper's
//!   timer, which also bounds the idle time between requests);
//! - an HTTP/2 connection (either port) must open its first stream within
//!   the header timeout, and may open at most `max_streams` at once (its
//!   SETTINGS_MAX_CONCURRENT_STREAMS);
//! - a request body must arrive within the body timeout, and a request
//!   message is bounded per call (HTTP/2 windows of 64 and 256 KiB, an
//!   HTTP/1.1 buffer of 32 KiB: an anonymous connection costs kilobytes);
//! - a stream whose client stops reading is closed after the write timeout;
//! - the node holds at most `max_connections`, kept below the open-file
//!   limit, and one address at most `max_per_ip` of them. At the cap, a new
//!   connection takes the place of an idle or stalled one (see
//!   [`registry`]), so a flood of idle connections, anonymous health
//!   streams or half-sent bodies cannot lock out health checks or real
//!   users. Only when every connection is busy is a new one closed at once.
//!
//! Accept errors (EMFILE, ENFILE, ...) back off instead of spinning.
//!
//! On the HTTP port, a connection whose first request is an event stream
//! over HTTP/1.1 is served by [`h1_stream`] instead of hyper, under the
//! same limits, so a parked stream keeps no HTTP buffers.

mod body;
mod h1_stream;
mod registry;

use axum::{Router, body::Body, extract::Request, response::Response};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use registry::{Admitted, Busy, Conn};
use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

pub use registry::Connections;

/// What one connection may take, and how many the node holds.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections across both ports.
    pub max_connections: usize,
    /// Connections one address may hold (0: no limit).
    pub max_per_ip: usize,
    /// Addresses exempt from `max_per_ip`: proxies in front of herald.
    pub trusted_proxies: Arc<[IpAddr]>,
    /// How long a TLS handshake, an HTTP/1.1 request head, or an HTTP/2
    /// connection's first stream may take to arrive.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive, once its head has.
    pub body_timeout: Duration,
    /// How long a stream's client may leave a write unread before the
    /// connection is closed.
    pub write_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_per_ip: 0,
            trusted_proxies: Arc::from([]),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_streams: 256,
        }
    }
}

/// Which protocols a port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (by ALPN under TLS, by preface without).
    Http,
    /// HTTP/2 only: gRPC.
    Grpc,
}

/// hyper's HTTP/1.1 read buffer at most: a head over this is refused (431
/// or 414), and a half-sent head costs no more.
const HTTP1_BUFFER: usize = 32 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the server
/// has read it, per stream and per connection. A request message is read
/// as it arrives (and bounded per call), so a client that sends and never
/// finishes holds at most this much in the connection.
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// What hyper buffers of a response stream for a client not reading it.
const HTTP2_SEND_BUFFER: usize = 64 * 1024;
/// The gRPC health check: anonymous and unary.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// Request paths that need no token (gRPC health and reflection): their
/// streams never make a connection busy and are bounded in number.
const ANONYMOUS_PATHS: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The longest pause after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop`, then lets open connections
/// finish (HTTP/2 gets GOAWAY) and returns once they have. Aborting the
/// returned task closes every connection it serves.
pub fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    protocol: Protocol,
    connections: Connections,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let limits = connections.inner.limits.clone();
    let port = Arc::new(Port {
        app,
        tls,
        protocol,
        builder: builder(protocol, &limits),
        limits,
        stop: stop.clone(),
    });
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                // A finished connection's task is freed as it ends, not at
                // the next accept: after a burst (an attack's hundreds of
                // connections) its memory would wait for the next client.
                Some(_) = tasks.join_next() => continue,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of files, or the peer gave up: wait, then go on.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(%error, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::ZERO;
            let Some(admitted) = connections.admit(peer.ip()) else {
                tracing::debug!(
                    "connection refused: its address holds its share, or every connection is busy"
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tasks.spawn(port.clone().connection(tcp, admitted));
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
    })
}

/// What every connection of one port shares.
struct Port {
    app: Router,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
    builder: auto::Builder<TokioExecutor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
}

fn builder(protocol: Protocol, limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(HTTP1_BUFFER)
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_send_buf_size(HTTP2_SEND_BUFFER)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    match protocol {
        Protocol::Http => builder,
        Protocol::Grpc => builder.http2_only(),
    }
}

impl Port {
    /// One connection, until it closes.
    async fn connection(self: Arc<Self>, tcp: TcpStream, admitted: Admitted) {
        let Some(acceptor) = &self.tls else {
            return self.http(tcp, admitted).await;
        };
        // Boxed: a TLS connection's state is large, and a plain
        // connection's task should not carry room for it.
        Box::pin(self.tls(acceptor, tcp, admitted)).await
    }

    /// A TLS handshake within the header timeout, then HTTP.
    async fn tls(&self, acceptor: &TlsAcceptor, tcp: TcpStream, admitted: Admitted) {
        let evict = admitted.conn.evict.clone();
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(tcp));
        let tls = tokio::select! {
            _ = evict.cancelled() => return,
            _ = self.stop.cancelled() => return,
            tls = handshake => tls,
        };
        match tls {
            Ok(Ok(tls)) => self.http(tls, admitted).await,
            Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    /// HTTP on an established connection: an HTTP/1.1 event stream by
    /// [`h1_stream`], anything else by hyper.
    async fn http<I>(&self, io: I, admitted: Admitted)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        if self.protocol == Protocol::Grpc {
            return Box::pin(self.hyper(io, admitted, deadline)).await;
        }
        let evict = admitted.conn.evict.clone();
        // Boxed, as is everything but the stream itself: a parked stream's
        // task keeps room only for what it still needs.
        let first = Box::pin(async {
            tokio::select! {
                _ = evict.cancelled() => None,
                _ = self.stop.cancelled() => None,
                first = h1_stream::read_first(io, deadline) => Some(first),
            }
        });
        let Some(first) = first.await else { return };
        match first {
            h1_stream::First::Stream(io, request) => {
                let _busy = Busy::on(&admitted.conn, &admitted.connections);
                let watch = h1_stream::Watch {
                    evict: &evict,
                    stop: &self.stop,
                    connections: &admitted.connections,
                    conn: &admitted.conn,
                };
                h1_stream::serve(io, request, self.app.clone(), watch).await;
            }
            // Boxed: hyper's connection state is large, and a stream
            // served above should not carry room for it.
            h1_stream::First::Other(io) => Box::pin(self.hyper(io, admitted, deadline)).await,
            h1_stream::First::Closed => {}
        }
    }

    /// hyper on an established connection, until it closes, is evicted,
    /// sends no request by `deadline`, or the server stops.
    async fn hyper<I>(&self, io: I, admitted: Admitted, deadline: tokio::time::Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = admitted.conn.clone();
        let service = Tracked {
            app: self.app.clone(),
            conn: conn.clone(),
            connections: admitted.connections.clone(),
            body_timeout: self.limits.body_timeout,
        };
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let first_request = tokio::time::sleep_until(deadline);
        tokio::pin!(first_request);
        let mut awaiting_first = true;
        let mut closing = false;
        loop {
            // Guards are read when `select!` starts, not when a branch
            // fires: a request that arrived meanwhile is checked for below.
            tokio::select! {
                _ = connection.as_mut() => break,
                _ = conn.evict.cancelled() => break,
                _ = &mut first_request, if awaiting_first => {
                    awaiting_first = false;
                    if !conn.served.load(Ordering::Acquire) {
                        tracing::debug!("connection closed: no request within the header timeout");
                        break;
                    }
                }
                // Finish in-flight requests (HTTP/2 gets GOAWAY); a client
                // that holds on past the drain time is cut when the server
                // aborts this port's task.
                _ = self.stop.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
        drop(admitted);
    }
}

/// The port's router, with each request counted on its connection until
/// its response body ends (a stream counts as long as it is open), its
/// body bounded in time, and a streaming response watched for a client
/// that stopped reading.
#[derive(Clone)]
struct Tracked {
    app: Router,
    conn: Arc<Conn>,
    connections: Connections,
    body_timeout: Duration,
}

/// When a streaming response must end whatever (its token's expiry), for
/// the watch: a door puts it in the response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct StreamEnds(pub tokio::time::Instant);

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let path = request.uri().path();
        if ANONYMOUS_PATHS
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            // A health check answers at once: it needs no place of the
            // node's, so an orchestrator's probe is never refused.
            let check = path == HEALTH_CHECK;
            return self.anonymous(request, check);
        }
        let busy = Busy::on(&self.conn, &self.connections);
        let request = match hyper::body::Body::is_end_stream(request.body()) {
            true => request.map(Body::new),
            false => {
                let receiving = busy.receiving();
                request.map(|body| {
                    Body::new(body::Arriving::new(
                        body,
                        self.body_timeout,
                        Some(receiving),
                    ))
                })
            }
        };
        let mut app = self.app.clone();
        let connections = self.connections.clone();
        let conn = self.conn.clone();
        Box::pin(async move {
            // Never closed: the turn always comes.
            let turn = conn.calls.acquire().await;
            let response = app.call(request).await?;
            drop(turn);
            Ok(watch(response, &connections, &conn, busy))
        })
    }
}

impl Tracked {
    /// A request that needs no token: served without making the connection
    /// busy, unless the connection or the node holds its share of them.
    fn anonymous(
        &self,
        request: Request<Incoming>,
        check: bool,
    ) -> BoxFuture<'static, Result<Response, Infallible>> {
        let Some(place) = self.connections.anonymous(&self.conn, !check) else {
            return Box::pin(async { Ok(too_many_anonymous()) });
        };
        let timeout = self.body_timeout;
        let mut app = self.app.clone();
        Box::pin(async move {
            // Its body is bounded in time too, but holds no place.
            let request = request.map(|body| Body::new(body::Arriving::new(body, timeout, None)));
            let response = app.call(request).await?;
            Ok(response.map(|body| {
                Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                    let _place = &place;
                    frame
                }))
            }))
        })
    }
}

/// `response`, counted on its connection until its body ends, and watched
/// for a client that stops reading it: a stream, and a fixed-length answer
/// too (a client that grants no window for it would otherwise hold its
/// connection's place for ever).
fn watch(response: Response, connections: &Connections, conn: &Conn, busy: Busy) -> Response {
    let ends = response.extensions().get::<StreamEnds>().map(|ends| ends.0);
    let progress = connections.progress(conn, ends);
    response.map(|body| Body::new(body::Watched::new(body, progress, busy)))
}

/// The gRPC answer to an anonymous stream over the bounds: trailers only,
/// RESOURCE_EXHAUSTED.
fn too_many_anonymous() -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    headers.insert(
        "grpc-message",
        axum::http::HeaderValue::from_static("too many health or reflection streams"),
    );
    response
}

/// A connection's first bytes as the HTTP port reads them, for the fuzzer.
pub(crate) fn fuzz_first_bytes(data: &[u8]) {
    h1_stream::fuzz(data);
}

/// The default connection cap: the open-file limit less room for the
/// database pool, the broker, log and key files (a tenth, at least 128).
pub fn default_max_connections() -> usize {
    let files = open_file_limit().unwrap_or(1024);
    files.saturating_sub((files / 10).max(128)).max(16)
}

/// The soft open-file limit of this process (Linux), from /proc.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
