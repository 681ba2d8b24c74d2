//! Tokens never reach the log, whatever door they came through; every
//! call has its line, a subscription's when it ends however it ends.

use crate::support::{Process, authorized};
use herald::pb;
use reqwest::Client;

#[tokio::test]
async fn no_token_appears_in_the_log_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "log-test-secret-0123456789abcdef0123456789abcdef";
    let herald = Process::serve(dir.path(), |command| {
        command
            .args(["--jwt-secret", secret])
            .env("RUST_LOG", "debug");
    })
    .await;
    let auth = herald::Auth::hs256(secret.as_bytes());
    let mint = |user: &str| {
        auth.mint(
            &herald::UserId::parse("user", user).unwrap(),
            std::time::Duration::from_secs(600),
        )
    };
    let (valid, for_header, forged) = (mint("alice"), mint("bob"), format!("{}x", mint("carol")));
    let http = Client::new();
    let url = |path: &str| format!("http://{}{path}", herald.http);

    let sse = http
        .get(url(&format!("/api/messages?token={valid}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    drop(sse);
    for path in [
        format!("/api/conversations?token={forged}"),
        format!("/api/messages?token={forged}&lastEventId=1"),
    ] {
        let response = http
            .get(url(&path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let response = http
        .get(url("/api/conversations"))
        .bearer_auth(&for_header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut client = herald.client().await;
    for token in [&valid, &forged] {
        let request = authorized(
            pb::ListConversationsRequest::default(),
            &format!("Bearer {token}"),
        );
        let _ = client.list_conversations(request).await;
    }
    let (_, log) = herald.terminate().await;

    assert!(
        log.contains("/api/messages"),
        "the request log is there: {log}"
    );
    assert!(
        log.contains("token=[redacted]"),
        "the query is logged, redacted: {log}"
    );
    for token in [&valid, &for_header, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a token leaked into the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--log-format", "json"]);
    })
    .await;
    let _ = reqwest::get(format!("http://{}/healthz", herald.http))
        .await
        .unwrap();
    let (exit, log) = herald.terminate().await;

    assert!(exit.success());
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_grpc_subscription_is_one_line_when_it_ends_however_it_ends() {
    let (_dir, herald, token) = serve_for_alice(&[]).await;
    let mut client = herald.client().await;
    let subscribe = |client: &mut pb::messenger_client::MessengerClient<_>| {
        let request = authorized(pb::SubscribeMessagesRequest::default(), &token);
        let mut client = client.clone();
        async move { client.subscribe_messages(request).await }
    };

    // Refused before it opens: no token.
    let refused = client
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    herald
        .wait_for_log("grpc subscription refused code=Unauthenticated")
        .await;
    // Opened, then the subscriber goes away.
    let gone = subscribe(&mut client).await.unwrap();
    drop(gone);
    let log = herald.wait_for_log("code=Cancelled").await;
    let line = log.lines().find(|line| line.contains("code=Cancelled"));
    assert!(
        line.is_some_and(
            |line| line.contains("method=/herald.v1.Messenger/SubscribeMessages")
                && line.contains("end of stream")
                && line.contains("duration=")
        ),
        "{log}"
    );
    // Open when the server shuts down: the status says so.
    let _open = subscribe(&mut client).await.unwrap();
    let (_, log) = herald.terminate().await;
    let ends: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("SubscribeMessages") && line.contains("end of stream"))
        .collect();
    assert_eq!(ends.len(), 2, "one line per subscription: {log}");
    assert!(ends[1].contains("code=Unavailable"), "{log}");
    let refusals = log.matches("grpc subscription refused").count();
    assert_eq!(refusals, 1, "only the refused one is a refusal: {log}");
}

#[tokio::test]
async fn every_call_is_one_line_with_its_method_and_outcome() {
    let (_dir, herald, token) = serve_for_alice(&[]).await;
    let mut client = herald.client().await;

    // Answered in trailers, after a response message.
    let listed = client
        .list_conversations(authorized(pb::ListConversationsRequest::default(), &token))
        .await;
    assert!(listed.is_ok());
    // Refused in the response's headers alone.
    let refused = client
        .list_conversations(pb::ListConversationsRequest::default())
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let response = reqwest::get(format!(
        "http://{}/api/conversations?pageSize=2",
        herald.http
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 401);
    let (_, log) = herald.terminate().await;

    let calls: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("method=/herald.v1.Messenger/ListConversations"))
        .collect();
    assert_eq!(calls.len(), 2, "one line per call: {log}");
    assert!(
        calls[0].contains("end of stream") && calls[0].contains("code=Some(Ok)"),
        "{log}"
    );
    assert!(calls[1].contains("code=Some(Unauthenticated)"), "{log}");
    assert!(
        log.lines()
            .any(|line| line.contains("finished processing request")
                && line.contains("method=GET path=/api/conversations query=pageSize=2 status=401")),
        "{log}"
    );
}

#[tokio::test]
async fn a_call_whose_client_went_away_still_has_its_line() {
    // One call, then one every ten seconds: the test's later calls are
    // all over the rate.
    let (_dir, herald, token) =
        serve_for_alice(&["--call-rate-limit", "0.1", "--call-rate-burst", "1"]).await;
    let list = || authorized(pb::ListConversationsRequest::default(), &token);
    // The one call the burst allows.
    let mut client = herald.client().await;
    assert!(client.list_conversations(list()).await.is_ok());

    // The next is refused late (the tarpit); its client leaves meanwhile,
    // closing its connection, so the server drops the call unanswered.
    let mut leaving = herald.client().await;
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        leaving.list_conversations(list()),
    )
    .await;
    assert!(waited.is_err(), "still in the tarpit after 100 ms");
    drop(leaving);
    herald.wait_for_log("code=None").await;
    // The same over HTTP: its line comes without a status.
    let impatient = Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let url = format!("http://{}/api/conversations", herald.http);
    let left = impatient.get(url).bearer_auth(&token[7..]).send().await;
    assert!(
        left.unwrap_err().is_timeout(),
        "still in the tarpit after 100 ms"
    );
    herald
        .wait_for_log("path=/api/conversations query= latency=")
        .await;
    let (_, log) = herald.terminate().await;

    let calls: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("method=/herald.v1.Messenger/ListConversations"))
        .collect();
    assert_eq!(calls.len(), 2, "one line per call: {log}");
    assert!(
        calls[1].contains("end of stream") && calls[1].contains("code=None"),
        "{log}"
    );
}

/// herald started with `args` and its own secret, and a bearer token of
/// alice's; the directory lives as long as the test keeps it.
async fn serve_for_alice(args: &[&str]) -> (tempfile::TempDir, Process, String) {
    let dir = tempfile::tempdir().unwrap();
    let secret = "log-test-secret-0123456789abcdef0123456789abcdef";
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", secret]).args(args);
    })
    .await;
    let token = format!("Bearer {}", crate::support::mint(secret, "alice"));
    (dir, herald, token)
}
