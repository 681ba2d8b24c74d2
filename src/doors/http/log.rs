//! The HTTP request log: method, path, query, status and duration, at
//! info, one line when the response starts (or, without a status, when the
//! client went away before it).
//!
//! Query values are shown only for parameters known to be harmless; every
//! other value (`token` above all) is replaced, so a token given in a URL
//! never reaches the log. Headers are not logged at all. No span is opened
//! for a request, for the reason `grpc::log` gives.

use axum::{Router, extract::Request, middleware::Next, response::Response};
use std::time::Instant;

/// Query parameters whose values may be logged, when they are numbers
/// (sizes and the ids herald issues): any other value could be a secret
/// pasted in the wrong place, or text made to mislead the log's reader.
const SHOWN: &[&str] = &["pageSize", "beforeId", "afterId", "lastEventId"];

/// Wraps `app` in the request log.
pub fn layer(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(log))
}

async fn log(request: Request, next: Next) -> Response {
    // Made before the handler runs: a request whose client goes away while
    // it waits (hyper drops the handler) still has its line.
    let mut line = Line {
        // Clones share the request's bytes: nothing is formatted unless the
        // line is written.
        method: request.method().clone(),
        uri: request.uri().clone(),
        started: Instant::now(),
        status: None,
    };
    let response = next.run(request).await;
    line.status = Some(response.status().as_u16());
    response
}

/// One request's line, written when dropped: when its response starts,
/// or when the client went away before it (no status).
struct Line {
    method: axum::http::Method,
    uri: axum::http::Uri,
    started: Instant,
    status: Option<u16>,
}

impl Drop for Line {
    fn drop(&mut self) {
        tracing::info!(
            method = %self.method,
            // Anything outside printable ASCII escaped: no line breaks or
            // direction overrides from a client's path.
            path = %self.uri.path().escape_default(),
            query = %self.uri.query().map(redact).unwrap_or_default(),
            status = self.status,
            latency = ?self.started.elapsed(),
            "finished processing request"
        );
    }
}

/// `query` with every parameter not in [`SHOWN`] replaced.
fn redact(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if SHOWN.contains(&key) && is_number(value) => {
                format!("{key}={value}")
            }
            Some(("token", _)) => "token=[redacted]".to_owned(),
            // Even an unknown key could be a token pasted in the wrong place.
            _ => "[redacted]".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// At most 20 ASCII digits: an `i64`'s length.
fn is_number(value: &str) -> bool {
    (1..=20).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
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
        // Shown keys show numbers only: not a token put in their place.
        assert_eq!(
            redact("pageSize=eyJ0eXAi.eyJzdWIi.c2ln&beforeId=12"),
            "[redacted]&beforeId=12"
        );
        assert_eq!(redact("lastEventId=7%26token%3Dabc"), "[redacted]");
    }
}
