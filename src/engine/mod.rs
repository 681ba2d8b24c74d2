//! The core: what happens to a message between a door and a socket, with no
//! transport in it. `service` is what the doors call; `commit` persists and
//! then publishes; `feed` hands committed events to the `hub` in position
//! order; `stream` is one subscriber's replay, then live; `signals` (typing)
//! and `presence` travel beside, never stored; `limits` meters every caller.

pub mod commit;
pub mod feed;
pub mod hub;
pub mod limits;
pub mod presence;
pub mod service;
pub mod signals;
pub mod stream;
