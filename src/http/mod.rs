//! The HTTP door: REST, the SSE stream, health and the chat page, over the
//! same core as gRPC.

use crate::{auth::Auth, error::Error, service::Herald};
use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub herald: Herald,
    pub auth: Auth,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log_cause();
        let status = match &self {
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidArgument(_) | Error::ResumeImpossible(_) => StatusCode::BAD_REQUEST,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::ShuttingDown | Error::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        (status, body).into_response()
    }
}
