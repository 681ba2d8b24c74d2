//! One subscriber's message stream: what a resume replays, then live
//! messages from the hub, with no gap and no duplicate (see
//! `Herald::subscribe`), ending when the subscriber lags, its token expires
//! or the server shuts down.

use crate::{
    domain::{Message, Position, now_micros},
    hub::{Closed, Delivery, Subscription},
    metrics::{Metrics, OpenStream, Transport},
};
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// Why a message stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The subscriber fell behind and was dropped; it should resume.
    Lagged,
    /// The token the stream was opened with expired.
    TokenExpired,
    /// The server is shutting down; reconnect elsewhere.
    ShuttingDown,
}

/// One subscriber's messages: the replay, then live, in stream order.
pub struct MessageStream {
    replay: std::vec::IntoIter<Message>,
    replayed_up_to: Position,
    reset: Option<String>,
    live: Subscription,
    /// Fires when the token expires; one timer for the stream's whole life,
    /// not one per message.
    expiry: Pin<Box<Sleep>>,
    shutdown: CancellationToken,
    metrics: Metrics,
    open: Option<OpenStream>,
}

impl MessageStream {
    /// A stream of `live` only, until `deadline` or `shutdown`.
    pub(crate) fn new(
        live: Subscription,
        deadline: Instant,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        Self {
            replay: Vec::new().into_iter(),
            replayed_up_to: Position(0),
            reset: None,
            live,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
            shutdown,
            metrics,
            open: None,
        }
    }

    /// Sends `missed` first; live messages up to `up_to` are duplicates.
    pub(crate) fn replay(&mut self, missed: Vec<Message>, up_to: Position) {
        self.replay = missed.into_iter();
        self.replayed_up_to = up_to;
    }

    /// Records why the requested replay is impossible.
    pub(crate) fn reset_because(&mut self, reason: String) {
        self.reset = Some(reason);
    }

    /// Counts this stream as open on `transport` until it is dropped.
    pub fn count_as(&mut self, transport: Transport) {
        self.open = Some(self.metrics.stream_opened(transport));
    }

    /// Why the requested replay could not be made, if it could not.
    pub fn reset(&self) -> Option<&str> {
        self.reset.as_deref()
    }

    /// The next message, or why the stream ends.
    /// The next message if one is ready now (replayed or already queued),
    /// so a transport can write several at once; `None` means wait with
    /// [`next`](Self::next), which also reports how the stream ended.
    pub fn try_next(&mut self) -> Option<Arc<Delivery>> {
        if let Some(message) = self.replay.next() {
            let recipients = Arc::from([self.live.user().clone()]);
            return Some(Delivery::new(message, recipients));
        }
        loop {
            match self.live.try_recv()? {
                Ok(delivery) if delivery.message.position <= self.replayed_up_to => continue,
                Ok(delivery) => return Some(self.counted(delivery)),
                Err(Closed::Lagged) => return None,
            }
        }
    }

    fn counted(&self, delivery: Arc<Delivery>) -> Arc<Delivery> {
        let age = now_micros().saturating_sub(delivery.message.created_at_micros);
        self.metrics.written(age as f64 / 1e6);
        delivery
    }

    pub async fn next(&mut self) -> Result<Arc<Delivery>, StreamEnd> {
        if self.shutdown.is_cancelled() {
            return Err(StreamEnd::ShuttingDown);
        }
        if Instant::now() >= self.expiry.deadline() {
            return Err(StreamEnd::TokenExpired);
        }
        if let Some(message) = self.replay.next() {
            let recipients = Arc::from([self.live.user().clone()]);
            return Ok(Delivery::new(message, recipients));
        }
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(StreamEnd::ShuttingDown),
                _ = &mut self.expiry => return Err(StreamEnd::TokenExpired),
                received = self.live.recv() => match received {
                    Ok(delivery) if delivery.message.position <= self.replayed_up_to => continue,
                    Ok(delivery) => return Ok(self.counted(delivery)),
                    Err(Closed::Lagged) => return Err(StreamEnd::Lagged),
                },
            }
        }
    }
}
