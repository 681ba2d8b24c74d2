//! Group commit: the one place that persists events (messages, membership
//! changes, read receipts) and then publishes them.
//!
//! Membership changes and read receipts take stream positions like
//! messages, so they come through here too, each in a transaction of its
//! own (they read before they write: see `Store::commit_change`), in the
//! order they were queued among the message batches.
//!
//! Writers hand their message to the committer and wait for its answer
//! (on SQLite the committer is a thread of its own, elsewhere a task: see
//! [`Committer::start`]). It takes whatever is queued (up to
//! [`MAX_BATCH`]) and commits it in one transaction, so under load many
//! messages share one commit and one wait for the disk, while a lone
//! message waits for nobody. Only after the commit are the messages
//! reported to the feed (in position order) and the broker told, and each
//! writer is answered once the feed has handed its message to this node's
//! hub: acknowledged means persisted, and queued for every live
//! subscription of this node (a stream opened after the answer does not
//! receive it as new). Once queued, the work belongs to the committer, so a
//! client that hangs up cannot leave a message committed but unpublished.
//!
//! **A message that fails fails alone.** A transaction fails whole, every
//! position rolled back. When the database refuses a statement for the data
//! it carries (a value it cannot store, a reused idempotency key, a
//! trigger's refusal), the batch is split in halves and each half committed
//! on its own, down to the one message that the database refuses: its
//! writer gets the error, its batch-mates commit. A failure of the database
//! itself (busy, locked, connection lost, pool exhausted) is every writer's
//! answer at once, with no automatic retry: a commit whose acknowledgement
//! was lost may still have happened, and only the client's idempotency key
//! can make a retry safe.
//!
//! Two sends with one idempotency key in one batch (a client retrying while
//! its first try is queued) never meet in one transaction: the later ones
//! wait for the next round, where they find the first and answer with it.

use crate::{
    cluster::broker::Publisher,
    domain::{ConversationId, Event, Message, UserId, now_micros, rules::Authority},
    engine::feed::{Feed, OnDelivered},
    error::Error,
    metrics::Metrics,
    store::{ChangeRequest, MessageChange, NewMessage, Refused, Store},
};
use futures_util::future::BoxFuture;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The most messages committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Messages waiting for the committer before writers wait to queue.
const QUEUE: usize = 4_096;

/// What became of a message handed to the committer.
#[derive(Debug)]
pub enum Committed {
    /// Committed now, reported to the feed and the broker.
    New(Message),
    /// Committed before under the same idempotency key.
    Existing(Message),
}

struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

/// A membership change or read receipt to commit.
struct ChangeJob {
    conversation: ConversationId,
    actor: UserId,
    by: Authority,
    request: Changing,
    max_members: usize,
    reply: oneshot::Sender<Result<Option<Event>, Error>>,
}

/// What a change job changes: the conversation, or one of its messages.
pub enum Changing {
    Conversation(ChangeRequest),
    Message(MessageChange),
}

impl From<ChangeRequest> for Changing {
    fn from(request: ChangeRequest) -> Self {
        Changing::Conversation(request)
    }
}

impl From<MessageChange> for Changing {
    fn from(change: MessageChange) -> Self {
        Changing::Message(change)
    }
}

/// What the committer's queue carries.
enum Work {
    Message(Job),
    Change(ChangeJob),
}

/// The committer's queue; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Work>,
}

impl Committer {
    /// Starts the committer, tracked by `tasks`; it runs until `closing`
    /// (finishing the batch in hand) or until every handle is dropped.
    ///
    /// Where the store commits in place (SQLite: see `Store::commits_in_place`),
    /// the committer runs on a thread of its own, driving its async work
    /// there, so that a commit blocks no runtime worker: a send's message
    /// wakes that thread, which commits it and delivers it with no other
    /// hand-off. Elsewhere (PostgreSQL, every step a round trip on the
    /// runtime's sockets) it is a task.
    pub fn start(
        store: Store,
        feed: Feed,
        publisher: Publisher,
        metrics: Metrics,
        closing: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let in_place = store.commits_in_place();
        let sink = Sink {
            store,
            feed,
            publisher,
            metrics,
        };
        let committing = run(rx, sink, closing);
        if !in_place {
            tasks.spawn(committing);
            return Ok(Self { tx });
        }
        let runtime = tokio::runtime::Handle::current();
        let (ended, end) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("herald-committer".into())
            .spawn(move || {
                runtime.block_on(committing);
                drop(ended);
            })?;
        // Shutdown waits for the thread as for any task.
        tasks.spawn(async move {
            let _ = end.await;
        });
        Ok(Self { tx })
    }

