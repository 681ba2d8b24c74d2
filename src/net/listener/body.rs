//! The bodies hyper sees, wrapped so that a request finishes in bounded
//! time and a response's client is known to be reading:
//!
//! - [`Arriving`]: a request body that must arrive whole within the body
//!   timeout, or fails (REST answers 400, gRPC fails the call, and the
//!   connection's place is no longer held by it);
//! - [`Watched`]: a response body (a stream's, or a fixed-length one) that
//!   tells the registry when the transport takes its frames (see
//!   `registry`'s stuck readers).

use super::registry::{Progress, Receiving};
use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a request body that did not arrive in time.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {:?}", self.0)
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that must arrive whole by a deadline.
pub struct Arriving<B> {
    inner: B,
    timeout: Duration,
    started: Instant,
    /// Made only if the body is not all there at once: most are.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Held until the body has arrived (or is dropped).
    receiving: Option<Receiving>,
}

impl<B> Arriving<B> {
    pub fn new(inner: B, timeout: Duration, receiving: Option<Receiving>) -> Self {
        Self {
            inner,
            timeout,
            started: Instant::now(),
            sleep: None,
            receiving,
        }
    }
}

impl<B> hyper::body::Body for Arriving<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(None) => {
                this.receiving = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if this.inner.is_end_stream() {
                    this.receiving = None;
                }
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.started + this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(context));
                this.receiving = None;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose transport's progress is watched.
pub struct Watched<G> {
    inner: Body,
    progress: Arc<Progress>,
    /// Whatever must live as long as the response (its `Busy`).
    _guard: G,
}

impl<G> Watched<G> {
    pub fn new(inner: Body, progress: Arc<Progress>, guard: G) -> Self {
        Self {
            inner,
            progress,
            _guard: guard,
        }
    }
}

impl<G: Unpin + Send + 'static> hyper::body::Body for Watched<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.progress.taken();
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(context));
        if frame.is_some() {
            self.progress.handed();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
