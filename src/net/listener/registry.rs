//! The node's open connections on both ports: what the caps count, whom a
//! new connection may replace, and the watch that ends streams whose client
//! stopped reading.
//!
//! **What makes a connection evictable.** A connection is *busy* while a
//! request is being worked on; it is *idle* otherwise. Two kinds of
//! request never make it busy, so they can never hold a place:
//!
//! - anonymous streams (gRPC health and reflection, which need no token):
//!   at most [`ANONYMOUS_PER_CONNECTION`] per connection and (health
//!   checks, which answer at once, aside) a sixteenth of the connection
//!   cap across the node (16 to 1,024: [`anonymous_per_node`]), refused
//!   beyond that; a connection that has had nothing but
//!   an open anonymous stream by the header timeout is closed like a
//!   silent one;
//! - requests whose body has not arrived yet (a POST head with no body, a
//!   gRPC HEADERS without its DATA): stalled, and reset at the body
//!   timeout anyway.
//!
//! At the cap a new connection takes the place of the connection idle
//! longest; when none is idle, of the oldest one whose only work is
//! stalled bodies; only when every connection is busy is the new one
//! closed. One address holds at most `max_per_ip` places (trusted proxies
//! excepted), so one host cannot take the node.
//!
//! **Stuck readers.** Every response registers its [`Progress`]: when the
//! transport last took a frame, and when a stream must end whatever (its
//! token's expiry). [`Connections::watch`] closes every connection
//! with a stream the transport has not taken from for the write timeout, or
//! past its end: a client that stops reading costs its queue for at most
//! that long, and expiry acts even while a write is blocked.

use crate::metrics::counted;
use prometheus_client::{metrics::gauge::ConstGauge, registry::Registry};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

use super::ConnectionLimits;

/// Anonymous streams (health, reflection) one connection may have open.
pub const ANONYMOUS_PER_CONNECTION: usize = 4;
/// Requests of one connection handled at once, until their response's head:
/// as many as one user may have in flight (`limits::REQUESTS_PER_USER`).
/// The rest wait, parked, for their turn: a burst on one connection (up to
/// its HTTP/2 streams at once) is handled a bounded part at a time, a
/// user's calls on one connection queue instead of meeting the per-user
/// cap, and a client over its rate is paced by the tarpit's delay on the
/// whole connection instead of asking again at once.
pub const CALLS_PER_CONNECTION: usize = 64;
const _: () = assert!(CALLS_PER_CONNECTION == crate::engine::limits::REQUESTS_PER_USER);

/// Anonymous streams the node holds at once, for a cap of `max_connections`.
pub fn anonymous_per_node(max_connections: usize) -> usize {
    (max_connections / 16).clamp(16, 1_024)
}

/// Every open connection of the node, on both ports. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    pub(super) inner: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) limits: ConnectionLimits,
    started: Instant,
    open: Mutex<Open>,
    next_id: AtomicU64,
    refused: AtomicU64,
    refused_per_ip: AtomicU64,
    evicted: AtomicU64,
    stuck: AtomicU64,
    anonymous: AtomicUsize,
}

#[derive(Default)]
struct Open {
    conns: HashMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// One connection as the registry sees it.
pub(super) struct Conn {
    ip: IpAddr,
    /// Requests whose response has not finished (anonymous ones aside).
    in_flight: AtomicUsize,
    /// Of those, requests whose body has not fully arrived.
    receiving: AtomicUsize,
    /// Anonymous streams open on it.
    anonymous: AtomicUsize,
    /// Whether any request came at all.
    pub(super) served: AtomicBool,
    /// Milliseconds since `Shared::started` when it last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `Shared::started` when it was admitted.
    opened_at: u64,
    /// Cancelled to close the connection at once.
    pub(super) evict: CancellationToken,
    /// Its streaming responses, for the watch.
    streams: Mutex<Vec<Weak<Progress>>>,
    /// Turns for its requests (see [`CALLS_PER_CONNECTION`]).
    pub(super) calls: tokio::sync::Semaphore,
}

/// A connection's place in the registry; leaving it frees the place.
pub(super) struct Admitted {
    id: u64,
    pub(super) conn: Arc<Conn>,
    pub(super) connections: Connections,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        if open.conns.remove(&self.id).is_some() {
            open.release(self.conn.ip);
        }
    }
}

