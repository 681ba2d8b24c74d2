//! The feed: hands committed messages to the hub in stream order, exactly once.
//!
//! Writers report each message after its commit ([`Feed::committed`]), but
//! two writers that commit positions 7 and 8 may report them in either order,
//! and a report can go missing (a writer whose commit succeeded but whose
//! connection failed before it heard so). Since positions are gap-free (see
//! `store`), the feed knows exactly what it has not seen: it holds reports
//! past a gap, waits [`GAP_WAIT`] for the missing ones, then reads them from
//! the database. When nothing moves for a [`POLL`] period it also asks the
//! database for the head, so a lost report at the tail is found too. Reports
//! at or below what was delivered are dropped as duplicates.
//!
//! This is the seam where a cross-node broker plugs in: anything that can
//! report committed positions can feed the hub without touching it.

use crate::{
    domain::Position,
    hub::{Delivery, Hub},
    store::Store,
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// How long a gap may stay open before the feed reads it from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(50);
/// How long the feed may see no progress before it checks the database head.
pub const POLL: Duration = Duration::from_secs(1);
/// The most messages read from the database in one go.
const FILL_BATCH: i64 = 1_000;

/// Where writers report commits; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Arc<Delivery>>,
}

impl Feed {
    /// Starts the feed after the newest committed message.
    pub async fn start(
        store: Store,
        hub: Hub,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), sqlx::Error> {
        let next = store.head().await?.0 + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let sequencer = Sequencer {
            next,
            pending: BTreeMap::new(),
            gap_since: None,
            store,
            hub,
        };
        let task = tokio::spawn(sequencer.run(rx, shutdown));
        Ok((Self { tx }, task))
    }

    /// Reports a committed message. Never waits.
    pub fn committed(&self, delivery: Arc<Delivery>) {
        // Only fails once the feed has stopped at shutdown; the database has
        // the message and resuming clients will get it.
        let _ = self.tx.send(delivery);
    }
}

struct Sequencer {
    /// The next position to deliver.
    next: i64,
    /// Reports past a gap, by position.
    pending: BTreeMap<i64, Arc<Delivery>>,
    /// When the current gap opened.
    gap_since: Option<Instant>,
    store: Store,
    hub: Hub,
}

impl Sequencer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Arc<Delivery>>,
        shutdown: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(POLL);
        let mut seen_at_last_poll = self.next;
        loop {
            let gap_deadline = self.gap_since.map(|since| since + GAP_WAIT);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                report = rx.recv() => match report {
                    Some(delivery) => self.offer(delivery),
                    None => break,
                },
                _ = sleep_until(gap_deadline), if gap_deadline.is_some() => self.fill().await,
                _ = poll.tick() => {
                    if self.next == seen_at_last_poll {
                        self.fill().await;
                    }
                    seen_at_last_poll = self.next;
                }
            }
        }
    }

    /// Takes one report and delivers whatever is now contiguous.
    fn offer(&mut self, delivery: Arc<Delivery>) {
        let position = delivery.message.position.0;
        if position < self.next {
            return;
        }
        self.pending.insert(position, delivery);
        self.flush();
    }

    /// Delivers pending reports from `next` on, up to the first gap.
    fn flush(&mut self) {
        while let Some(delivery) = self.pending.remove(&self.next) {
            self.hub.deliver(delivery);
            self.next += 1;
        }
        self.gap_since = match self.pending.is_empty() {
            true => None,
            false => self.gap_since.or_else(|| Some(Instant::now())),
        };
    }

    /// Reads what is missing from the database: up to the first pending
    /// report, or up to the head when nothing is pending.
    async fn fill(&mut self) {
        loop {
            let to = match self.pending.keys().next() {
                Some(first) => *first,
                None => match self.store.head().await {
                    Ok(head) => head.0 + 1,
                    Err(error) => return self.retry_later(&error),
                },
            };
            if to <= self.next {
                return self.flush();
            }
            let until = to.min(self.next + FILL_BATCH);
            let read = self
                .store
                .deliveries(Position(self.next), Position(until))
                .await;
            match read {
                Ok(found) if !found.is_empty() => {
                    tracing::debug!(from = self.next, count = found.len(), "feed filled a gap");
                    for delivery in found {
                        self.offer(Arc::new(delivery));
                    }
                }
                Ok(_) => {
                    return self.retry_later(&"no committed message at the next position");
                }
                Err(error) => return self.retry_later(&error),
            }
        }
    }

    /// Gives up on this fill; the gap timer or the next poll tries again.
    fn retry_later(&mut self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, position = self.next, "feed could not fill a gap; retrying");
        if !self.pending.is_empty() {
            self.gap_since = Some(Instant::now());
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
