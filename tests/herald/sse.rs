//! `GET /api/messages`: the Server-Sent Events stream.

use crate::support::{
    PATIENCE, TestApp, TestDb, call, next_message, numbered, open_sse, spawn_app, spawn_app_with,
};
use reqwest::{Client, StatusCode};
use std::time::Duration;

/// Reads the raw body of `response` until it contains `needle`.
async fn raw_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    let read = async {
        while !text.contains(needle) {
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the text arrives in time");
    text
}

async fn a_request_that_does_not_accept_event_streams_gets_406(db: TestDb) {
    let app = spawn_app(&db).await;

    let response = Client::new()
        .get(app.url("/api/messages"))
        .header("accept", "application/json")
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "error": "This endpoint requires an EventSource connection" })
    );
}

async fn the_stream_has_the_contract_headers_and_framing(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let url = app.url(&format!("/api/messages?token={}", app.token("bob")));
    let mut response = Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();

    let headers = response.headers().clone();
    let sent = alice
        .send(&conversation.id, "line one\nline two")
        .await
        .unwrap();
    let raw = raw_until(&mut response, "line two").await;
    let raw = raw_until_blank_line(&mut response, raw).await;

    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let json = serde_json::to_string(&sent).unwrap();
    assert!(raw.starts_with("retry: 1000\n\n"), "{raw:?}");
    assert!(
        raw.ends_with(&format!("id: {}\ndata: {json}\n\n", sent.id)),
        "{raw:?}"
    );
    assert!(!raw.contains("event:"), "{raw:?}");
}

