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
//! - the node holds at most `max_connections`, kept below the open-file
//!   limit. At the cap, a new connection takes the place of the connection
//!   that has been idle longest (no request in flight: a slow or silent
//!   client, or a keep-alive connection), so a flood of idle connections
//!   cannot lock out health checks or real users. Only when every
//!   connection is busy is a new one closed at once.
//!
//! Accept errors (EMFILE, ENFILE, ...) back off instead of spinning.
//!
//! On the HTTP port, a connection whose first request is an event stream
//! over HTTP/1.1 is served by [`h1_stream`] instead of hyper, under the
//! same limits, so a parked stream keeps no HTTP buffers.

mod h1_stream;

use axum::{Router, body::Body, extract::Request, response::Response};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// What one connection may take, and how many the node holds.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections across both ports.
    pub max_connections: usize,
    /// How long a TLS handshake, an HTTP/1.1 request head, or an HTTP/2
    /// connection's first stream may take to arrive.
    pub header_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams: u32,
}

/// Which protocols a port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (by ALPN under TLS, by preface without).
    Http,
    /// HTTP/2 only: gRPC.
    Grpc,
}

/// The longest pause after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Every open connection of the node, on both ports: what the cap counts
/// and whom it evicts. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Shared>,
}

struct Shared {
    limits: ConnectionLimits,
    started: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
}

/// One connection as the registry sees it.
struct Conn {
    /// Requests whose response has not finished.
    in_flight: AtomicUsize,
    /// Whether any request came at all.
    served: std::sync::atomic::AtomicBool,
    /// Milliseconds since `Shared::started` when it last became idle.
    idle_since: AtomicU64,
    /// Cancelled to close the connection at once.
    evict: CancellationToken,
}

/// A connection's place in the registry; leaving it frees the place.
struct Admitted {
    id: u64,
    conn: Arc<Conn>,
    connections: Connections,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(Shared {
                limits,
                started: Instant::now(),
                open: Mutex::default(),
                next_id: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Connections closed on arrival because every place was busy.
    pub fn refused_total(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Idle connections closed to make room for new ones.
    pub fn evicted_total(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// A place for a new connection: a free one, or the place of the
    /// connection idle longest; `None` when every connection is busy.
    fn admit(&self) -> Option<Admitted> {
        let now = self.millis();
        let mut open = self.lock();
        if open.len() >= self.inner.limits.max_connections.max(1) {
            let idlest = open
                .iter()
                .filter(|(_, conn)| conn.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, conn)| conn.idle_since.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(idlest) = idlest else {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            if let Some(conn) = open.remove(&idlest) {
                conn.evict.cancel();
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            served: false.into(),
            idle_since: AtomicU64::new(now),
            evict: CancellationToken::new(),
        });
        open.insert(id, conn.clone());
        Some(Admitted {
            id,
            conn,
            connections: self.clone(),
        })
    }

    fn millis(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // A plain map: a panicking holder cannot leave it half-updated.
        self.inner
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

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
    let limits = connections.inner.limits;
    let port = Arc::new(Port {
        app,
        tls,
        protocol,
        builder: builder(protocol, limits),
        limits,
        stop: stop.clone(),
    });
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            while tasks.try_join_next().is_some() {}
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of files, or the peer gave up: wait, then go on.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(%error, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::ZERO;
            let Some(admitted) = connections.admit() else {
                tracing::debug!("connection refused: every connection is busy");
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

fn builder(protocol: Protocol, limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
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
                let _busy = Busy::new(&admitted);
                h1_stream::serve(io, request, self.app.clone(), &evict).await;
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
/// its response body ends (a stream counts as long as it is open).
#[derive(Clone)]
struct Tracked {
    app: Router,
    conn: Arc<Conn>,
    connections: Connections,
}

/// A request in flight on a connection.
struct Busy {
    conn: Arc<Conn>,
    connections: Connections,
}

impl Busy {
    /// Counts a request on `admitted`'s connection until dropped.
    fn new(admitted: &Admitted) -> Self {
        Self::on(&admitted.conn, &admitted.connections)
    }

    fn on(conn: &Arc<Conn>, connections: &Connections) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.served.store(true, Ordering::Release);
        Self {
            conn: conn.clone(),
            connections: connections.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.connections.millis();
            self.conn.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = Busy::on(&self.conn, &self.connections);
        let mut app = self.app.clone();
        Box::pin(async move {
            let response = app.call(request.map(Body::new)).await?;
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &busy;
                    frame
                }))
            }))
        })
    }
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
