//! `presence`: N users in groups of M, each holding a `SubscribeEvents`
//! stream; for a while, users reconnect at a given rate, each staying away
//! for a given time. Away longer than herald's grace, each reconnect makes
//! two presence changes (offline, then online) that reach the other M - 1
//! members; away shorter, it should make none. The figures: presence
//! events delivered per second and server CPU, beside `at_most`, the
//! events if every other member were connected at every change.

use crate::fanout::{Target, authorized, cpu_seconds};
use crate::pb::{self, messenger_client::MessengerClient};
use clap::Args;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

#[derive(Args)]
pub struct Presence {
    #[command(flatten)]
    target: Target,
    /// Users, each with one event stream.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Members per group.
    #[arg(long, default_value_t = 50)]
    group: usize,
    /// Reconnects per second, across all users.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long each reconnecting user stays away, in milliseconds
    /// (compare with herald's --presence-grace).
    #[arg(long, default_value_t = 1_500)]
    away_ms: u64,
    /// How long users reconnect, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Event streams sharing one HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Default)]
struct Counts {
    open: AtomicU64,
    presence: AtomicU64,
}

pub async fn presence(args: Presence) -> Result<(), Box<dyn std::error::Error>> {
    let group = args.group.clamp(2, args.users.max(2));
    let users: Vec<String> = (0..args.users).map(|n| format!("p{n}")).collect();
    let mut client = args.target.grpc().await;
    for members in users.chunks(group) {
        let Some((first, others)) = members.split_first() else {
            continue;
        };
        let body = pb::CreateConversationRequest {
            participant_ids: others.to_vec(),
        };
        client
            .create_conversation(authorized(body, &args.target.token(first)))
            .await?;
    }

    let counts = Arc::new(Counts::default());
    let mut reconnect = Vec::with_capacity(users.len());
    let mut connection = None;
    for (index, user) in users.iter().enumerate() {
        if index % STREAMS_PER_CONNECTION == 0 {
            connection = Some(args.target.grpc().await);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        reconnect.push(tx);
        let client = connection.clone().expect("a connection");
        tokio::spawn(hold(client, args.target.token(user), rx, counts.clone()));
    }
    while counts.open.load(Ordering::Relaxed) < users.len() as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first wave of "online" settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = counts.presence.load(Ordering::Relaxed);
    let cpu = cpu_seconds(&args.target.pid);
    let started = Instant::now();
    let away = Duration::from_millis(args.away_ms);
    let every = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut next = 0;
    let mut reconnects = 0u64;
    // One user of each group in turn, so a group's members are rarely
    // away together when one of them changes.
    let groups = users.len().div_ceil(group);
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let user = (next % groups) * group + (next / groups) % group;
        let _ = reconnect[user.min(users.len() - 1)].send(away);
        next += 1;
        reconnects += 1;
        tokio::time::sleep(every).await;
    }
    // The last ones come back, and their changes arrive.
    tokio::time::sleep(away + Duration::from_secs(2)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&args.target.pid) - cpu;
    let delivered = counts.presence.load(Ordering::Relaxed) - before;
    println!(
        "presence users={} group={group} reconnects={reconnects} away_ms={} presence_events={delivered} \
         at_most={} \
         presence_events/s={:.0} server_cpu_s={server_cpu:.2} server_cpu_us_per_event={:.1}",
        args.users,
        args.away_ms,
        reconnects * 2 * (group as u64 - 1),
        delivered as f64 / elapsed,
        match delivered {
            0 => 0.0,
            n => server_cpu * 1e6 / n as f64,
        },
    );
    Ok(())
}

/// Holds `token`'s event stream, counting presence events; on each
/// message of `reconnect`, drops it, stays away that long, and reopens.
async fn hold(
    client: MessengerClient<Channel>,
    token: String,
    mut reconnect: mpsc::UnboundedReceiver<Duration>,
    counts: Arc<Counts>,
) {
    let mut first = true;
    loop {
        let request = authorized(pb::SubscribeEventsRequest::default(), &token);
        let Ok(response) = client.clone().subscribe_events(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if first {
            counts.open.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        let mut stream = response.into_inner();
        let away = loop {
            tokio::select! {
                event = stream.message() => match event {
                    Ok(Some(event)) => {
                        if matches!(event.kind, Some(pb::event::Kind::Presence(_))) {
                            counts.presence.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => break Duration::ZERO,
                },
                away = reconnect.recv() => match away {
                    Some(away) => break away,
                    None => return,
                },
            }
        };
        drop(stream);
        tokio::time::sleep(away).await;
    }
}
