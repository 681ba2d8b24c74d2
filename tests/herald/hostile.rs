//! Hostile clients: what one user sends must not hurt another user, exhaust
//! the server, or forge a message. Each test names the attack it repels.

use crate::support::{Process, TestDb, authorized, call, code, metric, mint, rss_kib, spawn_app};
use herald::pb;
use reqwest::Method;
use sqlx::Connection;
use tonic::Code;

/// Makes the database refuse any message whose content is `poison`, as it
/// would refuse a value it cannot store.
async fn poison_the_database(db: &TestDb) {
    if db.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.content = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned message'); END",
        )
        .execute(&mut connection)
        .await
        .unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(
            "CREATE FUNCTION poison() RETURNS trigger AS $$
             BEGIN
                 IF NEW.content = 'poison' THEN
                     -- Slow, so that other sends queue into the next batch.
                     PERFORM pg_sleep(0.02);
                     RAISE EXCEPTION 'poisoned message';
                 END IF;
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER poison BEFORE INSERT ON messages
                 FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .execute(&mut connection)
        .await
        .unwrap();
    }
}

async fn content_with_nul_is_refused_at_every_door(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    assert_eq!(
        code(alice.send(&chat.id, "a\0b").await),
        Code::InvalidArgument
    );
    let response = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{}/messages", chat.id)))
        .bearer_auth(app.token("alice"))
        .json(&serde_json::json!({ "content": "nul \u{0} inside" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("U+0000"), "{body}");
    alice.send(&chat.id, "still fine").await.unwrap();
    app.stop().await;
}

async fn a_message_the_database_refuses_fails_alone_and_its_batch_mates_commit(db: TestDb) {
    const ORDINARY: usize = 4 * 150;
    const POISONED: usize = 60;
    let app = spawn_app(&db).await;
    poison_the_database(&db).await;
    let bob = app.user("bob").await;
    let group = bob
        .create_conversation(&["mallory", "carol"])
        .await
        .unwrap();
    let send_all = |name: &'static str, content: &'static str, count: usize| {
        let (app, group) = (&app, group.id.clone());
        async move {
            let user = app.user(name).await;
            let mut codes = Vec::with_capacity(count);
            for n in 0..count {
                let content = match content {
                    "" => format!("{name}-{n}"),
                    fixed => fixed.to_owned(),
                };
                let sent = user.send(&group, &content).await;
                codes.push(sent.map_or_else(|status| status.code(), |_| Code::Ok));
            }
            codes
        }
    };
    // Many writers at once, so poisoned messages share batches with others.
    let ordinary = (0..8).map(|n| send_all(["bob", "carol"][n % 2], "", ORDINARY / 8));
    let poisoned = (0..4).map(|_| send_all("mallory", "poison", POISONED / 4));
    let (ordinary, poisoned) = tokio::join!(
        futures_util::future::join_all(ordinary),
        futures_util::future::join_all(poisoned)
    );
    let ordinary = ordinary.concat();
    let refused = ordinary.iter().filter(|c| **c != Code::Ok).count();
    assert_eq!(refused, 0, "ordinary sends refused: {ordinary:?}");
    assert!(
        poisoned.concat().iter().all(|c| *c == Code::Unavailable),
        "every poisoned send fails"
    );
    let mut history = 0;
    let mut before = String::new();
    loop {
        let page = bob
            .messages(herald::pb::ListMessagesRequest {
                conversation_id: group.id.clone(),
                page_size: 500,
                before_id: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(first) = page.first() else { break };
        before = first.id.clone();
        assert!(page.iter().all(|m| m.content != "poison"));
        history += page.len();
    }
    assert_eq!(history, ORDINARY);
    app.stop().await;
}

/// A secret for tests that run the real binary.
const SECRET: &str = "hostile-clients-test-secret-of-32-bytes-or-more";

fn bearer(user: &str) -> String {
    format!("Bearer {}", mint(SECRET, user))
}

/// A gRPC client of `herald` and the conversation of alice and bob.
async fn alice_and_bob(
    herald: &Process,
) -> (
    pb::messenger_client::MessengerClient<tonic::transport::Channel>,
    String,
) {
    let mut client = herald.client().await;
    let create = pb::CreateConversationRequest {
        participant_ids: vec!["bob".into()],
    };
    let chat = client
        .create_conversation(authorized(create, &bearer("alice")))
        .await
        .unwrap()
        .into_inner()
        .id;
    (client, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_streams_that_never_read_hold_a_page_not_their_whole_replay() {
    const MISSED: usize = 1_000;
    const STREAMS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let (mut client, chat) = alice_and_bob(&herald).await;
    let send = |content: String| pb::CreateMessageRequest {
        conversation_id: chat.clone(),
        content,
        ..Default::default()
    };
    let first = client
        .create_message(authorized(send("first".into()), &bearer("alice")))
        .await
        .unwrap()
        .into_inner()
        .id;
    // 16 MB that bob missed, in messages of the largest size.
    let filler = "m".repeat(16 * 1024 - 8);
    for n in 0..MISSED {
        let request = authorized(send(format!("{n:>6} {filler}")), &bearer("alice"));
        client.create_message(request).await.unwrap();
    }
    let pid = herald.child.id().unwrap();
    let before = rss_kib(pid);
    let token = mint(SECRET, "bob");
    let path = format!("/api/messages?token={token}&lastEventId={first}");
    let mut stuck = Vec::new();
    for _ in 0..STREAMS {
        stuck.push(crate::support::stuck_sse(&herald.http, &path, "").await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!(
        "{STREAMS} streams resuming {MISSED} missed 16 KiB messages without reading: server RSS grew by {grown} KiB"
    );
    // Holding each replay whole would take 16 x 16 MiB.
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    drop(stuck);
    herald.terminate().await;
}

/// Reads from `stream` until the server closes it; panics if it has not
/// within `within`. Returns what was read.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read_all = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .expect("the server closes the connection in time");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_half_a_request_or_nothing_are_closed() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.header_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let patience = std::time::Duration::from_secs(5);
    // Half a request line on the HTTP port.
    let mut half = tokio::net::TcpStream::connect(app.http).await.unwrap();
    half.write_all(b"GET /healthz HTT").await.unwrap();
    // Half the head of a stream request (served without hyper).
    let mut half_stream = tokio::net::TcpStream::connect(app.http).await.unwrap();
    half_stream
        .write_all(b"GET /api/messages?token=t HTTP/1.1\r\nAccept: text/ev")
        .await
        .unwrap();
    // Nothing at all on either port.
    let mut silent_http = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let mut silent_grpc = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    // An HTTP/2 preface, then no stream.
    let mut idle_h2 = tokio::net::TcpStream::connect(app.grpc).await.unwrap();
    idle_h2.write_all(PREFACE).await.unwrap();

    closed_within(&mut half, patience).await;
    closed_within(&mut half_stream, patience).await;
    closed_within(&mut silent_http, patience).await;
    closed_within(&mut silent_grpc, patience).await;
    closed_within(&mut idle_h2, patience).await;
    // Those who ask in time are served.
    let healthy = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200);
    app.stop().await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The server's SETTINGS_MAX_CONCURRENT_STREAMS on an HTTP/2 connection to
/// `addr`, read from its first SETTINGS frame.
async fn advertised_max_streams(addr: std::net::SocketAddr) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.unwrap();
        let (kind, ack) = (head[3], head[4] & 1 == 1);
        if kind != 4 || ack {
            continue;
        }
        return payload.chunks_exact(6).find_map(|setting| {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            (id == 3).then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_advertise_the_configured_number_of_http2_streams() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| config.http2_max_streams = 37).await;
    for addr in [app.grpc, app.http] {
        assert_eq!(advertised_max_streams(addr).await, Some(37), "{addr}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_cap_make_room_and_busy_ones_are_kept() {
    const CAP: usize = 8;
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.max_connections = Some(CAP);
    })
    .await;
    // A flood of connections that never send anything fills the cap...
    let mut idle = Vec::new();
    for _ in 0..CAP * 2 {
        idle.push(tokio::net::TcpStream::connect(app.http).await.unwrap());
    }
    // ...yet a health check gets through, in the place of an idle one.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let healthy = fresh().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    assert!(app.connections().evicted_total() >= CAP as u64);
    // Streams are busy connections: at the cap, nobody takes their place.
    let token = app.token("bob");
    let mut streams = Vec::new();
    for _ in 0..CAP {
        streams.push(
            crate::support::stuck_sse(
                &app.http.to_string(),
                &format!("/api/messages?token={token}"),
                "",
            )
            .await,
        );
    }
    assert!(fresh().get(app.url("/healthz")).send().await.is_err());
    assert!(app.connections().refused_total() >= 1);
    streams.pop();
    let healthy = crate::support::eventually(|| async {
        fresh().get(app.url("/healthz")).send().await.is_ok()
    })
    .await;
    assert!(healthy, "a closed stream frees its place");
    app.stop().await;
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(crate::support::SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn a_token_not_yet_valid_is_refused_and_any_expiry_is_handled(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let year = 365 * 24 * 3600;
    let early = hs256(
        serde_json::json!({ "sub": "bob", "exp": now_secs() + 2 * year, "nbf": now_secs() + year }),
    );
    let early = crate::support::User::with_token(&app, early).await;
    assert_eq!(code(early.conversations().await), Code::Unauthenticated);

    // An `exp` at the end of time: the stream opens and is clamped.
    let forever = hs256(serde_json::json!({ "sub": "bob", "exp": u64::MAX }));
    let bob = crate::support::User::with_token(&app, forever.clone()).await;
    let mut stream = bob.subscribe("").await.unwrap();
    let sse = reqwest::Client::new()
        .get(app.url("/api/messages"))
        .header("accept", "text/event-stream")
        .bearer_auth(&forever);
    let mut sse = crate::support::open_sse(sse).await;
    let sent = alice.send(&chat.id, "to the end of time").await.unwrap();
    assert_eq!(crate::support::next_message(&mut stream).await, sent);
    assert_eq!(sse.next_message().await, sent);
    app.stop().await;
}

async fn a_stream_ticket_opens_one_stream_only(db: TestDb) {
    let app = spawn_app(&db).await;
    let client = reqwest::Client::new();
    let (_, issued) = call(
        &app,
        &app.token("bob"),
        Method::POST,
        "/api/stream-tickets",
        None,
    )
    .await;
    let ticket = issued["ticket"].as_str().unwrap();
    let open = || {
        client
            .get(app.url(&format!("/api/messages?token={ticket}")))
            .header("accept", "text/event-stream")
            .send()
    };
    // A request the stream refuses anyway (not EventSource) does not use
    // the ticket up.
    let not_sse = client
        .get(app.url(&format!("/api/messages?token={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(not_sse.status(), 406);
    let first = open().await.unwrap();
    assert_eq!(first.status(), 200);
    let again = open().await.unwrap();
    assert_eq!(again.status(), 401);
    drop(first);
    app.stop().await;
}

async fn a_cookie_changes_state_only_from_the_pages_own_or_allowed_origins(db: TestDb) {
    let app = crate::support::spawn_app_with(&db, |config| {
        config.cors_origin = vec!["http://allowed.example".into()];
    })
    .await;
    let cookie = format!("herald_token={}", app.token("alice"));
    let create = |origin: Option<String>| {
        let request = reqwest::Client::new()
            .post(app.url("/api/conversations"))
            .header("cookie", &cookie)
            .json(&serde_json::json!({ "participantIds": ["bob"] }));
        let request = match origin {
            Some(origin) => request.header("origin", origin),
            None => request,
        };
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(create(Some("http://evil.example".into())).await, 401);
    assert_eq!(create(None).await, 401);
    assert_eq!(create(Some(format!("http://{}", app.http))).await, 201);
    assert_eq!(create(Some("http://allowed.example".into())).await, 200);
    // Over HTTP/2 there is no Host header, only :authority: the page's own
    // origin is still its own.
    let over_http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(app.url("/api/conversations"))
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", app.http))
        .json(&serde_json::json!({ "participantIds": ["carol"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(over_http2.version(), reqwest::Version::HTTP_2);
    assert_eq!(over_http2.status(), 201);
    // Reading with the cookie needs no Origin.
    let listed = reqwest::Client::new()
        .get(app.url("/api/conversations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    app.stop().await;
}

on_every_backend!(
    membership_churn_in_a_large_group_is_paid_for_by_its_size,
    content_with_nul_is_refused_at_every_door,
    a_message_the_database_refuses_fails_alone_and_its_batch_mates_commit,
    a_token_not_yet_valid_is_refused_and_any_expiry_is_handled,
    a_stream_ticket_opens_one_stream_only,
    a_cookie_changes_state_only_from_the_pages_own_or_allowed_origins,
    expensive_calls_are_metered_per_user_and_groups_are_bounded,
    calls_sent_at_once_pay_for_large_answers_before_more_are_let_in,
    conversations_come_in_pages_that_fit_a_grpc_message,
    a_forged_or_garbled_notification_does_not_stall_the_feed,
    signals_on_postgresql_are_sealed_against_any_role_that_can_connect,
    typing_is_told_to_other_nodes_in_batches,
    retries_of_one_send_in_flight_together_commit_once,
);

#[tokio::test]
async fn a_short_secret_is_refused_at_start_and_a_secret_file_keeps_it_out_of_ps() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::support::herald_command()
        .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(["--jwt-secret", "too-short"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");

    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let output = crate::support::herald_command()
        .args(["token", "alice", "--jwt-secret-file"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let auth = herald::Auth::hs256(SECRET.as_bytes());
    assert_eq!(auth.verify(token.trim()).unwrap().user.as_str(), "alice");
}

async fn expensive_calls_are_metered_per_user_and_groups_are_bounded(db: TestDb) {
    let app = crate::support::spawn_app_with(&db, |config| {
        config.call_rate_limit = 0.0;
        config.call_rate_burst = 5.0;
    })
    .await;
    let (mallory, bob) = (app.user("mallory").await, app.user("bob").await);
    let others: Vec<String> = (0..1_000).map(|n| format!("user-{n}")).collect();
    // A thousand others and the caller: one more than a group may hold.
    assert_eq!(
        code(mallory.create_conversation(&others).await),
        Code::InvalidArgument
    );
    for _ in 0..5 {
        mallory.conversations().await.unwrap();
    }
    assert_eq!(code(mallory.conversations().await), Code::ResourceExhausted);
    assert_eq!(code(mallory.subscribe("1").await), Code::ResourceExhausted);
    // Everyone else keeps their own allowance.
    bob.conversations().await.unwrap();
    bob.create_conversation(&others[..10]).await.unwrap();
    app.stop().await;
}

/// Calls sent at once are admitted a place at a time, each after the one
/// before paid for its answer: a burst of large pages is not all let in
/// on the tokens the bucket held when it arrived.
async fn calls_sent_at_once_pay_for_large_answers_before_more_are_let_in(db: TestDb) {
    let app = crate::support::spawn_app_with(&db, |config| {
        config.call_rate_limit = 0.0;
        config.call_rate_burst = 20.0;
        config.user_concurrency = 1;
    })
    .await;
    let mallory = app.user("mallory").await;
    // Created by the other: mallory's 20 tokens are all left for the pages.
    let other = app.user("mallory-2").await;
    let lair = other.create_conversation(&["mallory"]).await.unwrap();
    // 20 messages of about 16 KiB: a page of them is charged 1 call and
    // one more per 32 KiB answered, about 11 in all.
    let filler = "x".repeat(16 * 1024 - 16);
    for n in 0..20 {
        mallory
            .send(&lair.id, &format!("{n} {filler}"))
            .await
            .unwrap();
    }
    let pages = (0..20).map(|_| mallory.messages(crate::support::page(&lair.id)));
    let answered = futures_util::future::join_all(pages).await;
    let listed = answered.iter().filter(|page| page.is_ok()).count();
    for page in answered.iter().filter_map(|page| page.as_ref().err()) {
        assert_eq!(page.code(), Code::ResourceExhausted);
    }
    // 20 tokens pay for two such pages; letting in all that the bucket
    // held on arrival answered all 20.
    assert_eq!(listed, 2);
    app.stop().await;
}

/// Removing and re-adding one user in a large group sends the whole member
/// list to every member each time: the creator's call rate pays by the
/// group's size, so the churn stops within a few rounds.
async fn membership_churn_in_a_large_group_is_paid_for_by_its_size(db: TestDb) {
    let app = crate::support::spawn_app_with(&db, |config| {
        config.call_rate_limit = 0.0;
        config.call_rate_burst = 110.0;
    })
    .await;
    let mallory = app.user("mallory").await;
    let others: Vec<String> = (0..499).map(|n| format!("user-{n}")).collect();
    // Creating costs 1 + 500 / 50 = 11 of the 110, and 499 strangers
    // 49.9 more.
    let group = mallory.create_conversation(&others).await.unwrap();
    let mut changes = 0;
    let refused = loop {
        match mallory.remove(&group.id, "user-0").await {
            Ok(_) => changes += 1,
            Err(status) => break status.code(),
        }
        match mallory.add(&group.id, &["user-0"]).await {
            Ok(_) => changes += 1,
            Err(status) => break status.code(),
        }
        assert!(
            changes < 20,
            "{changes} changes of a 500-member group went unpaid"
        );
    };
    assert_eq!(refused, Code::ResourceExhausted);
    // Each change costs about 11: the 49 left pay for four or five.
    assert!((3..=6).contains(&changes), "{changes} changes");
    app.stop().await;
}

async fn conversations_come_in_pages_that_fit_a_grpc_message(db: TestDb) {
    const GROUPS: usize = 40;
    let app = crate::support::spawn_app_with(&db, |config| {
        config.call_rate_limit = 1e6;
        config.call_rate_burst = 1e6;
    })
    .await;
    let mallory = app.user("mallory").await;
    // Groups as large as allowed, of the longest user ids, all with the
    // victim in them: 40 x 1,000 x 128 bytes, over 5 MB of ids.
    let long = |n: usize| format!("{n:0>128}");
    let members: Vec<String> = (0..998).map(long).chain(["victim".to_owned()]).collect();
    for _ in 0..GROUPS {
        mallory.create_conversation(&members).await.unwrap();
    }
    let victim = app.user("victim").await;
    let pair = victim.create_conversation(&["friend"]).await.unwrap();

    // Pages over gRPC, each within the client's default 4 MiB.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = victim.request(pb::ListConversationsRequest {
            page_size: 500,
            page_token: token.clone(),
        });
        let page = victim
            .client()
            .list_conversations(request)
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.conversations.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 1, "over 4 MiB cannot come in one page");
    assert_eq!(seen.len(), GROUPS + 1);
    assert_eq!(seen[0], pair.id, "most recently active first");
    let distinct: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no conversation twice");

    // Over REST, with the same tokens and a page size.
    let victim = app.token("victim");
    let (_, page) = call(
        &app,
        &victim,
        Method::GET,
        "/api/conversations?pageSize=1",
        None,
    )
    .await;
    assert_eq!(page["conversations"].as_array().unwrap().len(), 1);
    let next = page["nextPageToken"].as_str().unwrap();
    let path = format!("/api/conversations?pageSize=1&pageToken={next}");
    let (_, second) = call(&app, &victim, Method::GET, &path, None).await;
    assert_eq!(second["conversations"][0]["id"], serde_json::json!(seen[1]));
    let path = "/api/conversations?pageToken=nonsense";
    let (status, _) = call(&app, &victim, Method::GET, path, None).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_forged_on_the_nats_subject_is_never_delivered() {
    let Some(nats) = crate::support::service_url("HERALD_TEST_NATS_URL", "NATS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subject = format!("herald.test.{}", herald::random_hex());
    let herald = Process::serve(dir.path(), |command| {
        command.args([
            "--jwt-secret",
            SECRET,
            "--broker",
            "nats",
            "--nats-url",
            &nats,
        ]);
        command.args(["--nats-subject", &subject]);
    })
    .await;
    // An eavesdropper on both subjects, from before anything is sent.
    let intruder = async_nats::connect(nats.as_str()).await.unwrap();
    let mut heard = intruder.subscribe(subject.clone()).await.unwrap();
    let mut heard_signals = intruder
        .subscribe(format!("{subject}.signals"))
        .await
        .unwrap();
    intruder.flush().await.unwrap();
    let (mut client, chat) = alice_and_bob(&herald).await;
    let send = |content: &str| {
        let body = pb::CreateMessageRequest {
            conversation_id: chat.clone(),
            content: content.into(),
            ..Default::default()
        };
        authorized(body, &bearer("alice"))
    };
    let subscribe = authorized(pb::SubscribeMessagesRequest::default(), &bearer("bob"));
    let mut bob = client
        .subscribe_messages(subscribe)
        .await
        .unwrap()
        .into_inner();
    let first = client
        .create_message(send("first"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(crate::support::next_message(&mut bob).await, first);
    // What the eavesdropper heard says nothing: neither the message nor who
    // came online.
    use futures_util::StreamExt;
    let overheard = tokio::time::timeout(crate::support::PATIENCE, heard.next())
        .await
        .unwrap()
        .unwrap();
    let announced = tokio::time::timeout(crate::support::PATIENCE, heard_signals.next())
        .await
        .unwrap()
        .unwrap();
    for payload in [&overheard.payload, &announced.payload] {
        let text = String::from_utf8_lossy(payload);
        assert!(!text.contains("first") && !text.contains("bob"), "{text}");
    }
    // Played again, a genuine payload is refused.
    for recorded in [overheard.payload.clone(), announced.payload.clone()] {
        let subject = match recorded == overheard.payload {
            true => subject.clone(),
            false => format!("{subject}.signals"),
        };
        intruder.publish(subject, recorded).await.unwrap();
    }
    intruder.flush().await.unwrap();
    let refused = crate::support::eventually(|| async {
        metric(&herald.http, "herald_broker_replayed_total").await >= 2.0
    })
    .await;
    assert!(refused, "both replays are refused and counted");

    // Someone else on the subject claims the next position: once bare, once
    // sealed under a key that is not the cluster's.
    let next: i64 = first.id.parse::<i64>().unwrap() + 1;
    let forged = serde_json::json!({
        "position": next, "conversation_id": chat, "user_id": "alice",
        "content": "forged", "created_at_micros": 1
    })
    .to_string();
    let mut sealed_wrongly = vec![2u8];
    sealed_wrongly.extend_from_slice(&[b'0'; 48]);
    sealed_wrongly.extend_from_slice(forged.as_bytes());
    for payload in [forged.clone().into_bytes(), sealed_wrongly] {
        intruder
            .publish(subject.clone(), payload.into())
            .await
            .unwrap();
    }
    // And bare signals on the signal subject, in the wire a node would
    // seal: alice typing, and alice online from a node of its own.
    let signal = |kind: &str, content: String| {
        serde_json::json!({
            "position": 0, "conversation_id": "", "user_id": "", "content": content,
            "created_at_micros": 1, "kind": kind, "origin": "intruder"
        })
        .to_string()
    };
    let typing = signal("typings", serde_json::json!([[chat, "alice"]]).to_string());
    let online = signal(
        "presence",
        serde_json::json!({"online": ["alice"], "offline": [], "interval_ms": 1000}).to_string(),
    );
    for payload in [typing, online] {
        intruder
            .publish(format!("{subject}.signals"), payload.into())
            .await
            .unwrap();
    }
    intruder.flush().await.unwrap();
    let dropped = crate::support::eventually(|| async {
        metric(&herald.http, "herald_broker_forged_total").await >= 4.0
    })
    .await;
    assert!(
        dropped,
        "the two forged events and the two bare signals are dropped and counted"
    );
    assert_eq!(
        metric(&herald.http, "herald_broker_forged_total").await,
        4.0
    );

    let second = client
        .create_message(send("second"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.id, next.to_string());
    assert_eq!(crate::support::next_message(&mut bob).await, second);
    herald.terminate().await;
}

async fn signals_on_postgresql_are_sealed_against_any_role_that_can_connect(db: TestDb) {
    if db.url.starts_with("sqlite:") {
        return; // LISTEN/NOTIFY is PostgreSQL's.
    }
    let secret = String::from_utf8(crate::support::SECRET.to_vec()).unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.secret.jwt_secret = Some(secret.parse().unwrap());
    })
    .await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("herald_signals").await.unwrap();
    // Alice comes online: the announcement names nobody a listener can read.
    let alice = app.user("alice").await;
    let _online = alice.events("").await.unwrap();
    let announced = tokio::time::timeout(crate::support::PATIENCE, listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !announced.payload().contains("alice"),
        "{}",
        announced.payload()
    );
    // A role that can only connect forges "mallory is online", and replays
    // the genuine announcement.
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let forged = serde_json::json!({
        "position": 0, "conversation_id": "", "user_id": "", "created_at_micros": 1,
        "content": "{\"online\":[\"mallory\"],\"offline\":[]}", "kind": "presence",
        "origin": "someone-else"
    });
    for payload in [forged.to_string(), announced.payload().to_owned()] {
        sqlx::query("SELECT pg_notify('herald_signals', $1)")
            .bind(payload)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let http = app.http.to_string();
    let counted = crate::support::eventually(|| async {
        metric(&http, "herald_broker_forged_total").await >= 1.0
            && metric(&http, "herald_broker_replayed_total").await >= 1.0
    })
    .await;
    assert!(
        counted,
        "the forgery and the replay are refused and counted"
    );
    let group = alice
        .create_conversation(&["mallory", "bob"])
        .await
        .unwrap();
    let (_, presence) = call(
        &app,
        &app.token("alice"),
        Method::GET,
        "/api/presence?userIds=mallory",
        None,
    )
    .await;
    assert!(
        presence["presences"][0]["online"].as_bool() != Some(true),
        "{presence} in {}",
        group.id
    );
    app.stop().await;
}

async fn typing_is_told_to_other_nodes_in_batches(db: TestDb) {
    if db.url.starts_with("sqlite:") {
        return; // LISTEN/NOTIFY is PostgreSQL's.
    }
    let app = spawn_app(&db).await;
    let typists: Vec<String> = (0..40).map(|n| format!("typist-{n}")).collect();
    let host = app.user("host").await;
    let group = host.create_conversation(&typists).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("herald_signals").await.unwrap();
    // Forty users start typing at once: forty signals to tell.
    let calls = typists.iter().map(|typist| {
        let token = app.token(typist);
        let path = format!("/api/conversations/{}/typing", group.id);
        let app = &app;
        async move { call(app, &token, Method::POST, &path, None).await.0 }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|status| *status == 204), "{statuses:?}");
    let mut notifications = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.recv()).await
    {
        notifications += 1;
    }
    assert!(
        (1..=10).contains(&notifications),
        "{notifications} notifications for 40 typing signals"
    );
    app.stop().await;
}

async fn a_forged_or_garbled_notification_does_not_stall_the_feed(db: TestDb) {
    if db.url.starts_with("sqlite:") {
        return; // LISTEN/NOTIFY is PostgreSQL's.
    }
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let bob = app.user("bob").await;
    let mut stream = bob.subscribe("").await.unwrap();
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for payload in ["9223372036854775807", "-5", "not a number"] {
        sqlx::query("SELECT pg_notify('herald_messages', $1)")
            .bind(payload)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    for n in 0..20 {
        let sent = alice
            .send(&chat.id, &format!("after the forgery {n}"))
            .await
            .unwrap();
        assert_eq!(crate::support::next_message(&mut stream).await, sent);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_logs_in_to_a_nats_server_that_wants_a_password() {
    if !crate::support::Nats::available() {
        return;
    }
    let password = herald::random_hex();
    let nats = crate::support::Nats::start(
        crate::support::free_port(),
        &["--user", "herald", "--pass", &password],
    )
    .await;
    let url = nats.url();
    let watcher = async_nats::ConnectOptions::new()
        .user_and_password("herald".into(), password.clone())
        .connect(url.as_str())
        .await
        .unwrap();
    let mut watched = watcher.subscribe("herald.messages").await.unwrap();
    watcher.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args([
            "--jwt-secret",
            SECRET,
            "--broker",
            "nats",
            "--nats-url",
            &url,
        ]);
        command
            .args(["--nats-user", "herald"])
            .env("HERALD_NATS_PASSWORD", &password);
    })
    .await;
    let (mut client, chat) = alice_and_bob(&herald).await;
    let body = pb::CreateMessageRequest {
        conversation_id: chat,
        content: "over authenticated NATS".into(),
        ..Default::default()
    };
    // NATS may still be connecting: send until the watcher hears one.
    let mut heard = false;
    for _ in 0..40 {
        let request = authorized(body.clone(), &bearer("alice"));
        client.create_message(request).await.unwrap();
        let wait = std::time::Duration::from_millis(500);
        use futures_util::StreamExt;
        // Sealed: the watcher hears a payload it cannot read.
        if let Ok(Some(message)) = tokio::time::timeout(wait, watched.next()).await {
            heard = !String::from_utf8_lossy(&message.payload).contains("over authenticated NATS");
            break;
        }
    }
    assert!(
        heard,
        "herald publishes on a NATS server that needs its password"
    );
    herald.terminate().await;
}

async fn retries_of_one_send_in_flight_together_commit_once(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let retry = |content: String, key: &'static str| {
        let (client, request) = (
            alice.client(),
            alice.request(pb::CreateMessageRequest {
                conversation_id: chat.id.clone(),
                content,
                client_message_id: key.into(),
                ..Default::default()
            }),
        );
        async move {
            let mut client = client;
            client
                .create_message(request)
                .await
                .map(|m| m.into_inner().id)
        }
    };
    let retries = (0..16).map(|_| retry("once".into(), "the-key"));
    let others = (0..16).map(|n| retry(format!("other {n}"), ""));
    let (retries, others) = tokio::join!(
        futures_util::future::join_all(retries),
        futures_util::future::join_all(others)
    );
    let ids: std::collections::HashSet<String> = retries.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.len(), 1, "every retry answers with the one message");
    assert!(others.into_iter().all(|sent| sent.is_ok()));
    let history = alice
        .messages(pb::ListMessagesRequest {
            conversation_id: chat.id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 17);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outlive_the_header_timeout() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let app = crate::support::spawn_app_with(&db, |config| {
        config.header_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let bob = app.user("bob").await;
    let mut grpc = bob.subscribe("").await.unwrap();
    let sse = reqwest::Client::new()
        .get(app.url("/api/messages"))
        .header("accept", "text/event-stream")
        .bearer_auth(app.token("bob"));
    let mut sse = crate::support::open_sse(sse).await;
    // Well past the timeout that a connection gets for its first request.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let sent = alice.send(&chat.id, "still listening").await.unwrap();
    assert_eq!(crate::support::next_message(&mut grpc).await, sent);
    assert_eq!(sse.next_message().await, sent);
    app.stop().await;
}
