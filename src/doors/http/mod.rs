//! The HTTP door: REST, the SSE stream, health and the chat page, as thin
//! adapters over the same core as gRPC.
//!
//! | file | owns |
//! | --- | --- |
//! | `caller.rs` | the token extractor (header, then `?token=`) |
//! | `api.rs` | REST routes and their JSON bodies |
//! | `admin.rs` | `/api/admin/`: the Admin service, for service keys |
//! | `sse.rs` | `GET /api/messages`, the Server-Sent Events stream |
//! | `page.rs` | the chat page at `/` |
//! | `log.rs` | the request log, which never shows a token |

mod admin;
mod api;
mod caller;
mod log;
mod page;
mod sse;

use crate::{auth::Auth, engine::service::Herald, error::Error};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    set_header::SetResponseHeaderLayer,
};

pub use caller::{Caller, StreamCaller};
pub use sse::STREAM_PATHS;

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub herald: Herald,
    pub auth: Auth,
    /// Origins allowed by `--cors-origin`, which cookie-authenticated
    /// requests that change state must come from (or the page's own).
    pub origins: std::sync::Arc<[String]>,
    /// Open connections on both ports, for `/metrics`.
    pub connections: crate::net::listener::Connections,
    /// How long an idle SSE stream waits before sending a comment.
    pub heartbeat: std::time::Duration,
}

/// Settings of the HTTP door that the core does not know.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Origins allowed by CORS; `*` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long an idle SSE stream waits before sending a comment.
    pub heartbeat: std::time::Duration,
    /// Served over TLS: tell browsers to use HTTPS only (HSTS).
    pub hsts: bool,
    /// `/metrics` has a listener of its own (`--metrics-addr`): the HTTP
    /// port does not serve it.
    pub metrics_apart: bool,
}

/// The HSTS policy under TLS: a year.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// The whole HTTP application; `grpc_web` holds the gRPC-Web routes, which
/// share the port, CORS and the request log.
pub fn router(state: AppState, options: &HttpOptions, grpc_web: Router) -> Router {
    let app = Router::new()
        .merge(api::router())
        .merge(admin::router())
        .merge(sse::router())
        .merge(page::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi));
    let app = match options.metrics_apart {
        true => app,
        false => app.route("/metrics", get(metrics)),
    };
    let app = app
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(state)
        .merge(grpc_web)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let app = match cors(&options.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    let app = match options.hsts {
        true => app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HSTS,
        )),
        false => app,
    };
    log::layer(app)
}

/// `/metrics` alone, for its own listener (`--metrics-addr`): an internal
/// address that the open internet does not reach.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
        .fallback(not_found)
}

/// The REST and SSE doors described in OpenAPI 3.1, written by hand next
/// to the handlers; `tests/herald/openapi.rs` checks real answers of every
/// operation against it.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
}

/// Every path herald does not serve.
pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such path")
}

/// A path herald serves, with a method it does not take.
async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the server is not draining and the database answers.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.herald.ready(READY_TIMEOUT).await {
        Ok(()) => "ready".into_response(),
        Err(error) => error.into_response(),
    }
}

/// Prometheus metrics, written by prometheus-client in the OpenMetrics
/// text format: each part registers what it counts, read at this scrape.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut registry = Registry::with_prefix("herald");
    state.herald.register_metrics(&mut registry);
    state.auth.register_metrics(&mut registry);
    state.connections.register_metrics(&mut registry);
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "metrics did not encode");
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// CORS for pages on other origins that call the API or open EventSource.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = match origins.iter().any(|origin| origin == "*") {
        true => AllowOrigin::any(),
        false => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-grpc-web"),
                HeaderName::from_static("x-user-agent"),
                HeaderName::from_static("grpc-timeout"),
            ])
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// The one shape of every HTTP error: `{"error": "..."}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log_cause();
        let status = match &self {
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied | Error::Forbidden(_) | Error::Banned(_) | Error::Denied(_) => {
                StatusCode::FORBIDDEN
            }
            Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidArgument(_) | Error::ResumeImpossible(_) => StatusCode::BAD_REQUEST,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::ShuttingDown | Error::Database(_) | Error::HookFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = error_response(status, &self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
