//! Tokens never reach the log, whatever door they came through.

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
