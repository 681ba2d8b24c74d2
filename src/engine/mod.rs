//! The core: what happens to a message between a door and a socket, with no
//! transport in it. `service` is what the doors call; `commit` persists and
//! then publishes; `feed` hands committed events to the `hub` in position
//! order; `stream` is one subscriber's replay, then live; `signals` (typing)
//! and `presence` travel beside, never stored; `limits` meters every caller;
//! `moderation` applies the application's bans, revocations and keys on
//! every node (the Admin calls themselves are `service::admin`).

pub mod commit;
pub mod feed;
pub mod firehose;
pub mod hook;
pub mod hub;
pub mod limits;
pub mod moderation;
pub mod presence;
pub mod service;
pub mod signals;
pub mod stream;
pub mod webhooks;
