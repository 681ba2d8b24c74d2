//! `hostile`: two ordinary users chat (alice on a gRPC stream, bob on SSE)
//! first alone, then while one attacker does everything the hardening is
//! for at once: content with U+0000, half-sent and silent connections,
//! a flood of calls on one HTTP/2 connection, giant groups (of a new size
//! each time), resumes of a
//! large history that never read, (with `--nats-url`) forged broker
//! publishes and genuine ones played back, and round two's: anonymous
//! health `Watch` streams held on many connections, request messages
//! announced at 4 MiB and never finished, request bodies that never come,
//! live streams of large messages that are never read, and presence probes
//! (the ordinary users put in the attacker's groups, then asked about). Reports the ordinary users' success rate, their
//! create-to-delivery latency without and with the attack, messages lost,
//! duplicated or forged, and the server's memory and open files.
//! Loopback only, bounded in time.

use crate::fanout::{Target, anon_kib, authorized, quantile_ms, rss_kib};
use crate::pb;
use crate::sse::{Tally, now_micros, subscribe};
use clap::Args;
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct Hostile {
    #[command(flatten)]
    target: Target,
    /// Seconds of chat alone, then of chat under attack.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Messages each ordinary user sends per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Half-sent and silent connections held open (half on each port).
    #[arg(long, default_value_t = 400)]
    slow_connections: usize,
    /// Calls in flight at once on the attacker's one HTTP/2 connection.
    #[arg(long, default_value_t = 400)]
    stream_flood: usize,
    /// Streams resuming the attacker's history without reading.
    #[arg(long, default_value_t = 20)]
    resumers: usize,
    /// Messages of 16 KiB in the history the resumers replay.
    #[arg(long, default_value_t = 2_000)]
    history: usize,
    /// NATS server whose subject the attacker publishes forgeries on.
    #[arg(long)]
    nats_url: Option<String>,
    /// herald's NATS subject.
    #[arg(long, default_value = "herald.messages")]
    nats_subject: String,
    /// Connections each holding an anonymous health Watch stream.
    #[arg(long, default_value_t = 200)]
    anonymous: usize,
    /// Connections each with four request messages announced at 4 MiB.
    #[arg(long, default_value_t = 16)]
    announced: usize,
    /// Request heads (with a token) whose body never comes.
    #[arg(long, default_value_t = 32)]
    stalled: usize,
    /// Live event streams of the attacker that never read, while it sends
    /// itself 16 KiB messages.
    #[arg(long, default_value_t = 20)]
    stuck: usize,
    /// Which attacks to run (all by default), to see what each costs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "nul,slow,flood,giant,resume,forge,anonymous,announced,stalled,stuck,probe"
    )]
    attacks: Vec<Attack>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Attack {
    Nul,
    Slow,
    Flood,
    Giant,
    Resume,
    Forge,
    Anonymous,
    Announced,
    Stalled,
    Stuck,
    /// Puts the ordinary users in groups and asks for their presence.
    Probe,
}

/// What the attackers got done, counted.
#[derive(Default)]
struct Attacks {
    nul_refused: AtomicU64,
    reconnects: AtomicU64,
    flood_ok: AtomicU64,
    flood_refused: AtomicU64,
    groups_created: AtomicU64,
    groups_refused: AtomicU64,
    resumes: AtomicU64,
    forged_published: AtomicU64,
    /// Anonymous streams the server ended or refused (evicted, bounded).
    anonymous_ended: AtomicU64,
    /// Announced messages answered at once instead of buffered.
    announced_refused: AtomicU64,
    /// Stalled requests cut at the body timeout.
    stalled_cut: AtomicU64,
    /// Genuine broker payloads recorded and published again.
    replays_published: AtomicU64,
    /// Presence probes made, and presences they were answered (must be 0:
    /// the ordinary users never took part in the attacker's groups).
    probes: AtomicU64,
    presence_leaked: AtomicU64,
}

