//! The gRPC request log: one line per call, when its response ends, with
//! the method, the duration and the status; never metadata (tokens).
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
    // A clone of the URI shares the request's bytes: nothing is formatted
    // unless the line is written.
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let method = uri.path();
    let in_headers = status_code(response.headers());
    if SUBSCRIPTIONS.contains(&method) {
        if let Some(code) = in_headers {
            tracing::info!(?code, %method, latency = ?started.elapsed(), "grpc subscription refused");
        }
        return response;
    }
    tracing::debug!(%method, latency = ?started.elapsed(), "response headers sent");
    response.map(|body| {
        Body::new(Logged {
            body,
            uri,
            started,
            code: in_headers,
        })
    })
}

/// A call's response body, which writes the call's line when dropped:
/// after its trailers, or when the client went away before them.
struct Logged {
    body: Body,
    uri: Uri,
    started: Instant,
    /// The status, from the response's headers (a refusal) or trailers.
    code: Option<tonic::Code>,
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
            self.code = Some(code);
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

impl Drop for Logged {
    fn drop(&mut self) {
        let (method, duration) = (self.uri.path(), self.started.elapsed());
        tracing::info!(%method, ?duration, code = ?self.code, "end of stream");
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
