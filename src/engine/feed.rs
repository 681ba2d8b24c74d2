//! The feed: hands committed events to the hub in stream order, exactly
//! once, and decides who receives each.
//!
//! **Recipients by position.** A conversation's members change at stream
//! positions (membership events), so the members who receive the event at
//! position P are those of P: decided here, as P is delivered, never at
//! send time. The feed keeps each conversation's members as of the position
//! it is delivering: it learns a conversation it has not cached from the
//! membership intervals as of that position, and replaces its list when it
//! delivers a change. Every node's feed walks the same positions in the same
//! order, so a change at P applies to exactly the events after P on every
//! node, whatever the timing. A change reaches both the users it adds and
//! those it removes.
//!
//! Reports come from this node's writers ([`Feed::committed`], after each
//! commit) and from the broker, which tells what other nodes committed
//! ([`Feed::remote`] with the event, or [`Feed::head`] with just a
//! position). They arrive in any order, twice, or not at all: two
//! writers may report positions 7 and 8 either way round, NATS does not order
//! publishers, and a notification is lost while a connection is down.
//!
//! Positions are gap-free (see `store`), so the feed always knows exactly
//! what it has not seen. It delivers `next` as soon as it has it and holds
//! what comes after a gap. A gap is read from the database once it has stayed
//! open for [`GAP_WAIT`], or at once when a notification says the missing
//! positions are committed. When nothing moves for a [`POLL`] period, or the
//! broker reconnects ([`Feed::catch_up`]), the feed also asks the database
//! for its head, so a lost report at the tail is found too. Reports at or
//! below what was delivered are dropped as duplicates.

use crate::metrics::counted;
use crate::{
    domain::{Body, ConversationId, Event, Position, UserId},
    engine::hub::{Delivery, Hub},
    metrics::Metrics,
    store::{MemberLists, Participants, Store},
};
use prometheus_client::registry::Registry;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{Mutex, mpsc, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long a gap may stay open before the feed reads it from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(50);
/// How long the feed may see no progress before it checks the database head.
pub const POLL: Duration = Duration::from_secs(1);
/// The most messages read from the database in one go.
const FILL_BATCH: i64 = 1_000;
/// The most pending events whose conversations' members are read at once.
const MAX_BATCH_EVENTS: usize = 256;
/// The longest a local commit's acknowledgement waits for its delivery.
pub const ACK_PATIENCE: Duration = Duration::from_secs(1);

/// What runs once a local commit is in the hub: its writer's answer.
pub type OnDelivered = Box<dyn FnOnce() + Send>;

/// What a batch of reports requires the feed to read, least to most.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Read {
    Nothing,
    UpToHead,
    AskDatabase,
}

/// Why the feed reads the database.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Reports named positions up to a head: the committer or the broker
    /// did their job, and the rows are read in one range.
    Reported,
    /// A gap stayed open past [`GAP_WAIT`].
    Gap,
    /// The head poll, or a catch-up after a lost link: ask the database
    /// for its head too.
    Unreported,
}

/// What the feed read from the database, for `/metrics`.
#[derive(Default)]
pub struct FillCounts {
    /// Messages read from the database, for any reason.
    pub filled: AtomicU64,
    /// Of those, the ones no report named: found by the gap timer, the
    /// head poll or a catch-up. With a working broker this stays near 0.
    pub unreported: AtomicU64,
    /// Local commits delivered by the committer itself rather than the
    /// feed's (see [`Feed::committed_here`]).
    pub inline: AtomicU64,
}

enum Report {
    Committed(Event, OnDelivered),
    Remote(Event),
    Head(Position),
    CatchUp,
}

/// Where commits are reported; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Report>,
    /// The feed's state: its task's, lent to this node's committer for a
    /// batch it can deliver at once (see [`Feed::committed_here`]).
    sequencer: Arc<Mutex<Sequencer>>,
    fills: Arc<FillCounts>,
    /// The last position this node's hub was handed (see [`Feed::delivered`]).
    delivered: watch::Receiver<i64>,
}

