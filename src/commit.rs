//! Group commit: the one place that persists messages and then publishes them.
//!
//! Writers hand their message to the committer task and wait for its answer.
//! The task takes whatever is queued (up to [`MAX_BATCH`]) and commits it in
//! one transaction, so under load many messages share one commit and one
//! wait for the disk, while a lone message waits for nobody. Only after the
//! commit are the messages reported to the feed (in position order), the
//! writers answered, and the broker told: acknowledged means persisted. Once
//! queued, the work belongs to the task, so a client that hangs up cannot
//! leave a message committed but unpublished.
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
    broker::Publisher,
    domain::{Message, UserId},
    error::Error,
    feed::Feed,
    hub::Delivery,
    metrics::Metrics,
    store::{NewMessage, Store, is_unique_violation, refused_for_its_data},
};
use futures_util::future::BoxFuture;
use std::{collections::HashSet, sync::Arc};
use tokio::sync::{mpsc, oneshot};

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
    recipients: Arc<[UserId]>,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

/// The committer's queue; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the committer task; it runs until every handle is dropped.
    pub fn start(store: Store, feed: Feed, publisher: Publisher, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = Sink {
            store,
            feed,
            publisher,
            metrics,
        };
        tokio::spawn(run(rx, sink));
        Self { tx }
    }

    /// Commits `message`, reports it, and answers once it is persisted.
    pub async fn commit(
        &self,
        message: NewMessage,
        recipients: Arc<[UserId]>,
    ) -> Result<Committed, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            message,
            recipients,
            reply,
        };
        // The task only stops when the core is dropped, at shutdown.
        self.tx.send(job).await.map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

struct Sink {
    store: Store,
    feed: Feed,
    publisher: Publisher,
    metrics: Metrics,
}

async fn run(mut rx: mpsc::Receiver<Job>, sink: Sink) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let mut round = std::mem::take(&mut jobs);
        while !round.is_empty() {
            let later = defer_repeated_keys(&mut round);
            sink.commit(round).await;
            round = later;
        }
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
    /// Commits `jobs` together, or, when the database refuses the batch,
    /// each half on its own (see the module comment).
    fn commit(&self, mut jobs: Vec<Job>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let rows: Vec<&NewMessage> = jobs.iter().map(|job| &job.message).collect();
            let started = std::time::Instant::now();
            let error = match self.store.insert_batch(&rows).await {
                Ok(messages) => {
                    self.metrics
                        .created(messages.len() as u64, started.elapsed().as_secs_f64());
                    return self.publish(jobs.into_iter().zip(messages).collect()).await;
                }
                Err(error) => error,
            };
            if refused_for_its_data(&error) && jobs.len() > 1 {
                let second = jobs.split_off(jobs.len() / 2);
                self.commit(jobs).await;
                return self.commit(second).await;
            }
            if let [job] = jobs.as_slice()
                && is_unique_violation(&error)
            {
                let original = self.original(&job.message).await;
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(original.map(Committed::Existing));
                }
                return;
            }
            tracing::warn!(%error, messages = jobs.len(), "a commit failed");
            let error = Error::from(error);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        })
    }

    /// The message committed before under `message`'s idempotency key.
    async fn original(&self, message: &NewMessage) -> Result<Message, Error> {
        let key = message.key.as_deref().unwrap_or_default();
        self.store
            .message_by_key(&message.user_id, key)
            .await?
            .ok_or_else(|| Error::invalid("client_message_id could not be stored"))
    }

    /// Reports committed messages to the feed in position order, answers
    /// their writers, then tells the other nodes.
    async fn publish(&self, committed: Vec<(Job, Message)>) {
        let mut deliveries = Vec::with_capacity(committed.len());
        for (job, message) in committed {
            let delivery = Delivery::new(message.clone(), job.recipients);
            self.feed.committed(delivery.clone());
            let _ = job.reply.send(Ok(Committed::New(message)));
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            self.publisher.publish(&delivery).await;
        }
    }
}
