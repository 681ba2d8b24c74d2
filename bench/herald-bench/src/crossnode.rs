//! `crossnode`: writers send through one node's gRPC port while a subscriber
//! listens on another's, so every message crosses the broker. Each message
//! carries its send time; latency is measured when the subscriber parses it
//! (same clock, one process).

use crate::fanout::authorized;
use crate::pb::{self, messenger_client::MessengerClient};
use clap::Args;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tonic::transport::Channel;

/// Writers on one node, a subscriber on another.
#[derive(Args)]
pub struct CrossNode {
    /// gRPC address of the node the writers use.
    #[arg(long)]
    write: String,
    /// gRPC address of the node the subscriber uses.
    #[arg(long)]
    read: String,
    /// The nodes' HS256 secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Messages to send.
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// Messages per second; 0 sends as fast as the writers can.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Writers sending at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

async fn connect(address: &str) -> Result<MessengerClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("a valid address")
        .connect()
        .await?;
    Ok(MessengerClient::new(channel))
}

pub async fn crossnode(args: CrossNode) -> Result<(), Box<dyn std::error::Error>> {
    let token = |user: &str| crate::token(&args.jwt_secret, user);
    let (alice, bob) = (token("bench-alice"), token("bench-bob"));
    let mut writer = connect(&args.write).await?;
    let request = pb::CreateConversationRequest {
        participant_ids: vec!["bench-bob".into()],
    };
    let conversation = writer
        .create_conversation(authorized(request, &alice))
        .await?
        .into_inner()
        .id;

    let mut stream = connect(&args.read)
        .await?
        .subscribe_messages(authorized(pb::SubscribeMessagesRequest::default(), &bob))
        .await?
        .into_inner();
    let expected = args.messages;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            let Ok(Some(message)) = stream.message().await else {
                break;
            };
            if let Ok(sent) = message.content.parse::<u64>() {
                latencies.push(now_micros().saturating_sub(sent));
            }
        }
        (latencies, Instant::now())
    });

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (mut client, next, alice, conversation) = (
            writer.clone(),
            next.clone(),
            alice.clone(),
            conversation.clone(),
        );
        let (rate, total) = (args.rate, args.messages);
        writers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<_, tonic::Status>(());
                }
                if rate > 0.0 {
                    tokio::time::sleep_until(
                        (started + Duration::from_secs_f64(index as f64 / rate)).into(),
                    )
                    .await;
                }
                let body = pb::CreateMessageRequest {
                    conversation_id: conversation.clone(),
                    content: now_micros().to_string(),
                    ..Default::default()
                };
                client.create_message(authorized(body, &alice)).await?;
            }
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let sent_in = started.elapsed();
    let (mut latencies, finished) =
        tokio::time::timeout(Duration::from_secs(120), reader).await??;
    report(
        &args,
        &mut latencies,
        sent_in,
        finished.duration_since(started),
    );
    Ok(())
}

fn report(args: &CrossNode, latencies: &mut [u64], sent_in: Duration, delivered_in: Duration) {
    latencies.sort_unstable();
    let at = |q: f64| crate::fanout::quantile_ms(latencies, q);
    println!(
        "crossnode messages={} rate={} concurrency={} delivered={} sent/s={:.0} delivered/s={:.0} \
         latency_ms p50={:.2} p99={:.2} p99.9={:.2} max={:.2} bench_cpu_s={:.2}",
        args.messages,
        if args.rate > 0.0 {
            format!("{}", args.rate)
        } else {
            "max".into()
        },
        args.concurrency,
        latencies.len(),
        args.messages as f64 / sent_in.as_secs_f64(),
        latencies.len() as f64 / delivered_in.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(0.999),
        at(1.0),
        crate::fanout::own_cpu_seconds(),
    );
}
