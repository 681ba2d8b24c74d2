//! The seal on everything nodes tell each other through a broker: NATS
//! messages and signals, and PostgreSQL signals. Neither broker is trusted
//! (anything that can publish on the subject, or any database role that can
//! connect, can send; anything that can subscribe or LISTEN can read), so:
//!
//! - **Nobody else can read it**: the payload is encrypted with
//!   ChaCha20-Poly1305 (ring's AEAD, already in the tree under rustls and
//!   async-nats), under a key of the sending node's own derived from the
//!   cluster key and the node's name. A NATS subscriber learns neither the
//!   messages nor who is online.
//! - **Nobody else can write it**: the AEAD's tag fails for anything not
//!   sealed with the cluster key.
//! - **Nothing can be played again**: the header carries the node's name,
//!   a sequence number per node and channel, and the time of sealing, all
//!   authenticated. A receiver refuses a payload sealed more than
//!   [`WINDOW`] from its own clock, or whose sequence it has accepted
//!   from that node on that channel already, or that is more than
//!   [`REORDER`] behind the newest it accepted (a node's signals are
//!   sealed by several tasks and may reach the broker a little out of
//!   order: the IPsec anti-replay window). Nodes' clocks must agree within
//!   the window (NTP).
//!
//! Each node's key is its own, so the sequence number alone is a nonce
//! that never repeats under one key: no random nonces to collide.
//!
//! Layout: `version (1) | origin (32 hex) | sequence (8) | sealed at, Unix
//! µs (8) | ciphertext | tag (16)`, the first four the AEAD's associated
//! data with the subject or channel name.

use super::broker::ClusterKey;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// How far from the receiver's clock a sealed payload may be.
pub const WINDOW: Duration = Duration::from_secs(30);

const VERSION: u8 = 2;
const ORIGIN_BYTES: usize = 32;
const HEADER: usize = 1 + ORIGIN_BYTES + 8 + 8;
const TAG: usize = 16;
/// Nodes whose last sequence numbers are kept before idle ones are forgotten.
const KEEP_ORIGINS: usize = 1_024;
/// How far behind the newest accepted sequence a payload may arrive.
pub const REORDER: u64 = 64;

/// What a payload travels on: each has its own sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Events = 0,
    Signals = 1,
}

/// Seals what this node sends; cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    key: Arc<LessSafeKey>,
    origin: Arc<str>,
    next: Arc<[AtomicU64; 2]>,
}

/// Why a payload was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not sealed with the cluster key, or not a sealed payload at all.
    Forged,
    /// Sealed, but too old or too new, or not after the last one accepted
    /// from its node: played again.
    Replayed,
    /// Sealed by this node, on a broker that hands a node its own
    /// payloads (PostgreSQL's LISTEN): not news.
    Own,
}

impl Sealer {
    /// A sealer for the node named `origin` (32 hex digits).
    pub fn new(cluster: &ClusterKey, origin: Arc<str>) -> Self {
        Self {
            key: Arc::new(node_key(cluster, &origin)),
            origin,
            next: Arc::new([AtomicU64::new(1), AtomicU64::new(1)]),
        }
    }

    /// This node's name.
    pub fn origin(&self) -> &Arc<str> {
        &self.origin
    }

    /// `message` sealed for `channel`, bound to `subject`.
    pub fn seal(&self, channel: Channel, subject: &str, message: &[u8]) -> Vec<u8> {
        let sequence = self.next[channel as usize].fetch_add(1, Ordering::Relaxed);
        let mut sealed = Vec::with_capacity(HEADER + message.len() + TAG);
        sealed.push(VERSION);
        sealed.extend_from_slice(&origin_bytes(&self.origin));
        sealed.extend_from_slice(&sequence.to_be_bytes());
        sealed.extend_from_slice(&crate::domain::now_micros().to_be_bytes());
        let mut body = message.to_vec();
        let aad = associated(subject, &sealed);
        // Sealing fails only for a message past ChaCha20's 256 GiB.
        let sealing = self
            .key
            .seal_in_place_append_tag(nonce(sequence), Aad::from(aad), &mut body);
        if sealing.is_err() {
            return Vec::new();
        }
        sealed.extend_from_slice(&body);
        sealed
    }
}

/// Opens what other nodes sealed; cheap to clone.
#[derive(Clone)]
pub struct Opener {
    cluster: ClusterKey,
    /// This node's name.
    me: Arc<str>,
    /// Whether the broker hands this node its own payloads (PostgreSQL);
    /// where it does not (NATS, with no echo), one of its own arriving
    /// was played back by someone else.
    echoes: bool,
    /// The last sequence accepted per node and channel.
    last: Arc<Mutex<Sequences>>,
}