impl Feed {
    /// Starts the feed after the newest committed message.
    pub async fn start(
        store: Store,
        participants: Participants,
        hub: Hub,
        metrics: Metrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, sqlx::Error> {
        let next = store.head().await?.0 + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let (delivered_tx, delivered) = watch::channel(next - 1);
        let fills = Arc::new(FillCounts::default());
        let sequencer = Sequencer {
            next,
            head: next - 1,
            pending: BTreeMap::new(),
            waiting: BTreeMap::new(),
            gap_since: None,
            members: MemberLists::default(),
            participants,
            fills: fills.clone(),
            metrics,
            store,
            hub,
            delivered: delivered_tx,
        };
        let sequencer = Arc::new(Mutex::new(sequencer));
        tasks.spawn(Sequencer::run(sequencer.clone(), rx, shutdown));
        Ok(Self {
            tx,
            sequencer,
            fills,
            delivered,
        })
    }

    /// The last position handed to this node's hub, which moves in
    /// position order: whatever is committed at or below it is in the
    /// database, so a reader of the database (the firehose) waits on it.
    pub fn delivered(&self) -> watch::Receiver<i64> {
        self.delivered.clone()
    }

    /// This node committed `event`; `on_delivered` runs once the hub has
    /// it (every live subscription of this node has it queued), so a
    /// writer acknowledged from there is acknowledged after that. At the
    /// latest it runs [`ACK_PATIENCE`] later, when the feed is held up (the
    /// database cannot tell it the recipients): the event is committed, and
    /// its writer must not wait on the feed's trouble.
    pub fn committed(&self, event: Event, on_delivered: impl FnOnce() + Send + 'static) {
        self.report(Report::Committed(event, Box::new(on_delivered)));
    }

    /// This node's committer committed `events` (in position order), each
    /// with its writer's answer as in [`committed`](Self::committed). When
    /// the feed is idle and caught up to the first of them, and delivering
    /// them needs nothing from the database (their conversations' members
    /// are known, none changes a message), they are delivered here and now
    /// by the committer itself: one hand-off less per commit than through
    /// the feed's task. Otherwise they are reported like any commit. Order
    /// and exactly-once hold either way: the sequencer decides both, and
    /// only one holder of its lock delivers at a time.
    pub async fn committed_here(&self, events: Vec<(Event, OnDelivered)>) {
        if let Ok(mut sequencer) = self.sequencer.try_lock()
            && sequencer.delivers_at_once(events.iter().map(|(event, _)| event))
        {
            let count = events.len() as u64;
            for (event, on_delivered) in events {
                sequencer.take(Report::Committed(event, on_delivered));
            }
            self.fills.inline.fetch_add(count, Ordering::Relaxed);
            return sequencer.flush().await;
        }
        for (event, on_delivered) in events {
            self.report(Report::Committed(event, on_delivered));
        }
    }

    /// Another node committed `event`.
    pub fn remote(&self, event: Event) {
        self.report(Report::Remote(event));
    }

    /// Every position up to `position` is committed.
    pub fn head(&self, position: Position) {
        self.report(Report::Head(position));
    }

    /// Reports may have been lost: read what is missing from the database.
    pub fn catch_up(&self) {
        self.report(Report::CatchUp);
    }

    /// What the feed has read from the database, so far.
    /// Registers what the feed counts.
    pub fn register_metrics(&self, registry: &mut Registry) {
        counted(
            registry,
            "feed_filled_messages",
            "Messages the feed read from the database to fill gaps",
            self.fills.filled.load(Ordering::Relaxed),
        );
        counted(
            registry,
            "feed_unreported_messages",
            "Of those, messages no report named (gap timer, head poll, catch-up): the broker did not deliver them",
            self.fills.unreported.load(Ordering::Relaxed),
        );
        counted(
            registry,
            "feed_inline_messages",
            "Messages committed here and delivered at once by the committer (the feed idle and caught up)",
            self.fills.inline.load(Ordering::Relaxed),
        );
    }

    fn report(&self, report: Report) {
        // Only fails once the feed has stopped at shutdown; the database has
        // the message and resuming clients will get it.
        let _ = self.tx.send(report);
    }
}

struct Sequencer {
    /// The next position to deliver.
    next: i64,
    /// The highest position known to be committed.
    head: i64,
    /// Reports past a gap, by position.
    pending: BTreeMap<i64, Event>,
    /// Local commits' acknowledgements, by position, each with when it
    /// began to wait.
    waiting: BTreeMap<i64, (Instant, OnDelivered)>,
    /// When the current gap opened.
    gap_since: Option<Instant>,
    /// Members of conversations as of `next - 1` (see the module comment).
    members: MemberLists,
    /// The core's cache for senders, told of every change delivered.
    participants: Participants,
    fills: Arc<FillCounts>,
    metrics: Metrics,
    store: Store,
    hub: Hub,
    /// Told `next - 1` after each flush that moved it.
    delivered: watch::Sender<i64>,
}

impl Sequencer {
    async fn run(
        sequencer: Arc<Mutex<Self>>,
        mut rx: mpsc::UnboundedReceiver<Report>,
        shutdown: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(POLL);
        let mut seen_at_last_poll = sequencer.lock().await.next;
        loop {
            let gap_since = sequencer.lock().await.gap_since;
            let gap_deadline = gap_since.map(|since| since + GAP_WAIT);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                report = rx.recv() => match report {
                    Some(report) => sequencer.lock().await.take_all(report, &mut rx).await,
                    None => break,
                },
                _ = sleep_until(gap_deadline), if gap_deadline.is_some() => {
                    sequencer.lock().await.fill(Fill::Gap).await;
                }
                _ = poll.tick() => {
                    let mut sequencer = sequencer.lock().await;
                    if sequencer.next == seen_at_last_poll {
                        sequencer.fill(Fill::Unreported).await;
                    }
                    seen_at_last_poll = sequencer.next;
                    sequencer.acknowledge_overdue();
                }
            }
        }
        // Stopping: every commit waiting here is committed; say so.
        let waiting = std::mem::take(&mut sequencer.lock().await.waiting);
        for (_, (_, on_delivered)) in waiting {
            on_delivered();
        }
    }