/// Reads on until `raw` ends with a blank line (a whole event).
async fn raw_until_blank_line(response: &mut reqwest::Response, mut raw: String) -> String {
    while !raw.ends_with("\n\n") {
        let chunk = response.chunk().await.unwrap().expect("the stream goes on");
        raw.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    raw
}

async fn an_idle_stream_gets_comment_heartbeats(db: TestDb) {
    let app = spawn_app_with(&db, |config| {
        config.sse_heartbeat = Duration::from_millis(100)
    })
    .await;
    let mut response = app.sse_request(&app.token("bob")).send().await.unwrap();

    let raw = raw_until(&mut response, ": keep-alive\n\n: keep-alive\n\n").await;

    assert!(raw.starts_with("retry: 1000\n\n"));
}

async fn messages_from_every_door_reach_sse_and_grpc_subscribers(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut bob_browser = open_sse(app.sse_request(&app.token("bob"))).await;
    let mut alice_browser = open_sse(app.sse_request(&app.token("alice"))).await;
    let mut bob_grpc = bob.subscribe("").await.unwrap();

    let over_grpc = alice.send(&conversation.id, "over gRPC").await.unwrap();
    let over_rest: herald::pb::Message = Client::new()
        .post(app.url(&format!("/api/conversations/{}/messages", conversation.id)))
        .bearer_auth(app.token("bob"))
        .json(&serde_json::json!({ "content": "over REST" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    for sse in [&mut bob_browser, &mut alice_browser] {
        assert_eq!(sse.next_message().await, over_grpc);
        assert_eq!(sse.next_message().await, over_rest);
    }
    assert_eq!(next_message(&mut bob_grpc).await, over_grpc);
    assert_eq!(next_message(&mut bob_grpc).await, over_rest);
}

async fn resuming_with_last_event_id_replays_the_gap_exactly_once(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let seen = alice.send(&conversation.id, "seen").await.unwrap();
    let mut missed = Vec::new();
    for content in numbered("missed", 1..=3) {
        missed.push(alice.send(&conversation.id, &content).await.unwrap());
    }
    let bob = app.token("bob");

    let mut by_header = open_sse(app.sse_request(&bob).header("last-event-id", &seen.id)).await;
    let by_query = app.sse_request(&bob).query(&[("lastEventId", &seen.id)]);
    let mut by_query = open_sse(by_query).await;
    // The header wins over the query parameter, which names a later id.
    let both = app
        .sse_request(&bob)
        .header("last-event-id", &seen.id)
        .query(&[("lastEventId", &missed[1].id)]);
    let mut both = open_sse(both).await;
    alice.send(&conversation.id, "live").await.unwrap();

    let expected = [numbered("missed", 1..=3), vec!["live".to_owned()]].concat();
    for stream in [&mut by_header, &mut by_query, &mut both] {
        assert_eq!(stream.next_contents(4).await, expected);
    }
}

async fn an_unknown_last_event_id_resets_in_band_then_goes_live(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut stream = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", "777777"),
    )
    .await;

    let reset = stream.next_event().await.unwrap();
    alice
        .send(&conversation.id, "after the reset")
        .await
        .unwrap();

    assert_eq!(reset.event, "reset");
    let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert!(data["reason"].is_string());
    assert_eq!(stream.next_message().await.content, "after the reset");
}

async fn a_malformed_last_event_id_is_a_bad_request(db: TestDb) {
    let app = spawn_app(&db).await;

    let response = app
        .sse_request(&app.token("bob"))
        .query(&[("lastEventId", "x".repeat(200))])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

async fn the_sse_stream_ends_when_its_token_expires(db: TestDb) {
    let app = spawn_app(&db).await;
    let opened = std::time::Instant::now();
    let token = app.token_for("bob", Duration::from_secs(3));
    let mut stream = open_sse(app.sse_request(&token)).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();

    // Open and delivering until the token expires...
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice.send(&conversation.id, "still here").await.unwrap();
    assert_eq!(stream.next_contents(1).await, ["still here"]);
    // ...then closed, at `exp` plus the 5 s leeway: `exp` is whole seconds,
    // at least 2 s after minting, so not before 7 s.
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.next_event()).await;
    assert!(
        ended
            .expect("the stream ends after exp plus leeway")
            .is_none()
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(7),
        "closed {:?} after a 3 s token was minted",
        opened.elapsed()
    );
}

async fn a_disconnected_browser_leaves_no_subscription_behind(db: TestDb) {
    let app = spawn_app(&db).await;
    let stream = open_sse(app.sse_request(&app.token("bob"))).await;
    assert_eq!(app.herald.hub().subscription_count(), 1);

    drop(stream);

    app.wait_for_subscriptions(0).await;
}

/// Opens the SSE stream over a raw HTTP/1.0 connection with a tiny receive
/// buffer, so that not reading soon fills every buffer on the way.
async fn stalled_stream(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.http).await.unwrap();
    let request = format!(
        "GET /api/messages?token={token} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        app.http
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn a_browser_that_stops_reading_is_dropped_and_resumes_losslessly(db: TestDb) {
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(&db, |config| config.subscription_queue = 4).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut stalled = stalled_stream(&app, &app.token("bob")).await;
    app.wait_for_subscriptions(1).await;

    let sent = alice.send_bulky(&conversation.id, 300).await;
    app.wait_for_subscriptions(0).await;
    assert_eq!(app.herald.hub().lagged_total(), 1);

    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut raw))
        .await
        .expect("the server closes")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let mut received: Vec<String> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(str::to_owned)
        .collect();
    assert!(received.len() < sent.len(), "bob fell behind");

    let last = received.last().expect("some messages arrived").clone();
    let mut resumed = open_sse(
        app.sse_request(&app.token("bob"))
            .header("last-event-id", last),
    )
    .await;
    while received.len() < sent.len() {
        received.push(resumed.next_message().await.id);
    }
    assert_eq!(received, sent);
}

async fn a_stream_ticket_opens_the_stream_and_nothing_else(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let bob = app.token("bob");
    let (_, issued) = call(
        &app,
        &bob,
        reqwest::Method::POST,
        "/api/stream-tickets",
        None,
    )
    .await;
    let ticket = issued["ticket"].as_str().unwrap();
    assert!(issued["expiresAt"].as_str().unwrap().ends_with('Z'));

    let url = app.url(&format!("/api/messages?token={ticket}"));
    let mut stream = open_sse(Client::new().get(url).header("accept", "text/event-stream")).await;
    let sent = alice.send(&conversation.id, "via a ticket").await.unwrap();
    assert_eq!(stream.next_message().await, sent);

    let rest = Client::new()
        .get(app.url("/api/conversations"))
        .bearer_auth(ticket)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::UNAUTHORIZED);
    let grpc = crate::support::User::with_token(&app, ticket.to_owned()).await;
    assert_eq!(
        crate::support::code(grpc.conversations().await),
        tonic::Code::Unauthenticated
    );
}

async fn a_token_in_the_cookie_works_and_a_header_still_wins(db: TestDb) {
    let app = spawn_app(&db).await;
    let cookie = format!("theme=dark; herald_token={}", app.token("bob"));

    let by_cookie = Client::new()
        .get(app.url("/api/conversations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let stream = app
        .sse_request("forged")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let header_wins = Client::new()
        .get(app.url("/api/conversations"))
        .header("cookie", &cookie)
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();

    assert_eq!(by_cookie.status(), StatusCode::OK);
    assert_eq!(
        stream.status(),
        StatusCode::UNAUTHORIZED,
        "the forged header decides"
    );
    assert_eq!(header_wins.status(), StatusCode::UNAUTHORIZED);
}

/// A raw HTTP/1.1 connection to the HTTP port with `request` written.
async fn raw_http(app: &TestApp, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(app.http).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads `stream` until what was read contains `needle` (or, with `None`,
/// until the server closes it); returns all of it.
async fn raw_read(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: Option<&str>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buffer = [0u8; 4096];
        while needle.is_none_or(|needle| !seen.contains(needle)) {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                assert!(needle.is_none(), "closed before {needle:?}: {seen:?}");
                return;
            }
            seen.push_str(std::str::from_utf8(&buffer[..n]).unwrap());
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; read {seen:?}"));
}

fn stream_get(path: &str, token: &str) -> String {
    format!("GET {path}?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
}

/// EventSource's one request per connection: a chunked response that the
/// server closes when the stream ends.
async fn a_stream_over_http_1_1_is_chunked_and_closed_when_it_ends(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut stream = raw_http(&app, &stream_get("/api/messages", &app.token("bob"))).await;
    let mut raw = String::new();
    raw_read(&mut stream, &mut raw, Some("retry: 1000\n\n\r\n")).await;
    let sent = alice.send(&conversation.id, "chunked").await.unwrap();
    let json = serde_json::to_string(&sent).unwrap();
    let event = format!("id: {}\ndata: {json}\n\n", sent.id);
    raw_read(&mut stream, &mut raw, Some(&event)).await;
    app.stop().await;
    raw_read(&mut stream, &mut raw, None).await;

    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for field in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(&format!("\r\n{field}")), "{field} in {head}");
    }
    assert!(!head.contains("content-length"), "{head}");
    assert!(body.starts_with("d\r\nretry: 1000\n\n\r\n"), "{body:?}");
    assert!(
        body.contains(&format!("{:x}\r\n{event}\r\n", event.len())),
        "{body:?}"
    );
    assert!(body.ends_with("\r\n0\r\n\r\n"), "the last chunk: {body:?}");
}

/// A refused stream request gets the same answer as on any other
/// connection, with its length, and the connection closes.
async fn a_refused_stream_request_is_answered_whole_and_closed(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut stream = raw_http(&app, &stream_get("/api/events", "forged")).await;
    let mut raw = String::new();
    raw_read(&mut stream, &mut raw, None).await;

    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401 unauthorized\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(error["error"].is_string(), "{body}");
}

/// A stream asked for on a connection that has served another request
/// first (a browser's keep-alive connection) is served all the same.
async fn a_stream_after_another_request_on_one_connection_is_served(db: TestDb) {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut stream = raw_http(&app, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut raw = String::new();
    raw_read(&mut stream, &mut raw, Some("\r\n\r\nok")).await;
    let request = stream_get("/api/messages", &app.token("bob"));
    stream.write_all(request.as_bytes()).await.unwrap();
    raw_read(&mut stream, &mut raw, Some("retry: 1000")).await;
    let sent = alice
        .send(&conversation.id, "same connection")
        .await
        .unwrap();
    raw_read(&mut stream, &mut raw, Some(&format!("id: {}\n", sent.id))).await;
}

/// A stream client has nothing to send after its request: anything it
/// sends closes the connection, and the subscription with it.
async fn a_stream_client_that_sends_more_is_closed(db: TestDb) {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(&db).await;
    let mut stream = raw_http(&app, &stream_get("/api/messages", &app.token("bob"))).await;
    let mut raw = String::new();
    raw_read(&mut stream, &mut raw, Some("retry: 1000")).await;
    app.wait_for_subscriptions(1).await;

    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
        .await
        .unwrap();

    raw_read(&mut stream, &mut raw, None).await;
    app.wait_for_subscriptions(0).await;
}

on_every_backend!(
    a_stream_ticket_opens_the_stream_and_nothing_else,
    a_stream_over_http_1_1_is_chunked_and_closed_when_it_ends,
    a_refused_stream_request_is_answered_whole_and_closed,
    a_stream_after_another_request_on_one_connection_is_served,
    a_stream_client_that_sends_more_is_closed,
    a_token_in_the_cookie_works_and_a_header_still_wins,
    a_request_that_does_not_accept_event_streams_gets_406,
    the_stream_has_the_contract_headers_and_framing,
    an_idle_stream_gets_comment_heartbeats,
    messages_from_every_door_reach_sse_and_grpc_subscribers,
    resuming_with_last_event_id_replays_the_gap_exactly_once,
    an_unknown_last_event_id_resets_in_band_then_goes_live,
    a_malformed_last_event_id_is_a_bad_request,
    the_sse_stream_ends_when_its_token_expires,
    a_disconnected_browser_leaves_no_subscription_behind,
    a_browser_that_stops_reading_is_dropped_and_resumes_losslessly,
);
