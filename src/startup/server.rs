//! Start-up and shut-down: the one seam `main` and every test use.
//!
//! [`Server::bind`] connects the database, starts the core, binds the
//! listeners (port 0 allowed) so the caller can read the real addresses,
//! and builds what each serves; [`Server::run`] only serves until a
//! shutdown future fires, then drains.
//!
//! **Shutdown order.** Mark gRPC health NOT_SERVING; cancel the token every
//! open stream watches, so SSE and gRPC streams end with their final status
//! (a graceful shutdown would otherwise wait on them forever); a moment
//! later stop both listeners (HTTP/2 connections get GOAWAY), so they stop
//! accepting once clients have read those statuses; give in-flight requests
//! the drain time, then cut what is left; stop the feed; close the database.

use crate::{
    auth::Auth,
    doors::grpc,
    doors::http::{self, AppState, HttpOptions},
    engine::service::Herald,
    net::listener::{self, Connections, Protocol},
    net::tls::{self, Acceptors},
    pb,
    startup::config::ServeConfig,
    startup::start::StartError,
};
use axum::Router;
use std::{future::Future, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

/// Pending connections the kernel queues per listener: a thousand clients
/// connecting at once must not be dropped.
const BACKLOG: u32 = 4096;

/// How long ended streams get to deliver their final status before the
/// servers stop and close connections.
const STREAM_GRACE: Duration = Duration::from_millis(200);

/// A bound, ready-to-run herald.
pub struct Server {
    http: TcpListener,
    grpc: TcpListener,
    /// `/metrics` alone, when `--metrics-addr` gives it a listener.
    metrics: Option<TcpListener>,
    /// What each listener serves.
    apps: Apps,
    herald: Herald,
    shutdown: CancellationToken,
    drain: Duration,
    tls: Option<Acceptors>,
    connections: Connections,
}

/// The applications the listeners serve, built at bind.
struct Apps {
    grpc: Router,
    http: Router,
    metrics: Option<Router>,
    /// gRPC health, told NOT_SERVING when shutdown begins.
    health: HealthReporter,
}

impl Server {
    /// Connects and migrates the database, starts the core and binds both
    /// listeners.
    pub async fn bind(config: &ServeConfig, auth: Auth) -> Result<Self, StartError> {
        config.validate()?;
        // TLS files first: a bad certificate fails the start, not the
        // first handshake.
        let tls = match config.tls()? {
            Some(files) => Some(tls::acceptors(&files)?),
            None => None,
        };
        let http = listen("--http", &config.http).await?;
        let grpc = listen("--grpc", &config.grpc).await?;
        let metrics = match &config.metrics_addr {
            Some(addr) => Some(listen("--metrics-addr", addr).await?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let herald = Herald::start(config, auth.guard(), shutdown.clone()).await?;
        let connections = Connections::new(config.connection_limits());
        let state = AppState {
            herald: herald.clone(),
            auth: auth.clone(),
            connections: connections.clone(),
            origins: config.cors_origin.clone().into(),
            heartbeat: config.sse_heartbeat,
        };
        let apps = Apps::build(state, &config.http_options(), metrics.is_some()).await?;
        Ok(Self {
            http,
            grpc,
            metrics,
            apps,
            herald,
            shutdown,
            drain: config.drain_timeout,
            tls,
            connections,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address of the `/metrics` listener, if it has one of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| {
            metrics
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// The core, for callers that embed herald.
    pub fn herald(&self) -> &Herald {
        &self.herald
    }

    /// Open connections on both ports, as the connection cap counts them.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Serves until `signal` completes, then shuts down in order (see the
    /// module comment).
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        // Servers stop accepting on `stop`, a moment after open streams have
        // ended on `self.shutdown`, so clients read each stream's final
        // status before the connection closes.
        let stop = CancellationToken::new();
        let serve = |listener, tls, app, protocol| {
            let connections = self.connections.clone();
            listener::serve(listener, tls, app, protocol, connections, stop.clone())
        };
        let Apps {
            grpc,
            http,
            metrics,
            health,
        } = self.apps;
        let tls = self.tls.as_ref();
        let mut grpc_server = serve(
            self.grpc,
            tls.map(|tls| tls.grpc.clone()),
            grpc,
            Protocol::Grpc,
        );
        let mut http_server = serve(
            self.http,
            tls.map(|tls| tls.http.clone()),
            http,
            Protocol::Http,
        );
        // Plain HTTP, no TLS: an internal address (see --metrics-addr).
        let metrics_server = self
            .metrics
            .zip(metrics)
            .map(|(listener, app)| serve(listener, None, app, Protocol::Http));
        let watch = self.connections.watch(stop.clone());

        tokio::select! {
            _ = signal => tracing::info!("shutting down"),
            result = &mut grpc_server => tracing::error!(?result, "gRPC listener stopped on its own"),
            result = &mut http_server => tracing::error!(?result, "HTTP listener stopped on its own"),
        }
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<pb::messenger_server::MessengerServer<grpc::Messenger>>()
            .await;
        self.shutdown.cancel();
        tokio::time::sleep(STREAM_GRACE.min(self.drain)).await;
        stop.cancel();
        let drained = tokio::time::timeout(self.drain, async {
            let _ = (&mut grpc_server).await;
            let _ = (&mut http_server).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(drain = ?self.drain, "drain time over; closing what is left");
            grpc_server.abort();
            http_server.abort();
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        let _ = watch.await;
        self.herald.close().await;
        Ok(())
    }
}

impl Apps {
    /// Every door over the core in `state`: gRPC (Messenger, health,
    /// both reflection versions, the request log), HTTP (REST, SSE, the
    /// page, gRPC-Web) and, when it has a listener of its own, `/metrics`.
    async fn build(
        state: AppState,
        options: &HttpOptions,
        metrics_apart: bool,
    ) -> Result<Self, StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::messenger_server::MessengerServer<grpc::Messenger>>()
            .await;
        // Both reflection versions, so every grpcurl can `list` and `describe`;
        // health's descriptors too, or grpcurl would not list it.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Anonymous: their requests are names, never more than a few KiB.
        let anonymous = crate::engine::limits::ANONYMOUS_REQUEST;
        let health_service = health_service.max_decoding_message_size(anonymous);
        let reflection_v1 = reflection()
            .build_v1()?
            .max_decoding_message_size(anonymous);
        let reflection_v1alpha = reflection()
            .build_v1alpha()?
            .max_decoding_message_size(anonymous);
        let (herald, auth) = (state.herald.clone(), state.auth.clone());
        let grpc = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(grpc::service(herald.clone(), auth.clone()))
            .add_service(grpc::admin::service(herald.clone(), auth.clone()))
            .into_axum_router()
            // The request log: one line per call (`grpc::log`).
            .layer(axum::middleware::from_fn(grpc::log::call));
        let metrics = metrics_apart.then(|| http::metrics_router(state.clone()));
        let grpc_web = grpc::web_routes(herald, auth);
        let http = http::router(state, options, grpc_web);
        Ok(Self {
            grpc,
            http,
            metrics,
            health,
        })
    }
}

/// Binds `addr` with a large backlog; `flag` names it in errors.
async fn listen(flag: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| StartError::Address {
            flag,
            addr: addr.to_owned(),
        })?;
    let bind = || {
        let socket = match resolved {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(resolved)?;
        socket.listen(BACKLOG)
    };
    bind().map_err(|source| StartError::Listen {
        flag,
        addr: resolved,
        source,
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while
/// the server is still starting (after it says it serves) then shuts it
/// down in order instead of killing it with its streams open.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                },
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
