//! Delivery guarantees under stress: concurrent writers with resuming
//! readers, retries, slow consumers, shutdown with writes in flight, and
//! database connections killed mid-run.

use crate::support::{
    PATIENCE, Process, TestDb, authorized, code, eventually, metric, mint, open_sse, rss_kib,
    spawn_app,
};
use futures_util::StreamExt;
use herald::pb::{self, messenger_client::MessengerClient};
use std::{sync::Mutex, time::Duration};
use tonic::{Code, transport::Channel};

/// Every message of a conversation, oldest first: pages from the newest
/// back with `before_id`.
async fn whole_history(
    client: &mut MessengerClient<Channel>,
    bearer: &str,
    conversation_id: &str,
) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    loop {
        let request = pb::ListMessagesRequest {
            conversation_id: conversation_id.into(),
            page_size: 500,
            before_id: ids.first().cloned().unwrap_or_default(),
            ..Default::default()
        };
        let page = client
            .list_messages(authorized(request, bearer))
            .await
            .unwrap()
            .into_inner()
            .messages;
        if page.is_empty() {
            return ids;
        }
        ids.splice(0..0, page.into_iter().map(|m| m.id));
    }
}

async fn four_writers_and_a_reader_resuming_every_fifty_agree_with_history(db: TestDb) {
    const PER_WRITER: usize = 500;
    let app = spawn_app(&db).await;
    let writers = ["w1", "w2", "w3", "w4"];
    let first = app.user(writers[0]).await;
    let group = first
        .create_conversation(&["w2", "w3", "w4", "reader"])
        .await
        .unwrap();
    let reader_token = app.token("reader");

    let write = |name: &'static str| {
        let (app, group) = (&app, group.id.clone());
        async move {
            let user = app.user(name).await;
            for n in 1..=PER_WRITER {
                user.send(&group, &format!("{name}-{n}")).await.unwrap();
            }
        }
    };
    // The reader's first stream is live only (no Last-Event-ID), so it must
    // be subscribed before the first message is sent: opened here, before
    // the writers start (its headers come once it is registered).
    let mut first_stream = Some(open_sse(app.sse_request(&reader_token)).await);
    let read = async {
        let mut received: Vec<String> = Vec::new();
        let mut starts: Vec<Option<String>> = Vec::new();
        let mut resumes = 0;
        while received.len() < writers.len() * PER_WRITER {
            starts.push(received.last().cloned());
            let mut stream = match first_stream.take() {
                Some(stream) => stream,
                None => {
                    let last = received.last().cloned().unwrap_or_default();
                    resumes += 1;
                    open_sse(app.sse_request(&reader_token).header("last-event-id", last)).await
                }
            };
            for _ in 0..50 {
                if received.len() == writers.len() * PER_WRITER {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_secs(15), stream.next_message());
                let Ok(message) = next.await else {
                    let metrics = reqwest::get(app.url("/metrics"))
                        .await
                        .unwrap()
                        .text()
                        .await;
                    // What a fresh resume from the same point gets now, and
                    // what history holds after it: tells a replay that
                    // missed committed messages from a feed that never
                    // delivered them.
                    let last = received.last().cloned().unwrap_or_default();
                    let mut again = open_sse(
                        app.sse_request(&reader_token)
                            .header("last-event-id", &last),
                    )
                    .await;
                    let mut replayed_now = Vec::new();
                    while let Ok(message) =
                        tokio::time::timeout(Duration::from_secs(2), again.next_message()).await
                    {
                        replayed_now.push(message.id);
                    }
                    let mut client = MessengerClient::new(app.channel().await);
                    let bearer = format!("Bearer {}", app.token("w1"));
                    let history = whole_history(&mut client, &bearer, &group.id).await;
                    let after: Vec<_> = history
                        .iter()
                        .skip_while(|id| **id != last)
                        .skip(1)
                        .collect();
                    let missing: Vec<_> =
                        history.iter().filter(|id| !received.contains(id)).collect();
                    let around: Vec<_> = missing
                        .iter()
                        .filter_map(|id| history.iter().position(|h| h == *id))
                        .map(|at| &history[at.saturating_sub(3)..(at + 4).min(history.len())])
                        .collect();
                    panic!(
                        "no message for 15 s after {} received (last {last}), {resumes} resumes; \
                         history after it: {after:?}; a fresh resume now gets {replayed_now:?}; \
                         missing {missing:?}, around them in history {around:?}; \
                         streams began after {starts:?}; this stream's last ids: {:?}; server:\n{}",
                        received.len(),
                        &received[received.len().saturating_sub(5)..],
                        metrics.unwrap_or_default()
                    );
                };
                received.push(message.id);
            }
        }
        (received, resumes)
    };
    let (received, resumes) = tokio::join!(
        async { tokio::join!(write("w1"), write("w2"), write("w3"), write("w4")) },
        read
    )
    .1;

    eprintln!(
        "{} messages from 4 writers, {resumes} resumes with Last-Event-ID",
        received.len()
    );
    assert!(resumes >= 39, "the reader resumed {resumes} times");
    let mut client = MessengerClient::new(app.channel().await);
    let bearer = format!("Bearer {}", app.token("w1"));
    assert_eq!(
        received,
        whole_history(&mut client, &bearer, &group.id).await
    );
}

