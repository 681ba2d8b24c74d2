//! herald-bench: load scenarios against running servers, reporting delivery
//! throughput, create-to-delivery latency, memory per stream and CPU — for
//! herald, and for nchan where a scenario maps onto it, so both can be
//! compared in one run (`bench/run.sh`). Loopback only; every run is bounded
//! by its counts.

mod crossnode;
mod fanout;
mod hostile;
mod sse;

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().scenario {
        Scenario::Crossnode(args) => crossnode::crossnode(args).await,
        Scenario::Idle(args) => fanout::idle(args).await,
        Scenario::Group(args) => fanout::group(args).await,
        Scenario::Direct(args) => fanout::direct(args).await,
        Scenario::Hostile(args) => hostile::hostile(args).await,
    }
}
