//! The network: accepting and serving connections within their limits, and
//! TLS on both ports.

pub mod listener;
pub mod tls;
