//! The firehose: every stored event of every conversation, in position
//! order, exactly once, for the application's backend
//! (`Admin.SubscribeAll`, `GET /api/admin/events`).
//!
//! **Never dropped, always bounded.** It is no subscription of the hub, so
//! no queue of it can fill: it reads the database a page at a time (about
//! `stream::REPLAY_PAGE_BYTES`), when its reader asks for more, so a slow reader
//! holds one page and reads at its own pace. Once it has read everything,
//! it waits for this node's feed to move past where it read ([`Feed::delivered`]):
//! positions are gap-free and the feed hands them on in order, so whatever
//! is at or below the feed's position is committed and readable.
//!
//! [`Feed::delivered`]: crate::engine::feed::Feed::delivered

use crate::{
    domain::{Event, Position},
    engine::stream::{StreamEnd, keep_within},
    error::Error,
    pb,
    store::Store,
};
use std::{collections::VecDeque, sync::Arc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The kinds of stored event, as `kinds` names them.
pub const KINDS: [&str; 6] = [
    "message",
    "edit",
    "delete",
    "reaction",
    "read",
    "membership",
];

/// Which kinds a reader wants: in the order of [`KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(pub [bool; 6]);

impl Kinds {
    /// `kinds` as a client names them; none means every kind.
    pub fn parse(kinds: &[String]) -> Result<Self, Error> {
        if kinds.is_empty() {
            return Ok(Kinds([true; 6]));
        }
        let mut wanted = [false; 6];
        for kind in kinds {
            let index = KINDS
                .iter()
                .position(|known| known == kind)
                .ok_or_else(|| {
                    Error::invalid("kinds are message, edit, delete, reaction, read and membership")
                })?;
            wanted[index] = true;
        }
        Ok(Kinds(wanted))
    }
}

/// An event as the firehose and webhooks give it: a message also says who
/// had no open stream on any node as it was sent.
pub struct Stored {
    pub event: Event,
    pub offline: Vec<String>,
}

impl Stored {
    /// The wire form, `offline_recipients` set on a message.
    pub fn to_pb(&self) -> pb::Event {
        let mut event = pb::Event::from(&self.event);
        event.offline_recipients = self.offline.clone();
        event
    }
}

/// One reader's firehose.
pub struct Firehose {
    store: Store,
    /// The last position read (or skipped as not wanted).
    after: Position,
    kinds: Kinds,
    page: VecDeque<Stored>,
    page_size: i64,
    /// Shared with resuming streams: page reads at once, across the node.
    permits: Arc<Semaphore>,
    delivered: watch::Receiver<i64>,
    shutdown: CancellationToken,
    /// Its place among its key's firehoses, given back when it ends.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Firehose {
    /// This firehose holds `slot` until it is dropped.
    pub(crate) fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self._slot = Some(slot);
        self
    }

    pub(crate) fn new(
        store: Store,
        after: Position,
        kinds: Kinds,
        page_size: usize,
        permits: Arc<Semaphore>,
        delivered: watch::Receiver<i64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            after,
            kinds,
            page: VecDeque::new(),
            page_size: page_size.max(1) as i64,
            permits,
            delivered,
            shutdown,
            _slot: None,
        }
    }

    /// The next event if one is read already, without waiting: so a door
    /// can write several at once.
    pub fn try_next(&mut self) -> Option<Stored> {
        let stored = self.page.pop_front()?;
        self.after = stored.event.position;
        Some(stored)
    }

    /// The next event, read from the database when the page is used up and
    /// waited for when there is none yet; or why the firehose ends.
    pub async fn next(&mut self) -> Result<Stored, StreamEnd> {
        loop {
            if let Some(event) = self.try_next() {
                return Ok(event);
            }
            if self.shutdown.is_cancelled() {
                return Err(StreamEnd::ShuttingDown);
            }
            // Committed and readable up to here, before the read.
            let readable = *self.delivered.borrow_and_update();
            let read = async {
                let _permit = self.permits.acquire().await;
                self.store
                    .events_after(self.after, self.page_size, self.kinds.0)
                    .await
            };
            let mut page = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(StreamEnd::ShuttingDown),
                page = read => page.map_err(|error| {
                    tracing::warn!(%error, "a firehose page could not be read; it ends");
                    StreamEnd::Unavailable
                })?,
            };
            if !page.is_empty() {
                keep_within(&mut page, |(event, _)| event.approximate_bytes());
                self.page = page
                    .into_iter()
                    .map(|(event, offline)| Stored { event, offline })
                    .collect();
                continue;
            }
            // Nothing wanted up to what was readable: never scan it again.
            self.after = self.after.max(Position(readable));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(StreamEnd::ShuttingDown),
                moved = self.delivered.wait_for(|up_to| *up_to > readable) => {
                    if moved.is_err() {
                        return Err(StreamEnd::ShuttingDown);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_every_kind_by_default_and_only_known_ones() {
        assert_eq!(Kinds::parse(&[]).unwrap(), Kinds([true; 6]));
        let some = Kinds::parse(&["edit".into(), "membership".into()]).unwrap();
        assert_eq!(some, Kinds([false, true, false, false, false, true]));
        assert!(Kinds::parse(&["typing".into()]).is_err(), "never stored");
    }
}