impl Open {
    fn release(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            inner: Arc::new(Shared {
                limits,
                started: Instant::now(),
                open: Mutex::default(),
                next_id: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                refused_per_ip: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                stuck: AtomicU64::new(0),
                anonymous: AtomicUsize::new(0),
            }),
        }
    }

    /// Open connections now.
    /// Registers what the connection registry counts.
    pub fn register_metrics(&self, registry: &mut Registry) {
        counted(
            registry,
            "connections_refused_per_ip",
            "Connections closed on arrival: their address held its share of the cap",
            self.refused_per_ip_total(),
        );
        counted(
            registry,
            "connections_stuck",
            "Connections closed because a stream's client stopped reading it (the write timeout)",
            self.stuck_total(),
        );
        counted(
            registry,
            "connections_refused",
            "Connections closed on arrival: the cap was reached and every connection was busy",
            self.refused_total(),
        );
        counted(
            registry,
            "connections_evicted",
            "Idle or stalled connections closed to make room for new ones at the cap",
            self.evicted_total(),
        );
        registry.register(
            "connections_open",
            "Open connections on both ports",
            ConstGauge::new(i64::try_from(self.open()).unwrap_or(i64::MAX)),
        );
    }

    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections closed on arrival because every place was busy.
    pub fn refused_total(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Connections closed on arrival because their address held its share.
    pub fn refused_per_ip_total(&self) -> u64 {
        self.inner.refused_per_ip.load(Ordering::Relaxed)
    }

    /// Idle or stalled connections closed to make room for new ones.
    pub fn evicted_total(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// Requests on open connections whose body has not fully arrived yet.
    pub fn awaiting_bodies(&self) -> usize {
        let open = self.lock();
        open.conns
            .values()
            .map(|conn| conn.receiving.load(Ordering::Acquire))
            .sum()
    }

    /// Connections closed because a stream's client stopped reading (or
    /// its stream outlived its token while blocked).
    pub fn stuck_total(&self) -> u64 {
        self.inner.stuck.load(Ordering::Relaxed)
    }

    /// A place for a new connection from `ip`: a free one, or the place of
    /// an idle or stalled connection; `None` when `ip` holds its share or
    /// every connection is busy.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let ip = host_of(ip);
        let limits = &self.inner.limits;
        let now = self.millis();
        let mut open = self.lock();
        let trusted = limits
            .trusted_proxies
            .iter()
            .any(|proxy| host_of(*proxy) == ip);
        let held = open.per_ip.get(&ip).copied().unwrap_or(0);
        if limits.max_per_ip > 0 && !trusted && held >= limits.max_per_ip {
            self.inner.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if open.conns.len() >= limits.max_connections.max(1) {
            let Some(victim) = evictable(&open.conns) else {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            if let Some(conn) = open.conns.remove(&victim) {
                conn.evict.cancel();
                open.release(conn.ip);
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            ip,
            in_flight: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            anonymous: AtomicUsize::new(0),
            served: false.into(),
            idle_since: AtomicU64::new(now),
            opened_at: now,
            evict: CancellationToken::new(),
            streams: Mutex::default(),
            calls: tokio::sync::Semaphore::new(CALLS_PER_CONNECTION),
        });
        open.conns.insert(id, conn.clone());
        *open.per_ip.entry(ip).or_default() += 1;
        Some(Admitted {
            id,
            conn,
            connections: self.clone(),
        })
    }

    /// Closes, every so often until `stop`, each connection with a stream
    /// whose client stopped reading for the write timeout, or that outlived
    /// its end (see the module comment).
    pub fn watch(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let connections = self.clone();
        let every = (self.inner.limits.write_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => connections.close_stuck(),
                }
            }
        })
    }

    fn close_stuck(&self) {
        let now = self.millis();
        let patience = self.inner.limits.write_timeout.as_millis() as u64;
        let conns: Vec<Arc<Conn>> = self.lock().conns.values().cloned().collect();
        for conn in conns {
            let mut streams = lock(&conn.streams);
            streams.retain(|stream| stream.strong_count() > 0);
            let stuck = streams
                .iter()
                .filter_map(Weak::upgrade)
                .any(|stream| stream.is_stuck(now, patience));
            drop(streams);
            if stuck && !conn.evict.is_cancelled() {
                tracing::debug!("closing a connection whose stream stopped being read");
                self.inner.stuck.fetch_add(1, Ordering::Relaxed);
                conn.evict.cancel();
            }
        }
    }

    /// A stream's progress, watched on `conn` until dropped.
    pub(super) fn progress(
        &self,
        conn: &Conn,
        ends_at: Option<tokio::time::Instant>,
    ) -> Arc<Progress> {
        let ends_at = ends_at.map_or(u64::MAX, |at| {
            let from_now = at.saturating_duration_since(tokio::time::Instant::now());
            self.millis().saturating_add(from_now.as_millis() as u64)
        });
        let progress = Arc::new(Progress {
            connections: self.clone(),
            blocked_since: AtomicU64::new(0),
            ends_at,
        });
        let mut streams = lock(&conn.streams);
        // Ended streams are swept here too, whenever the list doubles, so a
        // connection making many calls between two watches stays small.
        if streams.len() >= 16 && streams.len().is_power_of_two() {
            streams.retain(|stream| stream.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&progress));
        drop(streams);
        progress
    }

    /// Counts an anonymous request on `conn`, unless the connection holds
    /// its share already, or (for a stream, `of_node`) the node does.
    pub(super) fn anonymous(&self, conn: &Arc<Conn>, of_node: bool) -> Option<Anonymous> {
        // Checked, then counted: calls on one connection come one at a
        // time, and across the node a race can only overshoot by a few.
        let node = &self.inner.anonymous;
        if conn.anonymous.load(Ordering::Acquire) >= ANONYMOUS_PER_CONNECTION
            || (of_node
                && node.load(Ordering::Acquire)
                    >= anonymous_per_node(self.inner.limits.max_connections))
        {
            return None;
        }
        conn.anonymous.fetch_add(1, Ordering::AcqRel);
        if of_node {
            node.fetch_add(1, Ordering::AcqRel);
        }
        Some(Anonymous {
            conn: conn.clone(),
            connections: self.clone(),
            of_node,
        })
    }

    pub(super) fn millis(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        lock(&self.inner.open)
    }
}

