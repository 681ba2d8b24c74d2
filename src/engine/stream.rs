//! One subscriber's stream, of messages or of every event (the one
//! implementation behind `SubscribeMessages`, `SubscribeEvents`,
//! `/api/messages` and `/api/events`): what a resume replays, then live
//! events from the hub, with no gap and no duplicate (see
//! `Herald::subscribe`), ending when the subscriber lags, its token expires
//! or the server shuts down.
//!
//! **Bounded replay.** A resume may ask for thousands of missed messages;
//! they are read from the database a page at a time, as the subscriber
//! consumes them, so a stream holds at most one page (about
//! [`REPLAY_PAGE_BYTES`]) however much it missed and however slowly it
//! reads. Page reads across the node share a few permits, so a reconnect
//! storm queues instead of taking the whole database pool.

use crate::{
    domain::{Event, Position, UserId, moderation::Ending, now_micros},
    engine::hub::{Closed, Delivery, Subscription, Wants},
    engine::presence::{Here, Presence},
    error::Error,
    metrics::{Metrics, OpenStream, Transport},
    store::Store,
};
use std::{collections::VecDeque, pin::Pin, sync::Arc};
use tokio::{
    sync::Semaphore,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;

/// About how many bytes of replayed messages a stream holds at once.
pub const REPLAY_PAGE_BYTES: usize = 1024 * 1024;

/// How many events a page of replay (or of the firehose) holds: about
/// [`REPLAY_PAGE_BYTES`] of content at the largest.
pub fn page_size(max_content_bytes: usize) -> usize {
    (REPLAY_PAGE_BYTES / max_content_bytes.max(1)).clamp(1, 256)
}

/// Why a message stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The subscriber fell behind and was dropped; it should resume.
    Lagged,
    /// The token the stream was opened with expired.
    TokenExpired,
    /// The server is shutting down; reconnect elsewhere.
    ShuttingDown,
    /// The replay could not be read from the database; resume later.
    Unavailable,
    /// Moderation ended it: a ban, a revocation or a disconnection.
    Ended(Ending),
}

/// Where a resuming stream reads what it missed, a page at a time.
pub(crate) struct ReplaySource {
    pub store: Store,
    pub user: UserId,
    /// Shared by every stream of the node: concurrent page reads.
    pub permits: Arc<Semaphore>,
    pub page_size: usize,
    pub wants: Wants,
    pub metrics: Metrics,
}

/// What a stream does next, decided without waiting.
enum Step {
    Deliver(Arc<Delivery>),
    End(StreamEnd),
    /// The replay's next page must be read.
    ReadPage,
    /// Nothing is ready: wait for the hub.
    Wait,
}

/// The replay's progress.
struct Replay {
    source: ReplaySource,
    page: VecDeque<Event>,
    /// Whether the database has nothing more after `replayed_up_to`.
    exhausted: bool,
}

/// One subscriber's messages or events: the replay, then live, in stream
/// order.
pub struct EventStream {
    /// Boxed: most streams are live only, or done replaying, and an idle
    /// stream keeps no room for it.
    replay: Option<Box<Replay>>,
    /// The last position replayed (or the resume point): live messages at
    /// or below it came through the replay already.
    replayed_up_to: Position,
    reset: Option<String>,
    live: Subscription,
    /// Fires when the token expires; one timer for the stream's whole life,
    /// not one per message.
    expiry: Pin<Box<Sleep>>,
    shutdown: CancellationToken,
    metrics: Metrics,
    open: Option<OpenStream>,
    presence: Presence,
    /// Keeps the user online while the stream is served.
    here: Option<Here>,
}

impl EventStream {
    /// A stream of `live` only, until `deadline` or `shutdown`.
    pub(crate) fn new(
        live: Subscription,
        deadline: Instant,
        shutdown: CancellationToken,
        metrics: Metrics,
        presence: Presence,
    ) -> Self {
        Self {
            replay: None,
            replayed_up_to: Position(0),
            reset: None,
            live,
            expiry: Box::pin(tokio::time::sleep_until(deadline)),
            shutdown,
            metrics,
            open: None,
            presence,
            here: None,
        }
    }

