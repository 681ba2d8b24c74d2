//! The HTTP request log: method, path, query, status and duration, at info.
//!
//! Query values are shown only for parameters known to be harmless; every
//! other value (`token` above all) is replaced, so a token given in a URL
//! never reaches the log. Headers are not logged at all.

use axum::{Router, extract::Request};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// Query parameters whose values may be logged.
const SHOWN: &[&str] = &["pageSize", "beforeId", "afterId", "lastEventId"];

/// Wraps `app` in the request log.
pub fn layer(app: Router) -> Router {
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let query = request.uri().query().map(redact).unwrap_or_default();
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), %query)
            })
            .on_request(())
            .on_response(DefaultOnResponse::new().level(Level::INFO)),
    )
}

/// `query` with every parameter not in [`SHOWN`] replaced.
fn redact(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if SHOWN.contains(&key) => format!("{key}={value}"),
            Some(("token", _)) => "token=[redacted]".to_owned(),
            // Even an unknown key could be a token pasted in the wrong place.
            _ => "[redacted]".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn only_known_harmless_values_are_shown() {
        assert_eq!(
            redact("token=abc&lastEventId=7"),
            "token=[redacted]&lastEventId=7"
        );
        assert_eq!(redact("tok%65n=abc"), "[redacted]");
        assert_eq!(redact("abc"), "[redacted]");
    }
}
