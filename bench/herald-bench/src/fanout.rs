//! SSE scenarios that run against herald or nchan alike: `idle` (memory
//! per held stream), `group` (one conversation or channel, many members)
//! and `direct` (one-to-one pairs, round robin).

use crate::pb::{self, messenger_client::MessengerClient};
use crate::sse::{Tally, now_micros, subscribe};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, transport::Channel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Server {
    Herald,
    Nchan,
}

/// How subscribers receive (herald only offers gRPC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Sse,
    Grpc,
}

/// gRPC streams multiplexed on one connection.
const STREAMS_PER_CONNECTION: usize = 100;

/// Which server, and how to reach it.
#[derive(Args, Clone)]
pub struct Target {
    #[arg(long, value_enum, default_value = "herald")]
    pub server: Server,
    /// How subscribers receive: SSE, or herald's SubscribeMessages streams.
    #[arg(long, value_enum, default_value = "sse")]
    pub transport: Transport,
    /// HTTP address: herald's --http, or nginx's listen.
    #[arg(long)]
    pub http: SocketAddr,
    /// herald's gRPC address, which publishes.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: String,
    /// herald's HS256 secret.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        hide_env_values = true,
        default_value = "bench-secret-0123456789abcdef0123456789abcdef"
    )]
    pub jwt_secret: String,
    /// The server's process ids (nginx: every worker), to read memory and
    /// CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
}

#[derive(Args)]
pub struct Idle {
    #[command(flatten)]
    target: Target,
    /// Streams to open and hold.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
}

#[derive(Args)]
pub struct Fanout {
    #[command(flatten)]
    target: Target,
    /// Members (group) or users (direct).
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000)]
    messages: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Messages per second (message `i` is sent no earlier than `i / rate`
    /// seconds after the start); 0 sends as fast as the publishers can.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// What each operation is (direct, herald only): a new message, an edit
    /// of the pair's message, or a reaction (twenty emoji given in turn,
    /// then taken back);
    /// edits and reactions are received on /api/events.
    #[arg(long, value_enum, default_value = "send")]
    op: Op,
}

/// One operation of a direct run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    Send,
    Edit,
    React,
}

impl Target {
    pub fn token(&self, user: &str) -> String {
        crate::token(&self.jwt_secret, user)
    }

    fn stream_path(&self, user: &str, channel: &str) -> String {
        match self.server {
            Server::Herald if channel.starts_with("events:") => {
                format!("/api/events?token={}", self.token(user))
            }
            Server::Herald => format!("/api/messages?token={}", self.token(user)),
            Server::Nchan => format!("/sub/{channel}"),
        }
    }

    pub async fn grpc(&self) -> MessengerClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc)).expect("an address");
        MessengerClient::new(channel.connect().await.expect("herald's gRPC port answers"))
    }
}

/// Opens one stream per `(user, channel)` and waits until all are live.
async fn open_streams(target: &Target, streams: &[(String, String)]) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let mut grpc_connection: Option<MessengerClient<Channel>> = None;
    if target.transport == Transport::Grpc {
        for (index, (user, _)) in streams.iter().enumerate() {
            if index % STREAMS_PER_CONNECTION == 0 {
                grpc_connection = Some(target.grpc().await);
            }
            let client = grpc_connection.clone().expect("a connection");
            tokio::spawn(grpc_subscriber(client, target.token(user), tally.clone()));
        }
        wait(
            &tally,
            |t| t.connected.load(Ordering::Relaxed) >= streams.len(),
            "streams to open",
        )
        .await;
        return tally;
    }
    for (user, channel) in streams {
        let (path, tally) = (target.stream_path(user, channel), tally.clone());
        let addr = target.http;
        tokio::spawn(async move {
            if let Err(error) = subscribe(addr, path, tally).await {
                eprintln!("subscriber failed: {error}");
            }
        });
    }
    wait(
        &tally,
        |t| t.connected.load(Ordering::Relaxed) >= streams.len(),
        "streams to open",
    )
    .await;
    tally
}