    /// Commits `message`, reports it, and answers once it is persisted.
    pub async fn commit(&self, message: NewMessage) -> Result<Committed, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue(Work::Message(Job { message, reply })).await?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Commits a change to `conversation` (or one of its messages) by
    /// `actor`, reports it, and answers once it is persisted; `None` when
    /// it changed nothing.
    pub async fn change(
        &self,
        conversation: ConversationId,
        actor: UserId,
        by: Authority,
        request: Changing,
        max_members: usize,
    ) -> Result<Option<Event>, Error> {
        let (reply, answer) = oneshot::channel();
        let job = ChangeJob {
            conversation,
            actor,
            by,
            request,
            max_members,
            reply,
        };
        self.queue(Work::Change(job)).await?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    async fn queue(&self, work: Work) -> Result<(), Error> {
        // The committer only stops when the core is dropped, at shutdown.
        self.tx.send(work).await.map_err(|_| Error::ShuttingDown)
    }
}

struct Sink {
    store: Store,
    feed: Feed,
    publisher: Publisher,
    metrics: Metrics,
}

async fn run(mut rx: mpsc::Receiver<Work>, sink: Sink, closing: CancellationToken) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut queued, MAX_BATCH) => received,
            // Work still queued is dropped: its callers hear ShuttingDown.
            _ = closing.cancelled() => return,
        };
        if received == 0 {
            return;
        }
        let mut messages = Vec::new();
        for work in queued.drain(..) {
            match work {
                Work::Message(job) => messages.push(job),
                Work::Change(job) => {
                    sink.commit_messages(std::mem::take(&mut messages)).await;
                    sink.change(job).await;
                }
            }
        }
        sink.commit_messages(messages).await;
    }
}

/// Takes out of `jobs` every send whose (user, idempotency key) came earlier
/// in `jobs`, and returns them, in order.
fn defer_repeated_keys(jobs: &mut Vec<Job>) -> Vec<Job> {
    let mut seen = HashSet::new();
    let (now, later): (Vec<Job>, Vec<Job>) = std::mem::take(jobs).into_iter().partition(|job| {
        let message = &job.message;
        match &message.key {
            Some(key) => seen.insert((message.user_id.clone(), key.clone())),
            None => true,
        }
    });
    *jobs = now;
    later
}

impl Sink {
    /// Commits a round of message jobs, in batches without repeated keys.
    async fn commit_messages(&self, mut round: Vec<Job>) {
        while !round.is_empty() {
            let later = defer_repeated_keys(&mut round);
            self.commit(round).await;
            round = later;
        }
    }

    /// Commits one change alone and reports it.
    async fn change(&self, job: ChangeJob) {
        let (id, actor, now) = (&job.conversation, &job.actor, now_micros());
        let committed = match &job.request {
            Changing::Message(change) => {
                self.store
                    .commit_message_change(id, actor, job.by, change, now)
                    .await
            }
            Changing::Conversation(request) => {
                self.store
                    .commit_change(id, actor, job.by, request, job.max_members, now)
                    .await
            }
        };
        match committed {
            Ok(Some(event)) => {
                let (reply, answer) = (job.reply, Ok(Some(event.clone())));
                self.feed.committed(event.clone(), move || {
                    let _ = reply.send(answer);
                });
                self.publisher.publish(&event).await;
            }
            other => {
                if let Err(Error::Database(error)) = &other {
                    tracing::warn!(%error, "a change failed to commit");
                }
                let _ = job.reply.send(other);
            }
        }
    }

    /// Commits `jobs` together, or, when the database refuses the batch,
    /// each half on its own (see the module comment).
    fn commit(&self, mut jobs: Vec<Job>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let rows: Vec<&NewMessage> = jobs.iter().map(|job| &job.message).collect();
            let started = std::time::Instant::now();
            let refused = match self.store.insert_batch(&rows).await {
                Ok(messages) => {
                    self.metrics
                        .created(messages.len() as u64, started.elapsed().as_secs_f64());
                    return self.publish(jobs.into_iter().zip(messages).collect()).await;
                }
                Err(refused) => refused,
            };
            if refused.by_a_row() && jobs.len() > 1 {
                let second = jobs.split_off(jobs.len() / 2);
                self.commit(jobs).await;
                return self.commit(second).await;
            }
            if let [job] = jobs.as_slice()
                && matches!(refused, Refused::KeyUsed)
            {
                let original = self.original(&job.message).await;
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(original.map(Committed::Existing));
                }
                return;
            }
            if let Refused::Data(error) | Refused::Database(error) = &refused {
                tracing::warn!(%error, messages = jobs.len(), "a commit failed");
            }
            // A sender removed (on any node) before its message's position
            // is refused here, alone.
            let error = Error::from(refused);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        })
    }

    /// The message committed before under `message`'s idempotency key.
    async fn original(&self, message: &NewMessage) -> Result<Message, Error> {
        let Some(key) = &message.key else {
            return Err(Error::invalid("client_message_id could not be stored"));
        };
        self.store
            .message_by_key(&message.user_id, key)
            .await?
            .ok_or_else(|| Error::invalid("client_message_id could not be stored"))
    }

    /// Reports committed messages to the feed in position order, answers
    /// their writers, then tells the other nodes.
    async fn publish(&self, committed: Vec<(Job, Message)>) {
        let mut events = Vec::with_capacity(committed.len());
        let mut reports = Vec::with_capacity(committed.len());
        for (job, message) in committed {
            let event = Event::from(message.clone());
            let reply = job.reply;
            let on_delivered: OnDelivered = Box::new(move || {
                let _ = reply.send(Ok(Committed::New(message)));
            });
            reports.push((event.clone(), on_delivered));
            events.push(event);
        }
        self.feed.committed_here(reports).await;
        for event in &events {
            self.publisher.publish(event).await;
        }
    }
}
