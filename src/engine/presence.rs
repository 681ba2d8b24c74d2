//! Presence: a user is online while at least one stream of theirs (SSE or
//! gRPC, messages or events) is open on any node.
//!
//! Each node counts its own open streams per user. When a user's count
//! here goes from 0 to 1 the node tells the others ("online here"); when it
//! drops to 0 it waits the grace period, and if nothing reopened, tells them
//! "no longer here". Every node also announces, each interval, every user it
//! holds online, and forgets a node's claims 2.5 intervals after it last
//! heard them: a node that died without a word takes its users offline
//! elsewhere within that time. A user is online for a node while it counts
//! a stream of theirs or believes another node does.
//!
//! Each node tells its own subscribers when a user's presence changes:
//! the users who share a conversation with them (one query per batch of
//! changes, O(memberships of the changed users)), on their event streams.
//! Nothing is written to the database and nothing is replayed; the
//! announcements ride the broker's signal channel.

use crate::{
    cluster::broker::Publisher,
    domain::{Body, ConversationId, Event, UserId, now_micros},
    engine::feed::sleep_until,
    engine::hub::{Delivery, Hub},
    store::Store,
};
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long, in the announcing node's intervals, its claims last without
/// being repeated.
const CLAIMS_LAST: f64 = 2.5;
/// How often lapsed claims are looked for (at most).
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// Offline users whose last-seen time is kept, before the oldest are
/// forgotten.
const KEEP_OFFLINE: usize = 100_000;

/// One user's presence as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub online: bool,
    /// When they came online (while online) or went offline.
    pub last_seen_micros: i64,
}

/// The presence tracker; cheap to clone.
#[derive(Clone)]
pub struct Presence {
    state: Arc<Mutex<State>>,
    tx: mpsc::UnboundedSender<Report>,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, User>,
    /// Grace deadlines, soonest first; an entry whose user reopened (or
    /// left again later) no longer matches their `leaving_at` and is
    /// skipped when it comes up.
    leaving: BinaryHeap<Reverse<(Instant, UserId)>>,
}

#[derive(Default)]
struct User {
    /// Streams open on this node.
    here: usize,
    /// Other nodes that hold the user online, until when their claim lasts.
    elsewhere: HashMap<Arc<str>, Instant>,
    /// While the grace runs after the last stream here closed.
    leaving_at: Option<Instant>,
    seen: Option<Seen>,
}

impl User {
    fn online(&self) -> bool {
        self.here > 0 || self.leaving_at.is_some() || !self.elsewhere.is_empty()
    }
}

enum Report {
    Opened(UserId),
    Closed(UserId),
    Remote {
        origin: Arc<str>,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        interval: Option<Duration>,
    },
}

/// A stream's claim that its user is here; dropping it closes the claim.
pub struct Here {
    user: UserId,
    tx: mpsc::UnboundedSender<Report>,
}

impl Drop for Here {
    fn drop(&mut self) {
        let _ = self.tx.send(Report::Closed(self.user.clone()));
    }
}

/// How presence is timed.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub grace: Duration,
    pub interval: Duration,
}

