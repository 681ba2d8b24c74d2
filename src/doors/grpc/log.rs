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
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, Uri},
    middleware::Next,
    response::Response,
};
use hyper::body::{Frame, SizeHint};
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

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
    response.map(|body| Body::new(Logged { body, line }))
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

/// A call's response body, which holds its [`Line`] until dropped: after
/// its trailers, or when the client went away before them.
struct Logged {
    body: Body,
    line: Line,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(context));
        if let Some(code) = frame
            .as_ref()
            .and_then(|frame| frame.as_ref().ok())
            .and_then(Frame::trailers_ref)
            .and_then(status_code)
        {
            self.line.code = Some(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
