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
//! | module | owns |
//! | --- | --- |
//! | `config` | the command line and its environment variables |
//! | [`commands`] | what `serve` and `token` do, and the program as a whole |
//! | `server` | binding, running, graceful shutdown |
//! | `start` | why herald could not start |
//! | `listener` | accepting and serving connections, with their limits |
//! | `tls` | optional TLS on both listeners, HTTP/2 by ALPN |
//! | `error` | the error type, and its gRPC mapping |
//! | `auth` | JWT verification and minting |
//! | `domain` | ids, content, messages, conversations |
//! | `limits` | configurable limits and the rate limiter |
//! | `metrics` | Prometheus counters and histograms |
//! | `store` | SQLite / PostgreSQL persistence and stream positions |
//! | `commit` | group commit: persist, then publish, in one place |
//! | `feed` | stream order and gap filling between commits and the hub |
//! | `broker` | cross-node fan-out: PostgreSQL LISTEN/NOTIFY or NATS |
//! | `hub` | per-user fan-out with bounded queues |
//! | `service` | the core the transports adapt |
//! | `signals` | typing: events with no position, relayed and never stored |
//! | `presence` | who is online, across nodes, never stored |
//! | `stream` | one subscriber's stream: replay, then live |
//! | [`pb`] | generated proto types and their JSON mapping |
//! | `grpc` | the gRPC adapter |
//! | `http` | the HTTP adapter |

// Every module is the crate's own; what an embedder or a test may use is
// re-exported below, so the compiler reports whatever nothing uses.
mod auth;
mod broker;
pub mod commands;
mod commit;
mod config;
mod domain;
mod error;
mod feed;
mod grpc;
mod http;
mod hub;
mod limits;
mod listener;
mod metrics;
/// The wire types of `herald.v1` (generated), for clients in Rust.
pub mod pb;
mod presence;
mod server;
mod service;
mod signals;
mod start;
mod store;
mod stream;
mod telemetry;
mod tls;

pub use auth::Auth;
pub use config::ServeConfig;
pub use domain::{ConversationId, UserId, random_hex};
pub use error::{Error, UNAUTHENTICATED};
pub use hub::Hub;
pub use listener::Connections;
pub use server::{Server, shutdown_signal};
pub use service::Herald;
pub use start::StartError;

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
    listener::fuzz_first_bytes(data);
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