async fn a_retried_send_returns_the_original_message_once(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut bobs = app.user("bob").await.subscribe("").await.unwrap();
    let mut client = MessengerClient::new(app.channel().await);
    let send = |key: &str, content: &str| {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.id.clone(),
            content: content.into(),
            client_message_id: key.into(),
            ..Default::default()
        };
        alice.request(body)
    };

    // Ten concurrent retries of one send, as a flaky network would make them.
    let attempts = (0..10).map(|_| {
        let mut client = client.clone();
        let request = send("key-1", "hello once");
        async move { client.create_message(request).await.unwrap().into_inner() }
    });
    let results = futures_util::future::join_all(attempts).await;
    let again = client
        .create_message(send("key-1", "hello once"))
        .await
        .unwrap()
        .into_inner();
    let reused = client.create_message(send("key-1", "something else")).await;

    assert!(results.iter().all(|message| *message == again));
    assert_eq!(code(reused), Code::InvalidArgument);
    let rest = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{}/messages", conversation.id)))
        .bearer_auth(app.token("alice"))
        .header("idempotency-key", "key-1")
        .json(&serde_json::json!({ "content": "hello once" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.json::<pb::Message>().await.unwrap(), again);
    let alice_bearer = format!("Bearer {}", app.token("alice"));
    assert_eq!(
        whole_history(&mut client, &alice_bearer, &conversation.id).await,
        std::slice::from_ref(&again.id)
    );
    let other = alice.send(&conversation.id, "next").await.unwrap();
    assert_eq!(crate::support::next_message(&mut bobs).await, again);
    assert_eq!(
        crate::support::next_message(&mut bobs).await,
        other,
        "delivered once"
    );
}

/// Sends as `user` through `node` until told to stop or a call fails;
/// returns the ids of acknowledged messages.
async fn write_until_refused(
    client: &mut MessengerClient<Channel>,
    bearer: &str,
    conversation: &str,
    limit: usize,
) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for n in 0..limit {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.into(),
            content: format!("m-{n}"),
            ..Default::default()
        };
        match client.create_message(authorized(body, bearer)).await {
            Ok(message) => acknowledged.push(message.into_inner().id),
            Err(_) => break,
        }
    }
    acknowledged
}