/// What was accepted from each node on each channel.
type Sequences = HashMap<(Arc<str>, Channel), Accepted>;

/// The sequences accepted from one node on one channel: the newest, and
/// which of the [`REORDER`] before it (bit `i` is `newest - i`).
#[derive(Clone, Copy, Debug)]
struct Accepted {
    newest: u64,
    seen: u64,
    /// When the newest was sealed (Unix µs).
    sealed_at: i64,
}

impl Accepted {
    fn first(sequence: u64, sealed_at: i64) -> Self {
        Self {
            newest: sequence,
            seen: 1,
            sealed_at,
        }
    }

    /// Takes `sequence` if it is new; false if it was accepted before or
    /// is too far behind to tell.
    fn take(&mut self, sequence: u64, sealed_at: i64) -> bool {
        if sequence > self.newest {
            let shift = sequence - self.newest;
            self.seen = if shift >= REORDER {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.newest = sequence;
            self.sealed_at = self.sealed_at.max(sealed_at);
            return true;
        }
        let behind = self.newest - sequence;
        if behind >= REORDER || self.seen & (1 << behind) != 0 {
            return false;
        }
        self.seen |= 1 << behind;
        true
    }
}

/// A payload that opened: who sealed it, and what it says.
pub struct Opened {
    pub origin: Arc<str>,
    pub message: Vec<u8>,
}

impl Opener {
    pub fn new(cluster: &ClusterKey, me: Arc<str>, echoes: bool) -> Self {
        Self {
            cluster: cluster.clone(),
            me,
            echoes,
            last: Arc::default(),
        }
    }