pub async fn hostile(args: Hostile) -> Result<(), Box<dyn std::error::Error>> {
    let target = &args.target;
    let mut client = target.grpc().await;
    let pair = |user: &str, other: &str| {
        authorized(
            pb::CreateConversationRequest {
                participant_ids: vec![other.into()],
            },
            &target.token(user),
        )
    };
    let chat = client
        .create_conversation(pair("alice", "bob"))
        .await?
        .into_inner()
        .id;
    let lair = client
        .create_conversation(pair("mallory", "mallory-2"))
        .await?
        .into_inner()
        .id;
    let first = write_history(target, &lair, args.history).await?;

    // bob listens over SSE, alice over gRPC: every message of the chat
    // must reach both, once.
    let bob = Arc::new(Tally::default());
    let path = format!("/api/messages?token={}", target.token("bob"));
    tokio::spawn(subscribe(target.http, path, bob.clone()));
    let alice = Arc::new(Tally::default());
    tokio::spawn(grpc_listener(target.clone(), alice.clone()));
    while bob.connected.load(Ordering::Relaxed) == 0 || alice.connected.load(Ordering::Relaxed) == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let chatting = CancellationToken::new();
    let mut chatters = Vec::new();
    for (index, user) in ["alice", "bob"].into_iter().enumerate() {
        let (target, chat, sent, refused, stop) = (
            target.clone(),
            chat.clone(),
            sent.clone(),
            refused.clone(),
            chatting.clone(),
        );
        let rate = args.rate;
        chatters.push(tokio::spawn(async move {
            chatter(target, user, index as u64, chat, rate, sent, refused, stop).await
        }));
    }
    let pid = target.pid.clone();
    let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampling = CancellationToken::new();
    tokio::spawn(sample(pid.clone(), peaks.clone(), sampling.clone()));

    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let rss_before = rss_kib(&pid);
    let anon_before = anon_kib(&pid);
    let stuck_before = metric(target.http, "herald_connections_stuck_total").await;
    let replayed_before = metric(target.http, "herald_broker_replayed_total").await;
    let attack_started = now_micros();
    let attacks = Arc::new(Attacks::default());
    let attacking = CancellationToken::new();
    let attackers = attack(
        &args,
        &lair,
        &chat,
        &first,
        attacks.clone(),
        attacking.clone(),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let stuck_closed = metric(target.http, "herald_connections_stuck_total")
        .await
        .saturating_sub(stuck_before);
    let replays_refused = metric(target.http, "herald_broker_replayed_total")
        .await
        .saturating_sub(replayed_before);
    attacking.cancel();
    for attacker in attackers {
        let _ = attacker.await;
    }
    chatting.cancel();
    for chatter in chatters {
        let _ = chatter.await;
    }
    // Let deliveries land and the server settle (it closes the readers a
    // burst opened every 5 s and hands freed memory back every second),
    // then read what is left.
    tokio::time::sleep(Duration::from_secs(6)).await;
    sampling.cancel();
    let rss_after = rss_kib(&pid);
    let anon_after = anon_kib(&pid);

    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()));
    let report = Report::of(&sent, &[&alice, &bob], attack_started);
    println!(
        "hostile seconds={} ordinary_sent={} ordinary_ok={} success_rate={:.4} lost={} duplicated={} forged_delivered={} \
         latency_ms_alone p50={:.2} p99={:.2} latency_ms_attacked p50={:.2} p99={:.2} latency_ms_attacked_after_1s p50={:.2} p99={:.2} \
         rss_kib before={rss_before} peak={} after={rss_after} anon_kib before={anon_before} after={anon_after} open_files_peak={} \
         attacks nul_refused={} reconnects={} flood_ok={} flood_refused={} groups_created={} groups_refused={} resumes={} forged_published={} \
         anonymous_ended={} announced_refused={} stalled_cut={} stuck_closed={} \
         replays_published={} replays_refused={} probes={} presence_leaked={}",
        args.seconds,
        sent.len() as u64 + refused.load(Ordering::Relaxed),
        sent.len(),
        sent.len() as f64 / (sent.len() as u64 + refused.load(Ordering::Relaxed)).max(1) as f64,
        report.lost,
        report.duplicated,
        report.forged,
        report.alone.0,
        report.alone.1,
        report.attacked.0,
        report.attacked.1,
        report.steady.0,
        report.steady.1,
        peaks.0.load(Ordering::Relaxed),
        peaks.1.load(Ordering::Relaxed),
        attacks.nul_refused.load(Ordering::Relaxed),
        attacks.reconnects.load(Ordering::Relaxed),
        attacks.flood_ok.load(Ordering::Relaxed),
        attacks.flood_refused.load(Ordering::Relaxed),
        attacks.groups_created.load(Ordering::Relaxed),
        attacks.groups_refused.load(Ordering::Relaxed),
        attacks.resumes.load(Ordering::Relaxed),
        attacks.forged_published.load(Ordering::Relaxed),
        attacks.anonymous_ended.load(Ordering::Relaxed),
        attacks.announced_refused.load(Ordering::Relaxed),
        attacks.stalled_cut.load(Ordering::Relaxed),
        stuck_closed,
        attacks.replays_published.load(Ordering::Relaxed),
        replays_refused,
        attacks.probes.load(Ordering::Relaxed),
        attacks.presence_leaked.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Writes `count` messages of 16 KiB into `conversation`; returns the id
/// before them.
async fn write_history(
    target: &Target,
    conversation: &str,
    count: usize,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut client = target.grpc().await;
    let token = target.token("mallory");
    let send = |content: String| {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.into(),
            content,
            ..Default::default()
        };
        authorized(body, &token)
    };
    let first = client
        .create_message(send("start".into()))
        .await?
        .into_inner()
        .id;
    let filler = "h".repeat(16 * 1024 - 16);
    for n in 0..count {
        // At the server's send rate: wait out a refusal and go on.
        while let Err(status) = client.create_message(send(format!("{n} {filler}"))).await {
            if status.code() != tonic::Code::ResourceExhausted {
                return Err(status.into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(first)
}

/// alice's SubscribeMessages stream, recording every sequence number.
async fn grpc_listener(target: Target, tally: Arc<Tally>) {
    let mut client = target.grpc().await;
    let request = authorized(
        pb::SubscribeMessagesRequest::default(),
        &target.token("alice"),
    );
    let Ok(response) = client.subscribe_messages(request).await else {
        eprintln!("alice's stream failed to open");
        return;
    };
    let mut stream = response.into_inner();
    tally.connected.fetch_add(1, Ordering::Relaxed);
    while let Ok(Some(message)) = stream.message().await {
        tally.record(message.content.as_bytes(), now_micros());
    }
    eprintln!("alice's stream ended");
}

/// One ordinary user sending `rate` messages a second until `stop`.
#[allow(clippy::too_many_arguments)]
async fn chatter(
    target: Target,
    user: &'static str,
    parity: u64,
    chat: String,
    rate: u64,
    sent: Arc<Mutex<Vec<u64>>>,
    refused: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut client = target.grpc().await;
    let token = target.token(user);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut n = parity;
    while !stop.is_cancelled() {
        tick.tick().await;
        let body = pb::CreateMessageRequest {
            conversation_id: chat.clone(),
            content: format!("t={} n={n}", now_micros()),
            ..Default::default()
        };
        match client.create_message(authorized(body, &token)).await {
            Ok(_) => sent.lock().unwrap_or_else(|p| p.into_inner()).push(n),
            Err(status) => {
                eprintln!("{user}'s send failed: {status}");
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        n += 2;
    }
}

/// Samples the server's resident memory and open files every 100 ms,
/// keeping the peaks.
async fn sample(pids: Vec<u32>, peaks: Arc<(AtomicU64, AtomicU64)>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        peaks.0.fetch_max(rss_kib(&pids), Ordering::Relaxed);
        let files: usize = pids
            .iter()
            .map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count()))
            .sum();
        peaks.1.fetch_max(files as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts every attacker; each stops at `stop`.
fn attack(
    args: &Hostile,
    lair: &str,
    chat: &str,
    first: &str,
    attacks: Arc<Attacks>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let target = &args.target;
    let on = |attack: Attack| args.attacks.contains(&attack);
    let mut tasks = Vec::new();
    for _ in 0..4 * usize::from(on(Attack::Nul)) {
        tasks.push(tokio::spawn(nul_sender(
            target.clone(),
            lair.into(),
            attacks.clone(),
            stop.clone(),
        )));
    }
    for n in 0..args.slow_connections * usize::from(on(Attack::Slow)) {
        let addr = match n % 2 {
            0 => target.http.to_string(),
            _ => target.grpc.clone(),
        };
        tasks.push(tokio::spawn(slow_connection(
            addr,
            n % 2 == 0,
            attacks.clone(),
            stop.clone(),
        )));
    }
    if on(Attack::Flood) {
        tasks.push(tokio::spawn(flood(
            target.clone(),
            args.stream_flood,
            attacks.clone(),
            stop.clone(),
        )));
    }
    if on(Attack::Giant) {
        tasks.push(tokio::spawn(giant_groups(
            target.clone(),
            attacks.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..args.resumers * usize::from(on(Attack::Resume)) {
        let path = format!(
            "/api/messages?token={}&lastEventId={first}",
            target.token("mallory")
        );
        tasks.push(tokio::spawn(non_reader(
            target.http,
            path,
            attacks.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..args.anonymous * usize::from(on(Attack::Anonymous)) {
        let addr = target.grpc.clone();
        tasks.push(tokio::spawn(anonymous_watch(
            addr,
            attacks.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..args.announced * usize::from(on(Attack::Announced)) {
        let addr = target.grpc.clone();
        tasks.push(tokio::spawn(announcer(addr, attacks.clone(), stop.clone())));
    }
    for _ in 0..args.stalled * usize::from(on(Attack::Stalled)) {
        let token = target.token("mallory");
        tasks.push(tokio::spawn(staller(
            target.http,
            token,
            attacks.clone(),
            stop.clone(),
        )));
    }
    if on(Attack::Stuck) {
        let path = format!("/api/events?token={}", target.token("mallory"));
        for _ in 0..args.stuck {
            tasks.push(tokio::spawn(stuck_reader(
                target.http,
                path.clone(),
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(self_sender(
            target.clone(),
            lair.into(),
            stop.clone(),
        )));
    }
    if on(Attack::Probe) {
        tasks.push(tokio::spawn(prober(
            target.clone(),
            attacks.clone(),
            stop.clone(),
        )));
    }
    if let Some(url) = args.nats_url.as_ref().filter(|_| on(Attack::Forge)) {
        let (url, subject, chat) = (url.clone(), args.nats_subject.clone(), chat.to_owned());
        tasks.push(tokio::spawn(forger(
            target.clone(),
            url,
            subject,
            chat,
            attacks,
            stop,
        )));
    }
    tasks
}

async fn nul_sender(target: Target, lair: String, attacks: Arc<Attacks>, stop: CancellationToken) {
    let mut client = target.grpc().await;
    let token = target.token("mallory");
    while !stop.is_cancelled() {
        let body = pb::CreateMessageRequest {
            conversation_id: lair.clone(),
            content: "nul \0 inside".into(),
            ..Default::default()
        };
        if client
            .create_message(authorized(body, &token))
            .await
            .is_err()
        {
            attacks.nul_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds a connection that sends half a request line (HTTP) or nothing
/// (gRPC); opens another whenever the server closes it.
async fn slow_connection(addr: String, half: bool, attacks: Arc<Attacks>, stop: CancellationToken) {
    use tokio::io::AsyncReadExt;
    while !stop.is_cancelled() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if half {
            let _ = stream.write_all(b"GET /healthz HTT").await;
        }
        // Read what the server says (HTTP/2 sends its settings) until it
        // closes the connection.
        let closed = async {
            let mut buffer = [0u8; 256];
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = closed => attacks.reconnects.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Many ListConversations at once on one HTTP/2 connection.
async fn flood(target: Target, width: usize, attacks: Arc<Attacks>, stop: CancellationToken) {
    let client = target.grpc().await;
    let token = target.token("mallory");
    while !stop.is_cancelled() {
        let calls = (0..width.max(1)).map(|_| {
            let mut client = client.clone();
            let request = authorized(pb::ListConversationsRequest::default(), &token);
            async move { client.list_conversations(request).await.is_ok() }
        });
        for ok in futures_util::future::join_all(calls).await {
            match ok {
                true => attacks.flood_ok.fetch_add(1, Ordering::Relaxed),
                false => attacks.flood_refused.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Groups of strangers, large and of a new size each time (each size is
/// another SQL text for the server's statements built for lists), as fast
/// as allowed.
async fn giant_groups(target: Target, attacks: Arc<Attacks>, stop: CancellationToken) {
    let mut client = target.grpc().await;
    let token = target.token("mallory");
    let mut round = 0;
    while !stop.is_cancelled() {
        round += 1;
        let size = 999 - (round * 37) % 900;
        let participant_ids = (0..size).map(|n| format!("stranger-{round}-{n}")).collect();
        let request = authorized(pb::CreateConversationRequest { participant_ids }, &token);
        match client.create_conversation(request).await {
            Ok(_) => attacks.groups_created.fetch_add(1, Ordering::Relaxed),
            Err(_) => attacks.groups_refused.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Resumes the large history and never reads, until the attack ends.
async fn non_reader(
    addr: std::net::SocketAddr,
    path: String,
    attacks: Arc<Attacks>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(mut stream) = socket.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        attacks.resumes.fetch_add(1, Ordering::Relaxed);
        // Never read: hold the stream until the attack ends.
        stop.cancelled().await;
        drop(stream);
    }
}

/// A raw HTTP/2 connection to `addr`, driven in the background.
async fn h2_connect(addr: &str) -> Option<h2::client::SendRequest<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (client, connection) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(connection);
    client.ready().await.ok()
}

/// A gRPC request head for `path` on `addr`, without a token.
fn grpc_head(addr: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request head")
}

/// Holds an anonymous health Watch stream on a connection of its own;
/// opens another whenever the server ends it (evicted, or refused).
async fn anonymous_watch(addr: String, attacks: Arc<Attacks>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Some(mut client) = h2_connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let head = grpc_head(&addr, "/grpc.health.v1.Health/Watch");
        let Ok((response, mut body)) = client.send_request(head, false) else {
            continue;
        };
        // An empty HealthCheckRequest: the whole service.
        let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
        let held = async {
            if let Ok(response) = response.await {
                let mut stream = response.into_body();
                while let Some(Ok(_)) = stream.data().await {}
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = held => attacks.anonymous_ended.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Announces 4 MiB messages on anonymous streams and never finishes them.
async fn announcer(addr: String, attacks: Arc<Attacks>, stop: CancellationToken) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(4 * 1024 * 1024 - 1_u32).to_be_bytes());
    frame.extend_from_slice(&[0u8; 16 * 1024]);
    let frame = bytes::Bytes::from(frame);
    while !stop.is_cancelled() {
        let Some(mut client) = h2_connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for _ in 0..4 {
            let head = grpc_head(&addr, "/grpc.health.v1.Health/Watch");
            let Ok((response, mut body)) = client.send_request(head, false) else {
                break;
            };
            let _ = body.send_data(frame.clone(), false);
            let answered = tokio::time::timeout(Duration::from_secs(1), response).await;
            if matches!(answered, Ok(Ok(_))) {
                attacks.announced_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Sends request heads whose body never comes, each on a connection of its
/// own, and another whenever the server answers or closes.
async fn staller(
    addr: std::net::SocketAddr,
    token: String,
    attacks: Arc<Attacks>,
    stop: CancellationToken,
) {
    use tokio::io::AsyncReadExt;
    while !stop.is_cancelled() {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let head = format!(
            "POST /api/conversations HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let answered = async {
            let mut buffer = [0u8; 256];
            while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = answered => attacks.stalled_cut.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Opens the attacker's live event stream and never reads it, until the
/// attack ends (the server's own count says how many it closed).
async fn stuck_reader(addr: std::net::SocketAddr, path: String, stop: CancellationToken) {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(mut stream) = socket.connect(addr).await else {
        return;
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_ok() {
        stop.cancelled().await;
    }
}

/// A counter of herald's `/metrics`, read with a bare HTTP/1.1 request.
async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).await.is_err()
        || stream.read_to_string(&mut text).await.is_err()
    {
        return 0;
    }
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The attacker sends itself 16 KiB messages (printable: control
/// characters are refused) for its stuck streams to pile up.
async fn self_sender(target: Target, lair: String, stop: CancellationToken) {
    let mut client = target.grpc().await;
    let token = target.token("mallory-2");
    let content = "~".repeat(16 * 1024 - 16);
    while !stop.is_cancelled() {
        let body = pb::CreateMessageRequest {
            conversation_id: lair.clone(),
            content: content.clone(),
            ..Default::default()
        };
        let _ = client.create_message(authorized(body, &token)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes messages that claim to be the chat's next ones: the position
/// after the newest message it can see (through the chat's own history).
async fn forger(
    target: Target,
    url: String,
    subject: String,
    chat: String,
    attacks: Arc<Attacks>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    let Ok(nats) = async_nats::connect(url.as_str()).await else {
        eprintln!("the forger cannot reach NATS at {url}");
        return;
    };
    // It also records what herald publishes, to play it back.
    let signals = format!("{subject}.signals");
    let (Ok(mut heard), Ok(mut heard_signals)) = (
        nats.subscribe(subject.clone()).await,
        nats.subscribe(signals.clone()).await,
    ) else {
        return;
    };
    let mut client = target.grpc().await;
    let token = target.token("alice");
    while !stop.is_cancelled() {
        let recorded = [(&subject, &mut heard), (&signals, &mut heard_signals)];
        for (on, stream) in recorded {
            let next = tokio::time::timeout(Duration::from_millis(1), stream.next()).await;
            if let Ok(Some(message)) = next {
                let _ = nats.publish(on.clone(), message.payload).await;
                attacks.replays_published.fetch_add(1, Ordering::Relaxed);
            }
        }
        let newest = pb::ListMessagesRequest {
            conversation_id: chat.clone(),
            page_size: 1,
            ..Default::default()
        };
        let newest = client.list_messages(authorized(newest, &token)).await;
        let position = newest
            .ok()
            .and_then(|page| page.into_inner().messages.pop())
            .and_then(|message| message.id.parse::<i64>().ok())
            .unwrap_or(0);
        for ahead in 1..=3 {
            let forged = serde_json::json!({
                "position": position + ahead, "conversation_id": chat, "user_id": "alice",
                "content": "t=0 FORGED", "created_at_micros": 0
            });
            let _ = nats
                .publish(subject.clone(), forged.to_string().into())
                .await;
            attacks.forged_published.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts the ordinary users in a group of the attacker's and asks whether
/// they are online: by consent, they are never told (they took no part).
async fn prober(target: Target, attacks: Arc<Attacks>, stop: CancellationToken) {
    let mut client = target.grpc().await;
    let token = target.token("mallory");
    let targets = vec!["alice".to_owned(), "bob".to_owned()];
    while !stop.is_cancelled() {
        let group = pb::CreateConversationRequest {
            participant_ids: targets
                .iter()
                .cloned()
                .chain(["mallory-2".into()])
                .collect(),
        };
        let _ = client.create_conversation(authorized(group, &token)).await;
        let asked = pb::GetPresenceRequest {
            user_ids: targets.clone(),
        };
        if let Ok(answer) = client.get_presence(authorized(asked, &token)).await {
            let presences = answer.into_inner().presences;
            let online = presences.iter().filter(|presence| presence.online).count();
            attacks
                .presence_leaked
                .fetch_add(online as u64, Ordering::Relaxed);
        }
        attacks.probes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the ordinary users saw.
struct Report {
    lost: usize,
    duplicated: usize,
    forged: usize,
    /// p50 and p99 in milliseconds, before and during the attack, and
    /// during it after its first second (when every attacker has started).
    alone: (f64, f64),
    attacked: (f64, f64),
    steady: (f64, f64),
}

impl Report {
    fn of(sent: &[u64], listeners: &[&Arc<Tally>], attack_started: u64) -> Self {
        let sent: HashSet<u64> = sent.iter().copied().collect();
        let (mut lost, mut duplicated, mut forged) = (0, 0, 0);
        let (mut alone, mut attacked, mut steady) = (Vec::new(), Vec::new(), Vec::new());
        for listener in listeners {
            let seen = listener.seen.lock().unwrap_or_else(|p| p.into_inner());
            let distinct: HashSet<u64> = seen.iter().map(|(n, _, _)| *n).collect();
            duplicated += seen.len() - distinct.len();
            lost += sent.difference(&distinct).count();
            forged += distinct.difference(&sent).count() + listener.forged.load(Ordering::Relaxed);
            for (_, sent_at, latency) in seen.iter() {
                match *sent_at < attack_started {
                    true => alone.push(*latency),
                    false => attacked.push(*latency),
                }
                if *sent_at >= attack_started + 1_000_000 {
                    steady.push(*latency);
                }
            }
        }
        let quantiles = |mut latencies: Vec<u64>| {
            latencies.sort_unstable();
            (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99))
        };
        Self {
            lost,
            duplicated,
            forged,
            alone: quantiles(alone),
            attacked: quantiles(attacked),
            steady: quantiles(steady),
        }
    }
}