impl Presence {
    /// Starts the tracker's task, which runs until `shutdown`, and then
    /// tells the other nodes this node holds nobody.
    pub fn start(
        store: Store,
        hub: Hub,
        publisher: Publisher,
        timing: Timing,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State::default()));
        let tracker = Tracker {
            state: state.clone(),
            store,
            hub,
            publisher,
            timing,
        };
        tasks.spawn(tracker.run(rx, shutdown));
        Self { state, tx }
    }

    /// A stream of `user` opened here; it counts until the claim is dropped.
    pub fn here(&self, user: &UserId) -> Here {
        let _ = self.tx.send(Report::Opened(user.clone()));
        Here {
            user: user.clone(),
            tx: self.tx.clone(),
        }
    }

    /// Another node's announcement; its claims last 2.5 of *its*
    /// `interval` (its own pace, whatever this node's), or of this node's
    /// when it did not say.
    pub fn remote(
        &self,
        origin: Arc<str>,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        interval: Option<Duration>,
    ) {
        let _ = self.tx.send(Report::Remote {
            origin,
            online,
            offline,
            interval,
        });
    }

    /// What this node knows of each of `users`; `None` for a user it has
    /// never seen online.
    pub fn of(&self, users: &[UserId]) -> Vec<(UserId, Option<Seen>)> {
        let state = self.lock();
        users
            .iter()
            .map(|user| (user.clone(), state.users.get(user).and_then(|u| u.seen)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Tracker {
    state: Arc<Mutex<State>>,
    store: Store,
    hub: Hub,
    publisher: Publisher,
    timing: Timing,
}

/// What one round of the tracker has to tell.
#[derive(Default)]
struct Round {
    /// Users whose presence changed, as every subscriber should now see it.
    changed: Vec<(UserId, Seen)>,
    /// Users this node now holds, or no longer holds, to tell other nodes.
    arrived: Vec<UserId>,
    left: Vec<UserId>,
}

impl Tracker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Report>, shutdown: CancellationToken) {
        let mut announce = tokio::time::interval(self.timing.interval);
        // Claims are checked every second (or interval, if shorter), not
        // every interval: a dead node's users go offline within a second of
        // their claims lapsing, 15 to 26 s after it died at the defaults.
        let mut expire = tokio::time::interval(self.timing.interval.min(EXPIRE_EVERY));
        loop {
            let next_leave = self.next_leave();
            let mut round = Round::default();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                report = rx.recv() => {
                    let Some(report) = report else { break };
                    self.take(report, &mut round);
                    while let Ok(report) = rx.try_recv() {
                        self.take(report, &mut round);
                    }
                }
                _ = sleep_until(next_leave), if next_leave.is_some() => self.leave_due(&mut round),
                _ = announce.tick() => round.arrived = self.held_here(),
                _ = expire.tick() => self.expire_claims(&mut round),
            }
            self.tell(round).await;
        }
        // Going away on purpose: the others need not wait for silence.
        let held = self.held_here();
        self.publisher
            .announce(&[], &held, self.timing.interval)
            .await;
    }

    fn take(&self, report: Report, round: &mut Round) {
        let mut state = self.lock();
        let now = Instant::now();
        match report {
            Report::Opened(user) => {
                let entry = state.users.entry(user.clone()).or_default();
                let was_online = entry.online();
                entry.here += 1;
                entry.leaving_at = None;
                if entry.here == 1 {
                    round.arrived.push(user.clone());
                }
                if !was_online {
                    round.changed.push((user, came_online(entry)));
                }
            }
            Report::Closed(user) => {
                if let Some(entry) = state.users.get_mut(&user) {
                    entry.here = entry.here.saturating_sub(1);
                    if entry.here == 0 {
                        let at = now + self.timing.grace;
                        entry.leaving_at = Some(at);
                        state.leaving.push(Reverse((at, user)));
                    }
                }
            }
            Report::Remote {
                origin,
                online,
                offline,
                interval,
            } => {
                let interval = interval.unwrap_or(self.timing.interval);
                let until = now + interval.mul_f64(CLAIMS_LAST);
                for user in online {
                    let entry = state.users.entry(user.clone()).or_default();
                    let was_online = entry.online();
                    entry.elsewhere.insert(origin.clone(), until);
                    if !was_online {
                        round.changed.push((user, came_online(entry)));
                    }
                }
                for user in offline {
                    if let Some(entry) = state.users.get_mut(&user) {
                        entry.elsewhere.remove(&origin);
                        if let Some(seen) = went_offline(entry) {
                            round.changed.push((user, seen));
                        }
                    }
                }
            }
        }
    }

    /// Ends the grace of every user whose last stream here closed long
    /// enough ago without another opening.
    fn leave_due(&self, round: &mut Round) {
        let mut state = self.lock();
        let now = Instant::now();
        while let Some(Reverse((at, _))) = state.leaving.peek()
            && *at <= now
        {
            let Some(Reverse((at, user))) = state.leaving.pop() else {
                break;
            };
            let Some(entry) = state.users.get_mut(&user) else {
                continue;
            };
            if entry.leaving_at != Some(at) {
                continue; // reopened since, or left again later
            }
            entry.leaving_at = None;
            round.left.push(user.clone());
            if let Some(seen) = went_offline(entry) {
                round.changed.push((user, seen));
            }
        }
    }

    /// Forgets the claims of nodes that stopped repeating them, and the
    /// oldest offline users past [`KEEP_OFFLINE`].
    fn expire_claims(&self, round: &mut Round) {
        let mut state = self.lock();
        let now = Instant::now();
        for (user, entry) in state.users.iter_mut() {
            let before = entry.elsewhere.len();
            entry.elsewhere.retain(|_, until| *until > now);
            if entry.elsewhere.len() < before
                && let Some(seen) = went_offline(entry)
            {
                round.changed.push((user.clone(), seen));
            }
        }
        let offline = state.users.values().filter(|user| !user.online()).count();
        if offline > KEEP_OFFLINE {
            let mut by_age: Vec<(i64, UserId)> = state
                .users
                .iter()
                .filter(|(_, user)| !user.online())
                .map(|(id, user)| (user.seen.map_or(0, |s| s.last_seen_micros), id.clone()))
                .collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(offline - KEEP_OFFLINE) {
                state.users.remove(&id);
            }
        }
    }

    /// Users with a stream open here.
    fn held_here(&self) -> Vec<UserId> {
        let state = self.lock();
        state
            .users
            .iter()
            .filter(|(_, user)| user.here > 0 || user.leaving_at.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn next_leave(&self) -> Option<Instant> {
        let state = self.lock();
        state.leaving.peek().map(|Reverse((at, _))| *at)
    }

    /// Tells other nodes what changed here, and this node's subscribers who
    /// share a conversation with a changed user.
    async fn tell(&self, round: Round) {
        if !round.arrived.is_empty() || !round.left.is_empty() {
            self.publisher
                .announce(&round.arrived, &round.left, self.timing.interval)
                .await;
        }
        if round.changed.is_empty() {
            return;
        }
        // The last word on each user in this round is the one that counts.
        let changed: BTreeMap<UserId, Seen> = round.changed.into_iter().collect();
        let users: Vec<UserId> = changed.keys().cloned().collect();
        let sharers = match self.store.sharers(&users).await {
            Ok(sharers) => sharers,
            Err(error) => {
                // Presence is best effort: a missed change is a stale dot,
                // which the next change or a GetPresence corrects.
                tracing::warn!(%error, "presence changes were not told");
                return;
            }
        };
        for (user, seen) in changed {
            let Some(recipients) = sharers.get(&user) else {
                continue;
            };
            let body = Body::Presence {
                online: seen.online,
                last_seen_micros: seen.last_seen_micros,
            };
            let event = Event::signal(ConversationId::none(), user, body);
            self.hub
                .deliver(Delivery::new(event, recipients.clone().into()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn came_online(user: &mut User) -> Seen {
    let seen = Seen {
        online: true,
        last_seen_micros: now_micros(),
    };
    user.seen = Some(seen);
    seen
}

/// Marks `user` offline if nothing holds them online any more; the change,
/// if there is one.
fn went_offline(user: &mut User) -> Option<Seen> {
    let was_online = user.seen.is_some_and(|seen| seen.online);
    if user.online() || !was_online {
        return None;
    }
    let seen = Seen {
        online: false,
        last_seen_micros: now_micros(),
    };
    user.seen = Some(seen);
    Some(seen)
}