/// One SubscribeMessages stream, tallied like an SSE subscriber.
async fn grpc_subscriber(mut client: MessengerClient<Channel>, token: String, tally: Arc<Tally>) {
    let request = authorized(pb::SubscribeMessagesRequest::default(), &token);
    let Ok(response) = client.subscribe_messages(request).await else {
        eprintln!("a gRPC subscription failed");
        return;
    };
    let mut stream = response.into_inner();
    tally.connected.fetch_add(1, Ordering::Relaxed);
    tally.changed.notify_waiters();
    while let Ok(Some(message)) = stream.message().await {
        tally.record(message.content.as_bytes(), now_micros());
    }
}

async fn wait(tally: &Tally, done: impl Fn(&Tally) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(tally) {
        if Instant::now() > deadline {
            eprintln!("gave up waiting for {what}");
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), tally.changed.notified()).await;
    }
}

pub async fn idle(args: Idle) -> Result<(), Box<dyn std::error::Error>> {
    let before = rss_kib(&args.target.pid);
    let streams: Vec<(String, String)> = (0..args.subscribers)
        .map(|i| (format!("idle-{i}"), format!("idle-{i}")))
        .collect();
    let tally = open_streams(&args.target, &streams).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&args.target.pid);
    let held = tally.connected.load(Ordering::Relaxed);
    let per = after.saturating_sub(before) as f64 * 1024.0 / held.max(1) as f64;
    println!(
        "idle server={:?} transport={:?} streams={held} server_rss_kib={after} per_stream_bytes={per:.0} bench_cpu_s={:.2}",
        args.target.server,
        args.target.transport,
        own_cpu_seconds()
    );
    Ok(())
}

pub async fn group(args: Fanout) -> Result<(), Box<dyn std::error::Error>> {
    let members: Vec<String> = (0..args.users).map(|i| format!("g{i}")).collect();
    let streams: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.clone(), "group".to_owned()))
        .collect();
    let conversation = match args.target.server {
        Server::Herald => {
            let request = pb::CreateConversationRequest {
                participant_ids: members[1..].to_vec(),
            };
            let request = authorized(request, &args.target.token(&members[0]));
            Some(
                args.target
                    .grpc()
                    .await
                    .create_conversation(request)
                    .await?
                    .into_inner()
                    .id,
            )
        }
        Server::Nchan => None,
    };
    let tally = open_streams(&args.target, &streams).await;
    let channel = |_: usize| {
        (
            "group".to_owned(),
            members[0].clone(),
            conversation.clone().unwrap_or_default(),
        )
    };
    publish_and_measure("group", &args, &tally, args.users, channel).await
}

