//! The program: its configuration, its commands, and the server's start and
//! shutdown.

pub mod commands;
pub mod config;
pub mod memory;
pub mod server;
pub mod start;
pub mod telemetry;