    /// Resumes after `after` (`None`: an id herald could have issued
    /// that names nothing): reads the first page of what the user missed
    /// before the stream starts (so a short replay is what was missed at
    /// this moment), and replays it, then the rest from `source`, before
    /// going live; or, when the resume point is unknown, invisible to the
    /// user, or more than `limit` events ago, records why it cannot.
    pub(crate) async fn resume(
        &mut self,
        source: ReplaySource,
        after: Option<Position>,
        limit: usize,
    ) -> Result<(), Error> {
        // An event the user could not see (someone else's conversation, or
        // before they joined) is as unknown as none.
        let after = match after {
            Some(after) if source.store.visible(&source.user, after).await? => after,
            _ => {
                self.impossible("unknown message id: replay is impossible");
                return Ok(());
            }
        };
        let first_page = {
            let _permit = source.permits.acquire().await;
            let everything = source.wants == Wants::Everything;
            let (store, user, page_size) = (&source.store, &source.user, source.page_size);
            let first_page = store
                .missed(user, after, page_size as i64, everything)
                .await?;
            let too_many = first_page.len() > limit
                || (first_page.len() == page_size
                    && store
                        .missed_count(user, after, limit + 1, everything)
                        .await?
                        > limit);
            if too_many {
                let reason =
                    format!("more than {limit} messages were missed: replay is impossible");
                self.impossible(&reason);
                return Ok(());
            }
            first_page
        };
        source.metrics.replayed(first_page.len() as u64);
        self.replay(source, after, first_page);
        Ok(())
    }

    /// Records why the requested replay is impossible.
    fn impossible(&mut self, reason: &str) {
        self.metrics.replay_impossible();
        self.reset = Some(reason.to_owned());
    }

    /// Replays `first_page`, then whatever else `source` has after it,
    /// before going live; `after` is the resume point.
    fn replay(&mut self, source: ReplaySource, after: Position, mut first_page: Vec<Event>) {
        let cut = keep_within_bytes(&mut first_page);
        self.replayed_up_to = first_page.last().map_or(after, |last| last.position);
        self.replay = Some(Box::new(Replay {
            exhausted: !cut && first_page.len() < source.page_size,
            source,
            page: first_page.into(),
        }));
    }

    /// Serves the stream on `transport`: counts it as open there, and its
    /// user as online (presence), until it is dropped. A door calls this
    /// when it serves the stream.
    pub fn serve_as(&mut self, transport: Transport) {
        self.open = Some(self.metrics.stream_opened(transport));
        self.here = Some(self.presence.here(self.live.user()));
    }

    /// When the stream ends whatever happens: its token's expiry (plus
    /// the leeway). The listener ends it then even while a write is blocked.
    pub fn ends_at(&self) -> Instant {
        self.expiry.deadline()
    }

    /// Why the requested replay could not be made, if it could not.
    pub fn reset(&self) -> Option<&str> {
        self.reset.as_deref()
    }

    /// The next message if one is ready now (replayed and already read, or
    /// queued live), so a transport can write several at once; `None` means
    /// wait with [`next`](Self::next), which also reports how the stream
    /// ended.
    pub fn try_next(&mut self) -> Option<Arc<Delivery>> {
        match self.step() {
            Step::Deliver(delivery) => Some(delivery),
            Step::End(_) | Step::ReadPage | Step::Wait => None,
        }
    }