async fn database_connections_killed_mid_run_lose_nothing_acknowledged(db: TestDb) {
    let Some(admin) = std::env::var("HERALD_TEST_DATABASE_URL")
        .ok()
        .filter(|_| db.url.starts_with("postgres"))
    else {
        return eprintln!("skipped: only PostgreSQL connections can be killed from outside");
    };
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut bobs = app.user("bob").await.subscribe("").await.unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();

    // Four writers keep sends in flight while every connection is killed,
    // over and over, for half of the run.
    let (acknowledged, refused) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let writer = |w: usize| {
        let (alice, conversation) = (&alice, &conversation.id);
        let (acknowledged, refused) = (&acknowledged, &refused);
        async move {
            for n in 0..100 {
                match alice.send(conversation, &format!("w{w}-{n}")).await {
                    Ok(message) => acknowledged.lock().unwrap().push(message.id),
                    Err(status) => refused.lock().unwrap().push(status),
                }
            }
        }
    };
    let done = || acknowledged.lock().unwrap().len() + refused.lock().unwrap().len();
    let killer = async {
        let mut kills = 0;
        while done() < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // From a quarter to three quarters of the way, again and again.
        while done() < 300 {
            kills += terminate_connections(&admin, &name).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kills
    };
    let (kills, ..) = tokio::join!(killer, writer(0), writer(1), writer(2), writer(3));
    let (acknowledged, refused) = (
        acknowledged.into_inner().unwrap(),
        refused.into_inner().unwrap(),
    );

    eprintln!(
        "{} acknowledged, {} refused while {kills} connections were killed with sends in flight",
        acknowledged.len(),
        refused.len()
    );
    assert!(kills >= 3, "connections were killed");
    assert!(
        refused
            .iter()
            .all(|status| status.code() == Code::Unavailable),
        "{refused:?}"
    );
    assert!(
        !refused.is_empty(),
        "some sends were in flight when their connection died"
    );
    // Once the killing stops, every send succeeds again, at once.
    let mut acknowledged = acknowledged;
    for n in 0..20 {
        let message = alice.send(&conversation.id, &format!("after-{n}")).await;
        acknowledged.push(message.expect("herald recovered").id);
    }
    let mut client = MessengerClient::new(app.channel().await);
    let history = whole_history(
        &mut client,
        &format!("Bearer {}", app.token("alice")),
        &conversation.id,
    )
    .await;
    assert!(acknowledged.iter().all(|id| history.contains(id)));
    let mut received = Vec::new();
    while received.len() < history.len() {
        received.push(crate::support::next_message(&mut bobs).await.id);
    }
    assert_eq!(
        received, history,
        "the live subscriber saw every committed message in order"
    );
}

/// Terminates every connection to `database` but the caller's own.
async fn terminate_connections(admin_url: &str, database: &str) -> usize {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let done: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    done.into_iter().filter(|terminated| *terminated).count()
}

const SECRET: &str = "guarantees-secret-0123456789abcdef0123456789abcdef";

fn bearer(user: &str) -> String {
    format!("Bearer {}", mint(SECRET, user))
}

async fn pair(node: &Process) -> String {
    let request = authorized(
        pb::CreateConversationRequest {
            participant_ids: vec!["bob".into()],
        },
        &bearer("alice"),
    );
    node.client()
        .await
        .create_conversation(request)
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_writers_in_flight_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let conversation = pair(&herald).await;
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (mut client, conversation) = (herald.client().await, conversation.clone());
        writers.push(tokio::spawn(async move {
            write_until_refused(&mut client, &bearer("alice"), &conversation, 100_000).await
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (exit, _) = herald.terminate().await;
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }

    assert!(exit.success(), "{exit:?}");
    eprintln!(
        "{} messages acknowledged before SIGTERM stopped the writers",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let mut client = herald.client().await;
    let stored = whole_history(&mut client, &bearer("alice"), &conversation).await;
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    herald.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stopped_costs_bounded_memory_and_holds_up_no_one() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let conversation = pair(&herald).await;
    let pid = herald.child.id().unwrap();
    let bob = bearer("bob");
    let bob = bob.trim_start_matches("Bearer ");
    // Bob's stuck tab: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(herald.http.parse().unwrap()).await.unwrap();
    let request =
        format!("GET /api/messages?token={bob} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n");
    stuck.write_all(request.as_bytes()).await.unwrap();
    let live = reqwest::Client::new()
        .get(format!("http://{}/api/messages", herald.http))
        .header("accept", "text/event-stream")
        .bearer_auth(bob);
    let mut live = open_sse(live).await;
    let open = "herald_subscriptions_open{transport=\"sse\"}";
    let lagged = "herald_subscriptions_dropped_lagging_total";
    assert!(
        eventually(|| async { metric(&herald.http, open).await == 2.0 }).await,
        "the stuck reader is subscribed"
    );
    let before = rss_kib(pid);

    // 12 MiB: more than the stream's queue (1,024 messages) and the
    // kernel's socket buffers (4 MiB here) can hold.
    let mut client = herald.client().await;
    let four_kib = "k".repeat(4096);
    let send = async {
        for n in 0..3_000 {
            let body = pb::CreateMessageRequest {
                conversation_id: conversation.clone(),
                content: format!("{n} {four_kib}"),
                ..Default::default()
            };
            client
                .create_message(authorized(body, &bearer("alice")))
                .await
                .unwrap();
        }
    };
    let read = async {
        for n in 0..3_000 {
            let message = live.next_message().await;
            assert!(message.content.starts_with(&format!("{n} ")));
        }
    };
    tokio::join!(send, read);
    let grown = rss_kib(pid).saturating_sub(before);
    // Dropped from the hub: its queue takes no more. (Its connection stays
    // open, with what was queued, until the client reads or goes away:
    // nothing writes to a socket that takes nothing.)
    assert!(
        eventually(|| async { metric(&herald.http, lagged).await == 1.0 }).await,
        "the stuck reader was dropped: {} dropped",
        metric(&herald.http, lagged).await,
    );
    drop(stuck);

    eprintln!("server RSS grew by {grown} KiB while 3,000 messages of 4 KiB passed a stuck reader");
    assert!(grown < 24 * 1024, "RSS grew by {grown} KiB");
    herald.terminate().await;
}

#[tokio::test]
async fn hostile_input_gets_clear_errors_and_the_server_stays_up() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = spawn_app(&db).await;
    let client = reqwest::Client::new();
    let alice = app.token("alice");
    let conversation = app
        .user("alice")
        .await
        .create_conversation(&["bob"])
        .await
        .unwrap();
    let path = app.url(&format!("/api/conversations/{}/messages", conversation.id));

    // Half-open: a request that never finishes, held open throughout.
    let mut half_open = tokio::net::TcpStream::connect(app.http).await.unwrap();
    half_open
        .write_all(b"POST /api/conversations HTTP/1.1\r\nContent-Len")
        .await
        .unwrap();
    // A client that asks for a stream and vanishes.
    let mut vanished = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let request = format!(
        "GET /api/messages?token={alice} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    vanished.write_all(request.as_bytes()).await.unwrap();
    drop(vanished);

    let invalid_utf8 = client
        .post(&path)
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(b"{\"content\": \"\xff\xfe\"}".to_vec());
    assert_eq!(invalid_utf8.send().await.unwrap().status(), 400);
    let megabyte_token = "a".repeat(1024 * 1024);
    let huge_header = client
        .get(app.url("/api/conversations"))
        .bearer_auth(&megabyte_token)
        .send()
        .await;
    assert!(huge_header.is_err() || huge_header.unwrap().status() == 431);
    // reqwest will not even build a 1 MiB URI: send the request line raw.
    let mut raw = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let request = format!("GET /api/messages?token={megabyte_token} HTTP/1.1\r\nhost: x\r\n\r\n");
    let (mut reader, mut writer) = raw.split();
    let (_, answer) = tokio::join!(writer.write_all(request.as_bytes()), async {
        let mut answer = vec![0u8; 64];
        let read = tokio::io::AsyncReadExt::read(&mut reader, &mut answer).await;
        answer.truncate(read.unwrap_or(0));
        String::from_utf8_lossy(&answer).into_owned()
    });
    // hyper says 414 or 431, by how much of the line it has buffered.
    assert!(
        answer.starts_with("HTTP/1.1 414 ") || answer.starts_with("HTTP/1.1 431 "),
        "a 1 MiB URI is refused as too long: {answer:?}"
    );
    // Under the head limit (32 KiB) but over the token limit (8 KiB):
    // refused as any bad token, without being parsed.
    let long_token = "a".repeat(24 * 1024);
    let long_query = client
        .get(app.url(&format!("/api/messages?token={long_token}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(long_query.status(), 401);
    let bad_resume = app
        .sse_request(&alice)
        .header("last-event-id", "1\t2")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_resume.status(), 400);
    let big_grpc_token = authorized(
        pb::ListConversationsRequest::default(),
        &format!("Bearer {}", "a".repeat(64 * 1024)),
    );
    let refused = MessengerClient::new(app.channel().await)
        .list_conversations(big_grpc_token)
        .await;
    assert!(refused.is_err());

    // Still serving everyone else, and nothing left behind.
    let ok = client
        .post(&path)
        .bearer_auth(&alice)
        .json(&serde_json::json!({ "content": "still here" }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    assert!(app.user("bob").await.conversations().await.is_ok());
    app.wait_for_subscriptions(0).await;
}

/// A TCP proxy in front of PostgreSQL that the test can take down (closing
/// every connection and refusing new ones) and bring back.
struct Outage {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = watch.subscribe();
                if !*state.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

async fn a_database_outage_answers_unavailable_and_herald_recovers_by_itself(db: TestDb) {
    if !db.url.starts_with("postgres") {
        return eprintln!("skipped: the outage is staged between herald and PostgreSQL");
    }
    let rest = db.url.split_once("://").unwrap().1;
    let (credentials, after) = rest.split_once('@').unwrap_or(("", rest));
    let (host, path) = after.split_once('/').unwrap();
    let outage = Outage::start(host.to_owned()).await;
    let credentials = if credentials.is_empty() {
        String::new()
    } else {
        format!("{credentials}@")
    };
    let proxied = TestDb {
        url: format!("postgres://{credentials}{}/{path}", outage.addr),
        ..db
    };
    let app = spawn_app(&proxied).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut bobs = app.user("bob").await.subscribe("").await.unwrap();
    let before = alice.send(&conversation.id, "before").await.unwrap();

    let ready = |app: &crate::support::TestApp| reqwest::get(app.url("/readyz"));
    assert_eq!(ready(&app).await.unwrap().status(), 200);
    outage.set(false);
    let during = alice.send(&conversation.id, "during").await;
    let not_ready = ready(&app).await.unwrap().status();
    let rest_during = reqwest::Client::new()
        .get(app.url("/api/conversations"))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    outage.set(true);
    let back = std::time::Instant::now();
    let after = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(message) = alice.send(&conversation.id, "after").await {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("herald recovers once the database is back");
    eprintln!(
        "first successful send {:?} after the database came back",
        back.elapsed()
    );

    eprintln!(
        "during the outage: {during:?}, REST {}",
        rest_during.status()
    );
    assert_eq!(code(during), Code::Unavailable);
    assert_eq!(rest_during.status(), 503);
    assert_eq!(not_ready, 503, "/readyz says the database is gone");
    assert_eq!(ready(&app).await.unwrap().status(), 200);
    assert_eq!(crate::support::next_message(&mut bobs).await, before);
    assert_eq!(crate::support::next_message(&mut bobs).await, after);
}

async fn ten_thousand_missed_messages_replay_and_one_more_resets(db: TestDb) {
    const LIMIT: usize = 10_000;
    let app = crate::support::spawn_app_with(&db, |config| {
        config.rate_limit = 1e9;
        config.rate_burst = 1e9;
    })
    .await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let start = alice.send(&conversation.id, "start").await.unwrap();
    let mut client = MessengerClient::new(app.channel().await);
    let sends = (1..=LIMIT).map(|n| {
        let mut client = client.clone();
        let request = alice.request(pb::CreateMessageRequest {
            conversation_id: conversation.id.clone(),
            content: format!("m-{n}"),
            ..Default::default()
        });
        async move { client.create_message(request).await.map(|_| ()) }
    });
    let sent = futures_util::stream::iter(sends)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(sent.iter().all(Result::is_ok));

    let bob = app.user("bob").await;
    let mut replay = bob.subscribe(&start.id).await.unwrap();
    let mut replayed = Vec::with_capacity(LIMIT);
    for _ in 0..LIMIT {
        replayed.push(crate::support::next_message(&mut replay).await.id);
    }
    drop(replay);
    let bearer = format!("Bearer {}", app.token("bob"));
    let history = whole_history(&mut client, &bearer, &conversation.id).await;
    assert_eq!(replayed, history[1..]);

    alice.send(&conversation.id, "one more").await.unwrap();
    assert_eq!(code(bob.subscribe(&start.id).await), Code::OutOfRange);
    let mut sse = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", &start.id),
    )
    .await;
    assert_eq!(sse.next_event().await.unwrap().event, "reset");
}

on_every_backend!(
    ten_thousand_missed_messages_replay_and_one_more_resets,
    four_writers_and_a_reader_resuming_every_fifty_agree_with_history,
    a_retried_send_returns_the_original_message_once,
    database_connections_killed_mid_run_lose_nothing_acknowledged,
    a_database_outage_answers_unavailable_and_herald_recovers_by_itself,
);

/// SQLite's log is copied into the database file soon after commits, off
/// the writer's path, and then starts again from the top: after several
/// bursts of sends with pauses between them it is about as large as one
/// burst made it, not the sum of them (SQLite's own checkpoint, here only
/// a backstop at 10,000 pages, would never have run).
#[tokio::test]
async fn sqlites_log_is_copied_into_the_file_between_bursts_and_reused() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.rate_limit = 10_000.0;
        config.rate_burst = 10_000.0;
    })
    .await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let dir = db._dir.as_ref().unwrap().path().to_owned();
    let log_size = || std::fs::metadata(dir.join("herald.db-wal")).map_or(0, |m| m.len());
    let burst = |round: usize| {
        let (alice, chat) = (&alice, &chat);
        async move {
            // 100 sends, 25 at a time (a user has 64 requests in flight at
            // most); about a page each: a burst writes a few hundred pages.
            for part in 0..4 {
                let sends = (0..25).map(|n| async move {
                    let content = format!("{round}-{part}-{n} {}", "x".repeat(3_000));
                    alice.send(chat, &content).await.unwrap();
                });
                futures_util::future::join_all(sends).await;
            }
        }
    };
    burst(0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = log_size();
    // The file's size is its high-water mark: at least one burst long.
    assert!(
        first > 100 * 3_000,
        "the log is {first} bytes after a burst"
    );
    for round in 1..5 {
        burst(round).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last = log_size();
    assert!(
        last < 2 * first,
        "the log grew from {first} to {last} bytes over five bursts: it was not reused"
    );
    app.stop().await;
}
