//! herald-bench: load scenarios against running servers, reporting delivery
//! throughput, create-to-delivery latency, memory per stream and CPU — for
//! herald, and for nchan where a scenario maps onto it, so both can be
//! compared in one run (`bench/run.sh`). Loopback only; every run is bounded
//! by its counts.

mod crossnode;
mod fanout;
mod hostile;
mod presence;
mod sse;

use clap::{Parser, Subcommand};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The client of `herald.v1`, generated from herald's proto by build.rs.
mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("herald.v1");
}

/// An HS256 token for `user`, valid for an hour, as any JWT library makes
/// one: `sub` and `exp`.
fn token(secret: &str, user: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(Duration::from_secs(3600))
        .as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: user, exp },
        &key,
    )
    .expect("HS256 signing cannot fail")
}

#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Load scenarios against herald (and nchan)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Writers on one node, a subscriber on another: cross-node latency and throughput.
    Crossnode(crossnode::CrossNode),
    /// Open and hold SSE streams: server memory per stream.
    Idle(fanout::Idle),
    /// One conversation (nchan: one channel) of N members, each with an SSE stream.
    Group(fanout::Fanout),
    /// N users in N/2 one-to-one conversations (nchan: a channel per user), round robin.
    Direct(fanout::Fanout),
    /// Two users chat, alone and then while an attacker does its worst.
    Hostile(hostile::Hostile),
    /// Users in groups reconnect at a rate: presence events per second.
    Presence(presence::Presence),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().scenario {
        Scenario::Crossnode(args) => crossnode::crossnode(args).await,
        Scenario::Idle(args) => fanout::idle(args).await,
        Scenario::Group(args) => fanout::group(args).await,
        Scenario::Direct(args) => fanout::direct(args).await,
        Scenario::Hostile(args) => hostile::hostile(args).await,
        Scenario::Presence(args) => presence::presence(args).await,
    }
}
