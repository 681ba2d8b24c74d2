//! The HTTP request log: method, path, query, status and duration, at
//! info, one line when the response starts.
//!
//! Query values are shown only for parameters known to be harmless; every
//! other value (`token` above all) is replaced, so a token given in a URL
//! never reaches the log. Headers are not logged at all. No span is opened
//! for a request, for the reason `grpc::log` gives.

use axum::{Router, extract::Request, middleware::Next, response::Response};
use std::time::Instant;

/// Query parameters whose values may be logged.
const SHOWN: &[&str] = &["pageSize", "beforeId", "afterId", "lastEventId"];

/// Wraps `app` in the request log.
pub fn layer(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(log))
}

async fn log(request: Request, next: Next) -> Response {
    // Clones share the request's bytes: nothing is formatted unless the
    // line is written.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path = %uri.path(),
        query = %uri.query().map(redact).unwrap_or_default(),
        status = response.status().as_u16(),
        latency = ?started.elapsed(),
        "finished processing request"
    );
    response
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
