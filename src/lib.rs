//! herald: a real-time messaging gateway. One message hub, three doors:
//! gRPC, Server-Sent Events and REST.
//!
//! How a message travels: a transport adapter (`grpc`, `http`) checks the
//! caller with `auth` and calls the core ([`Herald`]), which parses
//! input into `domain` types and hands the message to the `commit` task,
//! which commits it with `store` at the next stream position (many at once
//! under load) and reports it to the `feed`. The feed hands
//! committed messages to the `hub` in stream order, and the hub fans each
//! out to the live subscriptions of its participants. A subscription that
//! resumes replays from the store first, then goes live with no gap.
//!
//! The tree shows the parts (docs/architecture.md says the rule each
//! keeps):
//!
//! | folder | part | holds |
//! | --- | --- | --- |
//! | `doors/` | the doors | `grpc` (Messenger, and `admin` for service keys), `http` (REST, `/api/admin/`, SSE, gRPC-Web, the page): adapt, never decide |
//! | `auth/` | the gate | JWT verification and minting, service keys, the in-memory `Guard` of bans and revocations |
//! | `engine/` | the core | `service` (what the doors call; `service::admin` for the application), `commit`, `feed`, `hub`, `stream`, `signals`, `presence`, `limits`, `moderation` |
//! | `domain` | the vocabulary | ids, content, messages, conversations, `rules` (who may change what) and `moderation` (scopes, bans, revocations) |
//! | `store/` | persistence | SQLite / PostgreSQL, by concern: messages, conversations, membership, blocks, keys and the moderation log |
//! | `cluster/` | many nodes | the broker (LISTEN/NOTIFY or NATS) and its seal |
//! | `net/` | the network | the listener with its limits, TLS |
//! | `startup/` | the program | configuration, commands, start-up and shutdown |
//! | [`pb`] | the wire types | generated proto types and their JSON mapping |
//! | `error`, `metrics` | shared | the core's error type; Prometheus counters |

// Every module is the crate's own; what an embedder or a test may use is
// re-exported below, so the compiler reports whatever nothing uses.
mod auth;
mod cluster;
mod domain;
mod doors;
mod engine;
mod error;
mod metrics;
mod net;
/// The wire types of `herald.v1` (generated), for clients in Rust.
pub mod pb;
mod startup;
mod store;

pub use auth::Auth;
pub use domain::{ConversationId, UserId, random_hex};
pub use engine::hub::Hub;
pub use engine::service::Herald;
pub use error::{Error, UNAUTHENTICATED};
pub use net::listener::Connections;
pub use startup::commands;
pub use startup::config::{HookFailure, ServeConfig};
pub use startup::server::{Server, shutdown_signal};
pub use startup::start::StartError;

/// Everything a client can send before any business logic runs (tokens,
/// message ids, JSON bodies, timestamps, a stream request's head), for the fuzzer in `fuzz/` and a
/// test over its corpus: none of it may panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_network_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Auth::hs256(b"fuzz-secret-0123456789abcdef0123456789").verify(&text);
    let _ = domain::Position::parse_id("after_id", &text);
    let _ = auth::bearer(&text);
    let _ = serde_json::from_slice::<pb::CreateMessageRequest>(data);
    let _ = serde_json::from_slice::<pb::CreateConversationRequest>(data);
    let _ = serde_json::from_slice::<pb::MarkReadRequest>(data);
    let _ = pb::Timestamp::parse_rfc3339(&text);
    net::listener::fuzz_first_bytes(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fuzz_corpus_panics_nothing() {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/network_input");
        let mut inputs = 0;
        for entry in std::fs::read_dir(corpus).expect("the fuzz corpus") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            super::fuzz_network_input(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "an empty corpus tests nothing");
    }
}