pub async fn direct(args: Fanout) -> Result<(), Box<dyn std::error::Error>> {
    let pairs = args.users / 2;
    let users: Vec<String> = (0..pairs * 2).map(|i| format!("d{i}")).collect();
    // Changes arrive on the event stream (named channels say which).
    let stream = |u: &String| match args.op {
        Op::Send => (u.clone(), u.clone()),
        Op::Edit | Op::React => (u.clone(), format!("events:{u}")),
    };
    let streams: Vec<(String, String)> = users.iter().map(stream).collect();
    let mut conversations = vec![String::new(); pairs];
    if args.target.server == Server::Herald {
        let client = args.target.grpc().await;
        let create = (0..pairs).map(|pair| {
            let (mut client, token) = (client.clone(), args.target.token(&users[2 * pair]));
            let request = pb::CreateConversationRequest {
                participant_ids: vec![users[2 * pair + 1].clone()],
            };
            async move {
                client
                    .create_conversation(authorized(request, &token))
                    .await
            }
        });
        // Bounded, or thousands of calls at once exceed HTTP/2's stream limit.
        let created: Vec<_> = futures_util::stream::iter(create)
            .buffered(64)
            .collect()
            .await;
        for (pair, result) in created.into_iter().enumerate() {
            conversations[pair] = result?.into_inner().id;
        }
    }
    // The message each pair's changes concern, sent by the pair's writer.
    let mut targets = vec![String::new(); pairs];
    if args.op != Op::Send {
        let client = args.target.grpc().await;
        let send = (0..pairs).map(|pair| {
            let (mut client, token) = (client.clone(), args.target.token(&users[2 * pair + 1]));
            let request = pb::CreateMessageRequest {
                conversation_id: conversations[pair].clone(),
                content: "changes to come".into(),
                ..Default::default()
            };
            async move { client.create_message(authorized(request, &token)).await }
        });
        let sent: Vec<_> = futures_util::stream::iter(send)
            .buffered(64)
            .collect()
            .await;
        for (pair, result) in sent.into_iter().enumerate() {
            targets[pair] = result?.into_inner().id;
        }
    }
    let tally = open_streams(&args.target, &streams).await;
    // herald also delivers each message to its sender's own stream.
    let per_message = if args.target.server == Server::Herald {
        2
    } else {
        1
    };
    // A change travels to its message's conversation (its target after a
    // slash): the job's operation rides in the channel name.
    let channel = |i: usize| {
        let pair = i % pairs.max(1);
        let conversation = match args.op {
            Op::Send => conversations[pair].clone(),
            Op::Edit | Op::React => format!(
                "{}/{}/{}",
                conversations[pair],
                targets[pair],
                i / pairs.max(1)
            ),
        };
        (
            users[2 * pair + 1].clone(),
            users[2 * pair + 1].clone(),
            conversation,
        )
    };
    let scenario = match args.op {
        Op::Send => "direct",
        Op::Edit => "direct-edit",
        Op::React => "direct-react",
    };
    publish_and_measure(scenario, &args, &tally, per_message, channel).await
}

/// Publishes `args.messages` (message `i` to `channel(i)`: nchan channel,
/// herald sender and conversation) and reports when every delivery arrived.
async fn publish_and_measure(
    scenario: &str,
    args: &Fanout,
    tally: &Arc<Tally>,
    deliveries_per_message: usize,
    channel: impl Fn(usize) -> (String, String, String),
) -> Result<(), Box<dyn std::error::Error>> {
    let jobs: Vec<(String, String, String)> = (0..args.messages).map(&channel).collect();
    let jobs = Arc::new(jobs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server_cpu = cpu_seconds(&args.target.pid);
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (target, jobs, next) = (args.target.clone(), jobs.clone(), next.clone());
        let pace = Pace {
            started,
            rate: args.rate,
        };
        let op = args.op;
        publishers.push(tokio::spawn(async move {
            publisher(target, jobs, next, pace, op).await
        }));
    }
    for publisher in publishers {
        publisher.await?.map_err(|error| error.to_string())?;
    }
    let expected = args.messages * deliveries_per_message;
    wait(
        tally,
        |t| t.events.load(Ordering::Relaxed) >= expected,
        "deliveries",
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&args.target.pid) - server_cpu;
    let mut latencies =
        std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_unstable();
    let at = |q: f64| quantile_ms(&latencies, q);
    let rate = match args.rate > 0.0 {
        true => format!(" rate={}", args.rate),
        false => String::new(),
    };
    println!(
        "{scenario} server={:?} transport={:?} users={} messages={}{rate} delivered={} deliveries/s={:.0} messages/s={:.0} \
         latency_ms p50={:.2} p99={:.2} p99.9={:.2} server_cpu_s={server_cpu:.2} bench_cpu_s={:.2}",
        args.target.server,
        args.target.transport,
        args.users,
        args.messages,
        tally.events.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed) as f64 / elapsed,
        args.messages as f64 / elapsed,
        at(0.5),
        at(0.99),
        at(0.999),
        own_cpu_seconds(),
    );
    Ok(())
}

type Job = (String, String, String);

/// When each publish may go: all at once (rate 0), or at a fixed rate.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    rate: f64,
}