    /// The message in `sealed`, if a node of this deployment sealed it for
    /// `channel` and `subject`, within the window and in sequence.
    pub fn open(&self, channel: Channel, subject: &str, sealed: &[u8]) -> Result<Opened, Refused> {
        if sealed.len() < HEADER + TAG || sealed[0] != VERSION {
            return Err(Refused::Forged);
        }
        let (header, body) = sealed.split_at(HEADER);
        let origin =
            std::str::from_utf8(&header[1..1 + ORIGIN_BYTES]).map_err(|_| Refused::Forged)?;
        let sequence = u64::from_be_bytes(header[33..41].try_into().map_err(|_| Refused::Forged)?);
        let sealed_at = i64::from_be_bytes(header[41..49].try_into().map_err(|_| Refused::Forged)?);
        let key = node_key(&self.cluster, origin);
        let mut body = body.to_vec();
        let aad = associated(subject, header);
        let opened = key
            .open_in_place(nonce(sequence), Aad::from(aad), &mut body)
            .map_err(|_| Refused::Forged)?;
        let length = opened.len();
        body.truncate(length);
        let now = crate::domain::now_micros();
        let window = WINDOW.as_micros() as i64;
        if (now - sealed_at).abs() > window {
            return Err(Refused::Replayed);
        }
        let own = origin == &*self.me;
        if own && !self.echoes {
            return Err(Refused::Replayed);
        }
        let origin: Arc<str> = origin.into();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = (origin.clone(), channel);
        if let Some(accepted) = last.get_mut(&entry) {
            if !accepted.take(sequence, sealed_at) {
                return Err(Refused::Replayed);
            }
        } else {
            if last.len() >= KEEP_ORIGINS {
                // A node whose newest payload was sealed longer ago than the
                // window can replay nothing that would pass the time check:
                // forget it.
                last.retain(|_, accepted| now - accepted.sealed_at <= window);
            }
            last.insert(entry, Accepted::first(sequence, sealed_at));
        }
        // Its own payload, once, is the broker's echo; a second is a replay
        // (refused above by its sequence).
        if own {
            return Err(Refused::Own);
        }
        Ok(Opened {
            origin,
            message: body,
        })
    }
}

/// The node's own key: HMAC-SHA256 of its name under the cluster key.
fn node_key(cluster: &ClusterKey, origin: &str) -> LessSafeKey {
    let derived = cluster.derive(b"herald seal v2", origin.as_bytes());
    // A 32-byte key always fits ChaCha20-Poly1305.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &derived).expect("a 32-byte key"))
}

/// The nonce for `sequence`: unique under a node's key, since the key is
/// the node's own and its sequence only grows.
fn nonce(sequence: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&sequence.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The associated data: the subject or channel, then the header.
fn associated(subject: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(subject.len() + 1 + header.len());
    aad.extend_from_slice(subject.as_bytes());
    aad.push(b'\n');
    aad.extend_from_slice(header);
    aad
}

/// A node's name as exactly [`ORIGIN_BYTES`] bytes.
fn origin_bytes(origin: &str) -> [u8; ORIGIN_BYTES] {
    let mut bytes = [b'0'; ORIGIN_BYTES];
    let given = origin.as_bytes();
    let n = given.len().min(ORIGIN_BYTES);
    bytes[..n].copy_from_slice(&given[..n]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let key = ClusterKey::new(&[7u8; 32]);
        let origin: Arc<str> = crate::domain::random_hex().into();
        let receiver: Arc<str> = crate::domain::random_hex().into();
        (
            Sealer::new(&key, origin),
            Opener::new(&key, receiver, false),
        )
    }

    #[test]
    fn what_one_node_seals_another_opens_and_nobody_reads_on_the_way() {
        let (sealer, opener) = pair();
        let sealed = sealer.seal(Channel::Signals, "s", b"alice is online");
        assert!(!sealed.windows(5).any(|w| w == b"alice"), "encrypted");
        let opened = opener.open(Channel::Signals, "s", &sealed).unwrap();
        assert_eq!(opened.message, b"alice is online");
        assert_eq!(&opened.origin, sealer.origin());
    }

    #[test]
    fn another_key_another_subject_or_a_flipped_bit_is_forged() {
        let (sealer, opener) = pair();
        let sealed = sealer.seal(Channel::Events, "a", b"hi");
        let stranger = Opener::new(&ClusterKey::new(&[8u8; 32]), "x".into(), false);
        assert_eq!(
            stranger.open(Channel::Events, "a", &sealed).err(),
            Some(Refused::Forged)
        );
        assert_eq!(
            opener.open(Channel::Events, "b", &sealed).err(),
            Some(Refused::Forged)
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            opener.open(Channel::Events, "a", &flipped).err(),
            Some(Refused::Forged)
        );
        assert_eq!(
            opener.open(Channel::Events, "a", b"plain").err(),
            Some(Refused::Forged)
        );
    }

    #[test]
    fn a_payload_played_again_is_refused_and_a_little_disorder_is_not() {
        let (sealer, opener) = pair();
        let first = sealer.seal(Channel::Signals, "s", b"1");
        let second = sealer.seal(Channel::Signals, "s", b"2");
        assert!(opener.open(Channel::Signals, "s", &second).is_ok());
        assert!(
            opener.open(Channel::Signals, "s", &first).is_ok(),
            "late, not replayed"
        );
        for again in [&first, &second] {
            let opened = opener.open(Channel::Signals, "s", again);
            assert_eq!(opened.err(), Some(Refused::Replayed));
        }
        // Too far behind the newest to tell: refused.
        let old = sealer.seal(Channel::Signals, "s", b"3");
        let mut newest = Vec::new();
        for _ in 0..REORDER {
            newest = sealer.seal(Channel::Signals, "s", b"n");
        }
        assert!(opener.open(Channel::Signals, "s", &newest).is_ok());
        let opened = opener.open(Channel::Signals, "s", &old);
        assert_eq!(opened.err(), Some(Refused::Replayed));
        // Each channel has its own sequence.
        let event = sealer.seal(Channel::Events, "s", b"3");
        assert!(opener.open(Channel::Events, "s", &event).is_ok());
    }

    #[test]
    fn a_nodes_own_payload_is_news_only_where_the_broker_echoes() {
        let key = ClusterKey::new(&[7u8; 32]);
        let me: Arc<str> = crate::domain::random_hex().into();
        let sealer = Sealer::new(&key, me.clone());
        let sealed = sealer.seal(Channel::Signals, "s", b"mine");
        let listening = Opener::new(&key, me.clone(), true);
        assert_eq!(
            listening.open(Channel::Signals, "s", &sealed).err(),
            Some(Refused::Own)
        );
        let no_echo = Opener::new(&key, me, false);
        assert_eq!(
            no_echo.open(Channel::Signals, "s", &sealed).err(),
            Some(Refused::Replayed)
        );
    }

    #[test]
    fn a_payload_sealed_outside_the_window_is_refused() {
        let (sealer, opener) = pair();
        let mut sealed = sealer.seal(Channel::Signals, "s", b"old");
        // Re-seal by hand with a time a minute ago: the node's own key.
        let old = crate::domain::now_micros() - 60_000_000;
        sealed.truncate(HEADER - 8);
        sealed.extend_from_slice(&old.to_be_bytes());
        let mut body = b"old".to_vec();
        let aad = associated("s", &sealed);
        sealer
            .key
            .seal_in_place_append_tag(nonce(1), Aad::from(aad), &mut body)
            .unwrap();
        sealed.extend_from_slice(&body);
        assert_eq!(
            opener.open(Channel::Signals, "s", &sealed).err(),
            Some(Refused::Replayed)
        );
    }
}
