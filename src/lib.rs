//! herald: a real-time messaging gateway. One message hub, three doors:
//! gRPC, Server-Sent Events and REST.
//!
//! How a message travels: a transport adapter ([`grpc`], [`http`]) checks the
//! caller with [`auth`] and calls the core ([`service::Herald`]), which parses
//! input into [`domain`] types and hands the message to the [`commit`] task,
//! which commits it with [`store`] at the next stream position (many at once
//! under load) and reports it to the [`feed`]. The feed hands
//! committed messages to the [`hub`] in stream order, and the hub fans each
//! out to the live subscriptions of its participants. A subscription that
//! resumes replays from the store first, then goes live with no gap.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the command line and its environment variables |
//! | [`cli`] | what `serve` and `token` do |
//! | [`server`] | binding, running, graceful shutdown |
//! | [`start`] | why herald could not start |
//! | [`listener`] | accepting and serving connections, with their limits |
//! | [`tls`] | optional TLS on both listeners, HTTP/2 by ALPN |
//! | [`error`] | the error type, and its gRPC mapping |
//! | [`auth`] | JWT verification and minting |
//! | [`domain`] | ids, content, messages, conversations |
//! | [`limits`] | configurable limits and the rate limiter |
//! | [`metrics`] | Prometheus counters and histograms |
//! | [`store`] | SQLite / PostgreSQL persistence and stream positions |
//! | [`commit`] | group commit: persist, then publish, in one place |
//! | [`feed`] | stream order and gap filling between commits and the hub |
//! | [`broker`] | cross-node fan-out: PostgreSQL LISTEN/NOTIFY or NATS |
//! | [`hub`] | per-user fan-out with bounded queues |
//! | [`service`] | the core the transports adapt |
//! | [`stream`] | one subscriber's stream: replay, then live |
//! | [`pb`] | generated proto types and their JSON mapping |
//! | [`grpc`] | the gRPC adapter |
//! | [`http`] | the HTTP adapter |

pub mod auth;
pub mod broker;
pub mod cli;
pub mod commit;
pub mod config;
pub mod domain;
pub mod error;
pub mod feed;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod service;
pub mod start;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use error::Error;
pub use server::Server;
pub use service::Herald;
