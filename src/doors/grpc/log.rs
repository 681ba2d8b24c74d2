//! The gRPC request log: one line per call, when its response ends or its
//! client goes away, with the method, the duration and the status; never
//! metadata (tokens).
//!
//! No span is opened for a call: the line carries its own fields. tracing's
//! registry keeps every span slot it ever allocated, with its fields, so a
//! span per call left a burst's peak of calls in flight in the heap for
//! good, scattered over pages a burst's other memory had given back
//! (BENCHMARKS, round three, tenth pass).

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, Uri},
    middleware::Next,
    response::Response,
};
use std::time::{Duration, Instant};

/// The calls whose stream a subscriber holds open for hours: their line
/// is their [`StreamLog`]'s, written when the stream ends; here only a
/// refusal (a response of headers alone) is logged.
const SUBSCRIPTIONS: [&str; 2] = [SUBSCRIBE_MESSAGES, SUBSCRIBE_EVENTS];
pub const SUBSCRIBE_MESSAGES: &str = "/herald.v1.Messenger/SubscribeMessages";
pub const SUBSCRIBE_EVENTS: &str = "/herald.v1.Messenger/SubscribeEvents";

/// The request log, as middleware over every gRPC route.
pub async fn call(request: Request, next: Next) -> Response {
    // Made before the handler runs: a call whose client goes away while it
    // waits (hyper drops the handler) still has its line.
    let mut line = Line {
        // A clone of the URI shares the request's bytes: nothing is
        // formatted unless the line is written.
        uri: request.uri().clone(),
        started: Instant::now(),
        code: None,
        kind: Kind::Call,
    };
    let response = next.run(request).await;
    line.code = status_code(response.headers());
    if SUBSCRIPTIONS.contains(&line.uri.path()) {
        line.kind = match line.code {
            Some(code) => Kind::Refused(code),
            None => Kind::Opened,
        };
        return response;
    }
    tracing::debug!(method = %line.method(), latency = ?line.started.elapsed(), "response headers sent");
    // The body holds the line until it is dropped: after its trailers, or
    // when the client went away before them.
    response.map(|body| {
        Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            if let Some(code) = frame.trailers_ref().and_then(status_code) {
                line.ended(code);
            }
            frame
        }))
    })
}

/// One call's line, written when dropped.
struct Line {
    uri: Uri,
    started: Instant,
    /// The status, from the response's headers (a refusal) or trailers;
    /// none when the client went away before either.
    code: Option<tonic::Code>,
    kind: Kind,
}

enum Kind {
    /// A call, or a subscription that never got to answer.
    Call,
    /// A subscription refused in its response's headers, with this code.
    Refused(tonic::Code),
    /// A subscription that opened: its [`StreamLog`] writes its line.
    Opened,
}

impl Line {
    /// The status the call ended with, from its trailers.
    fn ended(&mut self, code: tonic::Code) {
        self.code = Some(code);
    }

    /// The method, with anything outside printable ASCII escaped.
    fn method(&self) -> std::str::EscapeDefault<'_> {
        self.uri.path().escape_default()
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let (method, duration, code) = (self.method(), self.started.elapsed(), self.code);
        match self.kind {
            Kind::Call => tracing::info!(%method, ?duration, ?code, "end of stream"),
            Kind::Refused(code) => {
                tracing::info!(?code, %method, latency = ?duration, "grpc subscription refused")
            }
            Kind::Opened => {}
        }
    }
}

/// The gRPC status code `headers` (or trailers) carry, if any.
fn status_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let code = headers.get("grpc-status")?;
    Some(tonic::Code::from_bytes(code.as_bytes()))
}

/// An open subscription's line in the request log, written when it is
/// dropped, however it ended: the method, how long it was open, and its
/// status (`Cancelled` when the subscriber went away).
pub struct StreamLog {
    pub method: &'static str,
    pub opened: Instant,
    pub code: tonic::Code,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        let duration: Duration = self.opened.elapsed();
        tracing::info!(method = %self.method, ?duration, code = ?self.code, "end of stream");
    }
}