async fn publisher(
    target: Target,
    jobs: Arc<Vec<Job>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    pace: Pace,
    op: Op,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut grpc = match target.server {
        Server::Herald => Some(target.grpc().await),
        Server::Nchan => None,
    };
    let mut nchan = match target.server {
        Server::Nchan => Some(tokio::net::TcpStream::connect(target.http).await?),
        Server::Herald => None,
    };
    let mut tokens = std::collections::HashMap::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some((channel, sender, conversation)) = jobs.get(index) else {
            return Ok(());
        };
        if pace.rate > 0.0 {
            let due = pace.started + Duration::from_secs_f64(index as f64 / pace.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let content = format!("t={}", now_micros());
        if let Some(client) = grpc.as_mut() {
            let token = tokens
                .entry(sender.clone())
                .or_insert_with(|| target.token(sender));
            // "conversation/message/round" for a change (see `direct`).
            let mut parts = conversation.split('/');
            let (conversation, message, round) = (
                parts.next().unwrap_or_default().to_owned(),
                parts.next(),
                parts.next().and_then(|round| round.parse::<usize>().ok()),
            );
            match (message, round) {
                (Some(message), Some(_)) if op == Op::Edit => {
                    let body = pb::EditMessageRequest {
                        conversation_id: conversation,
                        message_id: message.to_owned(),
                        content,
                    };
                    client.edit_message(authorized(body, token)).await?;
                }
                (Some(message), Some(round)) => {
                    let (conversation_id, message_id) = (conversation, message.to_owned());
                    // Twenty emoji given in turn, then taken back in turn:
                    // each operation changes something whatever order
                    // concurrent ones commit in (a pair's rounds are a whole
                    // cycle of pairs apart).
                    let emoji = char::from_u32(0x1F600 + (round % 20) as u32)
                        .unwrap_or('👍')
                        .to_string();
                    match (round / 20) % 2 {
                        0 => {
                            let body = pb::ReactRequest {
                                conversation_id,
                                message_id,
                                emoji,
                            };
                            client.react(authorized(body, token)).await?;
                        }
                        _ => {
                            let body = pb::UnreactRequest {
                                conversation_id,
                                message_id,
                                emoji,
                            };
                            client.unreact(authorized(body, token)).await?;
                        }
                    }
                }
                _ => {
                    let body = pb::CreateMessageRequest {
                        conversation_id: conversation,
                        content,
                        ..Default::default()
                    };
                    client.create_message(authorized(body, token)).await?;
                }
            }
        } else if let Some(stream) = nchan.as_mut() {
            post(
                stream,
                &target.http,
                &format!("/pub?id={channel}"),
                &content,
            )
            .await?;
        }
    }
}

/// One HTTP/1.1 POST on a kept-alive connection; reads the whole answer.
async fn post(
    stream: &mut tokio::net::TcpStream,
    host: &SocketAddr,
    path: &str,
    body: &str,
) -> std::io::Result<()> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buffer[..read]);
        let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if answer.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// The `q` quantile of sorted microsecond latencies, in milliseconds.
pub fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or(0) as f64 / 1000.0
}

pub fn authorized<T>(body: T, token: &str) -> Request<T> {
    let mut request = Request::new(body);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Resident memory of the processes `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "VmRSS:")
}

/// The anonymous part of [`rss_kib`]: what the processes allocated, without
/// the pages of their program and libraries (read once, shared, clean).
pub fn anon_kib(pids: &[u32]) -> u64 {
    status_kib(pids, "RssAnon:")
}

/// The sum of one `/proc/PID/status` field, in KiB, over `pids`.
fn status_kib(pids: &[u32], field: &str) -> u64 {
    let one = |pid: &u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    pids.iter().map(one).sum()
}

/// CPU seconds (user + system) of the processes `pids` so far (Linux, 100
/// clock ticks a second).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let one = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    };
    pids.iter().map(one).sum()
}

pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(&[std::process::id()])
}