    /// Whether `events`, committed here in position order, can be
    /// delivered now without reading the database: nothing pending, the
    /// first is next, and each one's recipients are known.
    fn delivers_at_once<'a>(&self, mut events: impl Iterator<Item = &'a Event>) -> bool {
        let mut expected = self.next;
        self.pending.is_empty()
            && events.all(|event| {
                let next_in_line = event.position.0 == expected;
                expected += 1;
                next_in_line
                    && event.target().is_none()
                    && self.members.get(&event.conversation_id).is_some()
            })
    }

    /// Takes `first` and every report already queued behind it, delivers
    /// what is contiguous, then reads the database once for whatever they
    /// say is missing: under load one range read serves many notifications,
    /// and one read of members serves a whole commit's conversations.
    async fn take_all(&mut self, first: Report, rx: &mut mpsc::UnboundedReceiver<Report>) {
        let mut read = self.take(first);
        while let Ok(report) = rx.try_recv() {
            read = read.max(self.take(report));
        }
        self.flush().await;
        match read {
            Read::Nothing => {}
            Read::UpToHead => self.fill(Fill::Reported).await,
            Read::AskDatabase => self.fill(Fill::Unreported).await,
        }
    }

    /// Takes one report and says what must be read from the database.
    fn take(&mut self, report: Report) -> Read {
        match report {
            Report::Committed(event, on_delivered) => {
                let position = event.position.0;
                match position < self.next {
                    true => on_delivered(),
                    false => {
                        self.waiting
                            .insert(position, (Instant::now(), on_delivered));
                    }
                }
                self.hold(event);
            }
            Report::Remote(event) => self.hold(event),
            Report::Head(position) => {
                self.head = self.head.max(position.0);
                if self.head >= self.next && !self.pending.contains_key(&self.next) {
                    return Read::UpToHead;
                }
            }
            Report::CatchUp => return Read::AskDatabase,
        }
        Read::Nothing
    }

    /// Holds one event until [`flush`](Self::flush) delivers it in order.
    fn hold(&mut self, event: Event) {
        let position = event.position.0;
        if position < self.next {
            return;
        }
        self.head = self.head.max(position);
        self.pending.insert(position, event);
    }

    /// Delivers pending events from `next` on, up to the first gap. An
    /// event whose recipients cannot be read stays pending, and the gap
    /// timer tries again.
    async fn flush(&mut self) {
        if let Err(error) = self.learn_members().await {
            return self.retry_later(&error);
        }
        while let Some(event) = self.pending.remove(&self.next) {
            match self.recipients(&event).await {
                Ok(recipients) => {
                    let delivery = Delivery::new(event, recipients);
                    self.metrics.delivered(self.hub.deliver(delivery) as u64);
                    if let Some((_, on_delivered)) = self.waiting.remove(&self.next) {
                        on_delivered();
                    }
                    self.next += 1;
                }
                Err(error) => {
                    self.pending.insert(self.next, event);
                    return self.retry_later(&error);
                }
            }
        }
        self.gap_since = match self.pending.is_empty() {
            true => None,
            false => self.gap_since.or_else(|| Some(Instant::now())),
        };
        let delivered = self.next - 1;
        self.delivered.send_if_modified(|up_to| {
            let moved = *up_to != delivered;
            *up_to = delivered;
            moved
        });
    }

    /// Reads, in one query, the members of every conversation among the
    /// deliverable pending events (those before the first gap) that the
    /// feed has not cached, each as of its first such event. Exact until that conversation's next change,
    /// which the feed applies in order anyway; without it, a burst of new
    /// conversations would cost one read each, one after the other, while
    /// every delivery waits.
    async fn learn_members(&mut self) -> Result<(), sqlx::Error> {
        let mut unknown: Vec<(ConversationId, Position)> = Vec::new();
        // Only the run up to the first gap: past it, a change inside the gap
        // could fall between an earlier event and the position read.
        let run = self.pending.range(self.next..).zip(self.next..);
        let run = run.take_while(|((position, _), expected)| *position == expected);
        for ((_, event), _) in run.take(MAX_BATCH_EVENTS) {
            let id = &event.conversation_id;
            if self.members.get(id).is_none() && !unknown.iter().any(|(known, _)| known == id) {
                unknown.push((id.clone(), event.position));
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let mut found = self.store.members_at_many(&unknown).await?;
        for (id, _) in unknown {
            let members = found.remove(&id).unwrap_or_default();
            self.members.insert(id, members.into());
        }
        Ok(())
    }

    /// Who receives `event`: the members of its conversation at its
    /// position (of a change to a message, those of them who saw it). A membership change also moves the feed's list (and drops
    /// the core's cached one) to the members after it.
    async fn recipients(&mut self, event: &Event) -> Result<Arc<[UserId]>, sqlx::Error> {
        let id = &event.conversation_id;
        let members = match self.members.get(id) {
            Some(members) => members,
            None => {
                let loaded: Arc<[UserId]> = self.store.members_at(id, event.position).await?.into();
                self.members.insert(id.clone(), loaded.clone());
                loaded
            }
        };
        // A change to a message reaches only the members who saw it (were
        // members when it was sent), as a replay would (`saw_target!`).
        if let Some(target) = event.target() {
            let saw = self.store.members_at(id, target).await?;
            let members: Vec<UserId> = members
                .iter()
                .filter(|member| saw.binary_search(member).is_ok())
                .cloned()
                .collect();
            return Ok(members.into());
        }
        let Body::Membership(change) = &event.body else {
            return Ok(members);
        };
        self.participants.forget(id);
        self.members
            .insert(id.clone(), change.members.clone().into());
        let mut everyone: Vec<UserId> = members.iter().chain(&change.added).cloned().collect();
        everyone.sort();
        everyone.dedup();
        Ok(everyone.into())
    }

    /// Reads what is missing from the database: up to the first pending
    /// message, else up to the known head, else (with `ask_database`) up to
    /// the database's head.
    async fn fill(&mut self, why: Fill) {
        let ask_database = why == Fill::Unreported;
        loop {
            let to = match self.pending.keys().next() {
                Some(first) => *first,
                None if self.head >= self.next => self.head.saturating_add(1),
                None if !ask_database => return self.flush().await,
                None => match self.store.head().await {
                    Ok(head) => head.0 + 1,
                    Err(error) => return self.retry_later(&error),
                },
            };
            if to <= self.next {
                return self.flush().await;
            }
            let until = to.min(self.next.saturating_add(FILL_BATCH));
            match self
                .store
                .events_between(Position(self.next), Position(until))
                .await
            {
                Ok(found) if !found.is_empty() => {
                    tracing::debug!(from = self.next, count = found.len(), "feed filled a gap");
                    let count = found.len() as u64;
                    self.fills.filled.fetch_add(count, Ordering::Relaxed);
                    if why != Fill::Reported {
                        self.fills.unreported.fetch_add(count, Ordering::Relaxed);
                    }
                    for event in found {
                        self.hold(event);
                    }
                    self.flush().await;
                }
                Ok(_) => return self.nothing_at_next().await,
                Err(error) => return self.retry_later(&error),
            }
        }
    }

    /// The next position is not in the database. If the database's head is
    /// below it too, whatever said it was committed was wrong (a forged or
    /// garbled notification): forget it rather than ask forever. Otherwise
    /// it is committed but not yet visible here; try again.
    async fn nothing_at_next(&mut self) {
        match self.store.head().await {
            Ok(head) if head.0 < self.next => {
                tracing::warn!(
                    claimed = self.head,
                    head = head.0,
                    "a broker claimed positions the database does not have; ignoring"
                );
                self.head = head.0;
                // Held past a gap the database does not have: not real.
                let held = self.pending.len();
                self.pending.retain(|position, _| *position <= head.0);
                let dropped = held - self.pending.len();
                if dropped > 0 {
                    tracing::warn!(dropped, "dropped messages beyond the database's head");
                }
                self.flush().await;
            }
            Ok(_) => self.retry_later(&"no committed message at the next position"),
            Err(error) => self.retry_later(&error),
        }
    }

    /// Answers the writers of local commits that have waited for their
    /// delivery longer than [`ACK_PATIENCE`] (the feed is held up).
    fn acknowledge_overdue(&mut self) {
        let overdue: Vec<i64> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= ACK_PATIENCE)
            .map(|(position, _)| *position)
            .collect();
        for position in overdue {
            if let Some((_, on_delivered)) = self.waiting.remove(&position) {
                on_delivered();
            }
        }
    }

    /// Gives up on this fill; the gap timer or the next poll tries again.
    fn retry_later(&mut self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, position = self.next, "feed could not fill a gap; retrying");
        self.gap_since = Some(Instant::now());
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