/// The address a connection counts against: an IPv4 address as itself
/// (also when a dual-stack listener sees it as `::ffff:a.b.c.d`), an IPv6
/// address by its /64, which one host is usually given whole.
fn host_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// The connection to give up for a new one: the one idle longest, else the
/// oldest whose every request is still waiting for its body.
fn evictable(conns: &HashMap<u64, Arc<Conn>>) -> Option<u64> {
    let idle = conns
        .iter()
        .filter(|(_, conn)| conn.in_flight.load(Ordering::Acquire) == 0)
        .min_by_key(|(_, conn)| conn.idle_since.load(Ordering::Relaxed));
    if let Some((id, _)) = idle {
        return Some(*id);
    }
    conns
        .iter()
        .filter(|(_, conn)| {
            conn.in_flight.load(Ordering::Acquire) == conn.receiving.load(Ordering::Acquire)
        })
        .min_by_key(|(_, conn)| conn.opened_at)
        .map(|(id, _)| *id)
}

/// A plain lock over maps and lists: a panicking holder cannot leave them
/// half-updated, so a poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request in flight on a connection, until dropped.
pub(super) struct Busy {
    conn: Arc<Conn>,
    connections: Connections,
}

impl Busy {
    pub(super) fn on(conn: &Arc<Conn>, connections: &Connections) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.served.store(true, Ordering::Release);
        Self {
            conn: conn.clone(),
            connections: connections.clone(),
        }
    }

    /// Counts the request as waiting for its body until the returned guard
    /// is dropped (the body arrived, or was dropped).
    pub(super) fn receiving(&self) -> Receiving {
        self.conn.receiving.fetch_add(1, Ordering::AcqRel);
        Receiving {
            conn: self.conn.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.connections.millis();
            self.conn.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

/// A request still waiting for its body.
pub(super) struct Receiving {
    conn: Arc<Conn>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.conn.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An anonymous request's place, until dropped.
pub(super) struct Anonymous {
    conn: Arc<Conn>,
    connections: Connections,
    /// Whether it holds one of the node's places too.
    of_node: bool,
}

impl Drop for Anonymous {
    fn drop(&mut self) {
        self.conn.anonymous.fetch_sub(1, Ordering::AcqRel);
        if self.of_node {
            let node = &self.connections.inner.anonymous;
            node.fetch_sub(1, Ordering::AcqRel);
        }
        self.conn.served.store(true, Ordering::Release);
    }
}

/// One streaming response's progress, as the watch reads it.
pub(super) struct Progress {
    connections: Connections,
    /// Milliseconds (the registry's clock, plus one) since the transport
    /// was handed a frame and has not asked for the next; 0 while it has.
    blocked_since: AtomicU64,
    /// When the stream must end whatever, in the registry's milliseconds.
    ends_at: u64,
}

impl Progress {
    /// A frame went to the transport: it is blocked until it asks again.
    pub(super) fn handed(&self) {
        let now = self.connections.millis() + 1;
        self.blocked_since.store(now, Ordering::Relaxed);
    }

    /// The transport asks for more: it took what it was handed.
    pub(super) fn taken(&self) {
        self.blocked_since.store(0, Ordering::Relaxed);
    }

    fn is_stuck(&self, now: u64, patience: u64) -> bool {
        let since = self.blocked_since.load(Ordering::Relaxed);
        let blocked_too_long = since != 0 && now.saturating_sub(since - 1) >= patience;
        blocked_too_long || (since != 0 && now >= self.ends_at)
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn an_address_counts_as_its_host() {
        let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(host_of(mapped), v4, "a dual-stack listener's IPv4 peer");
        let one: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let elsewhere: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host_of(one), host_of(other), "one /64");
        assert_ne!(host_of(one), host_of(elsewhere));
    }
}
