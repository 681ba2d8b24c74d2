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
//! A batch fails whole, every position rolled back. When it failed on an
//! idempotency key (two retries of one send in flight at once), its messages
//! are committed one by one so each gets its own answer. Any other failure is
//! every writer's answer, with no automatic retry: a commit whose
//! acknowledgement was lost may still have happened, and only the client's
//! idempotency key can make a retry safe.

use crate::{
    broker::Publisher,
    domain::{Message, UserId},
    feed::Feed,
    hub::Delivery,
    metrics::Metrics,
    store::{NewMessage, Store, is_unique_violation},
};
use std::sync::Arc;
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
    reply: oneshot::Sender<Result<Committed, sqlx::Error>>,
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
    ) -> Result<Committed, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            message,
            recipients,
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
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
        sink.commit(std::mem::take(&mut jobs)).await;
    }
}

impl Sink {
    async fn commit(&self, jobs: Vec<Job>) {
        let rows: Vec<&NewMessage> = jobs.iter().map(|job| &job.message).collect();
        let started = std::time::Instant::now();
        match self.store.insert_batch(&rows).await {
            Ok(messages) => {
                self.metrics
                    .created(messages.len() as u64, started.elapsed().as_secs_f64());
                self.publish(jobs.into_iter().zip(messages).collect()).await
            }
            Err(error) if is_unique_violation(&error) => {
                for job in jobs {
                    self.commit_alone(job).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, messages = jobs.len(), "a commit failed");
                for job in jobs {
                    let _ = job.reply.send(Err(sqlx::Error::Protocol(format!(
                        "commit failed: {error}"
                    ))));
                }
            }
        }
    }

    /// Commits one message of a batch that failed on an idempotency key.
    async fn commit_alone(&self, job: Job) {
        match self.store.insert_batch(&[&job.message]).await {
            Ok(mut messages) => match messages.pop() {
                Some(message) => {
                    self.metrics.created(1, 0.0);
                    self.publish(vec![(job, message)]).await
                }
                None => {
                    let _ = job.reply.send(Err(sqlx::Error::RowNotFound));
                }
            },
            Err(error) if is_unique_violation(&error) => {
                let key = job.message.key.as_deref().unwrap_or_default();
                let original = self.store.message_by_key(&job.message.user_id, key).await;
                let answer = match original {
                    Ok(Some(original)) => Ok(Committed::Existing(original)),
                    Ok(None) => Err(error),
                    Err(lookup) => Err(lookup),
                };
                let _ = job.reply.send(answer);
            }
            Err(error) => {
                let _ = job.reply.send(Err(error));
            }
        }
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
            self.publisher.published(&delivery).await;
        }
    }
}
