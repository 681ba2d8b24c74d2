//! The chat page at `/`: static HTML, CSS and JS compiled into the binary,
//! no build step. It uses only the public API: REST with a bearer token and
//! EventSource on `/api/events` (messages, read receipts, membership).

use super::AppState;
use axum::{Router, http::header, response::IntoResponse, routing::get};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
}

async fn index() -> impl IntoResponse {
    page("text/html; charset=utf-8", include_str!("page/index.html"))
}

async fn script() -> impl IntoResponse {
    page(
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    page("text/css; charset=utf-8", include_str!("page/style.css"))
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
