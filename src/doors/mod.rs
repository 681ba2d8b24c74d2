//! The doors: adapters from the wire to the core. Each parses its wire,
//! calls [`Herald`](crate::engine::service::Herald), and maps the core's one
//! error type once to its own statuses; none decides anything.

pub mod grpc;
pub mod http;