    /// The next message, or why the stream ends: [`step`](Self::step), and
    /// when it says so, a page read or a wait for the hub.
    pub async fn next(&mut self) -> Result<Arc<Delivery>, StreamEnd> {
        // The end first, once per call, so a shutdown or an expiry ends the
        // stream even while messages are queued. Not in `step`, which
        // `try_next` runs for every message of a batch: `is_cancelled` takes
        // a mutex (1% of the `direct` profile when it ran per message).
        if self.shutdown.is_cancelled() {
            return Err(StreamEnd::ShuttingDown);
        }
        if Instant::now() >= self.expiry.deadline() {
            return Err(StreamEnd::TokenExpired);
        }
        loop {
            match self.step() {
                Step::Deliver(delivery) => return Ok(delivery),
                Step::End(end) => return Err(end),
                // Boxed: a page read (a database query) is the largest
                // state of this future, and every idle stream would
                // otherwise keep room for it while it waits for the hub.
                Step::ReadPage => Box::pin(self.read_page()).await?,
                Step::Wait => {
                    let received = tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(StreamEnd::ShuttingDown),
                        _ = &mut self.expiry => return Err(StreamEnd::TokenExpired),
                        received = self.live.recv() => received,
                    };
                    if let Some(next) = self.admit(received) {
                        return next;
                    }
                }
            }
        }
    }

    /// The one place the stream decides what comes next without waiting:
    /// the replay, else what the hub queued (or that it dropped the
    /// subscription). Shutdown and expiry are `next`'s to check.
    fn step(&mut self) -> Step {
        match self.replayed() {
            Ok(Some(delivery)) => return Step::Deliver(delivery),
            Ok(None) => {}
            Err(()) => return Step::ReadPage,
        }
        while let Some(received) = self.live.try_recv() {
            match self.admit(received) {
                Some(Ok(delivery)) => return Step::Deliver(delivery),
                Some(Err(end)) => return Step::End(end),
                None => {}
            }
        }
        Step::Wait
    }

    /// What a message or closure received from the hub means; `None` for a
    /// message the replay already sent.
    fn admit(
        &self,
        received: Result<Arc<Delivery>, Closed>,
    ) -> Option<Result<Arc<Delivery>, StreamEnd>> {
        match received {
            Ok(delivery) => self.fresh(delivery).map(Ok),
            Err(Closed::Lagged) => Some(Err(StreamEnd::Lagged)),
            Err(Closed::Ended(ending)) => Some(Err(StreamEnd::Ended(ending))),
        }
    }

    /// The next replayed message already read; `Ok(None)` once the replay
    /// is over (or there is none), `Err` when the next page must be read.
    fn replayed(&mut self) -> Result<Option<Arc<Delivery>>, ()> {
        let Some(replay) = &mut self.replay else {
            return Ok(None);
        };
        match replay.page.pop_front() {
            Some(event) => {
                let recipients = Arc::from([replay.source.user.clone()]);
                Ok(Some(Delivery::new(event, recipients)))
            }
            None if replay.exhausted => {
                self.replay = None;
                Ok(None)
            }
            None => Err(()),
        }
    }

    /// Reads the next page of the replay.
    async fn read_page(&mut self) -> Result<(), StreamEnd> {
        let Some(replay) = &mut self.replay else {
            return Ok(());
        };
        let source = &replay.source;
        let read = async {
            let _permit = source.permits.acquire().await;
            let limit = source.page_size as i64;
            let everything = source.wants == Wants::Everything;
            source
                .store
                .missed(&source.user, self.replayed_up_to, limit, everything)
                .await
        };
        let page = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(StreamEnd::ShuttingDown),
            page = read => page,
        };
        let page = page.map_err(|error| {
            tracing::warn!(%error, "a replay page could not be read; the stream ends");
            StreamEnd::Unavailable
        })?;
        let mut page = page;
        let cut = keep_within_bytes(&mut page);
        source.metrics.replayed(page.len() as u64);
        replay.exhausted = !cut && page.len() < source.page_size;
        if let Some(last) = page.last() {
            self.replayed_up_to = last.position;
        }
        replay.page = page.into();
        Ok(())
    }

    /// `delivery`, unless the replay already sent it.
    fn fresh(&self, delivery: Arc<Delivery>) -> Option<Arc<Delivery>> {
        // Signals have no position and are never replayed: always fresh.
        if delivery.event.has_position() && delivery.event.position <= self.replayed_up_to {
            return None;
        }
        let age = now_micros().saturating_sub(delivery.event.created_at_micros);
        self.metrics.written(age as f64 / 1e6);
        Some(delivery)
    }
}

/// Cuts `page` after the events that fit in [`REPLAY_PAGE_BYTES`] (at
/// least one), so a page of large events (a membership change carries the
/// whole member list) is held no longer than a page of messages; says
/// whether it cut. The rest is read again with the next page.
fn keep_within_bytes(page: &mut Vec<Event>) -> bool {
    keep_within(page, Event::approximate_bytes)
}

/// [`keep_within_bytes`] for pages of anything holding events, `bytes`
/// saying how large each is.
pub(crate) fn keep_within<T>(page: &mut Vec<T>, size: impl Fn(&T) -> usize) -> bool {
    let mut bytes = 0;
    let fits = page
        .iter()
        .take_while(|item| {
            bytes += size(item);
            bytes <= REPLAY_PAGE_BYTES
        })
        .count()
        .max(1);
    let cut = fits < page.len();
    page.truncate(fits);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Body, ConversationId};

    fn message(position: i64, bytes: usize) -> Event {
        Event {
            position: Position(position),
            conversation_id: ConversationId::generate(),
            user_id: UserId::parse("user", "alice").unwrap(),
            created_at_micros: 0,
            body: Body::Message {
                content: "x".repeat(bytes),
                reply_to: None,
                edited_at_micros: None,
                deleted: false,
                system: false,
            },
        }
    }

    #[test]
    fn a_page_keeps_what_fits_in_its_bytes_and_at_least_one_event() {
        let mut small = vec![message(1, 10), message(2, 10)];
        assert!(!keep_within_bytes(&mut small));
        assert_eq!(small.len(), 2);
        let half = REPLAY_PAGE_BYTES / 2;
        let mut large = vec![message(1, half), message(2, half), message(3, 10)];
        assert!(keep_within_bytes(&mut large));
        assert_eq!(large.len(), 1, "two halves and their overhead do not fit");
        let mut huge = vec![message(1, 2 * REPLAY_PAGE_BYTES), message(2, 10)];
        assert!(keep_within_bytes(&mut huge));
        assert_eq!(huge.len(), 1, "one event always goes");
    }
}
