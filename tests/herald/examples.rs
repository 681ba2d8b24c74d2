//! The example clients in other languages, against a live `herald serve`:
//! a Python (grpcio) subscriber hears a Node (@grpc/grpc-js) sender, and the
//! other way round.

use crate::support::{PATIENCE, Process, call_at, mint, tools_ready};
use reqwest::Method;
use serde_json::json;
use std::{path::Path, process::Stdio};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const SECRET: &str = "examples-secret-0123456789abcdef0123456789abcdef";

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn python(herald: &Process, user: &str) -> Command {
    let mut command = Command::new(examples().join("python/.venv/bin/python"));
    command.arg(examples().join("python/herald_client.py"));
    client_env(&mut command, herald, user);
    command
}

fn node(herald: &Process, user: &str) -> Command {
    let mut command = Command::new("node");
    command.arg(examples().join("node/client.mjs"));
    client_env(&mut command, herald, user);
    command
}

fn client_env(command: &mut Command, herald: &Process, user: &str) {
    let token = mint(SECRET, user);
    command
        .env("HERALD_GRPC", &herald.grpc)
        .env("HERALD_TOKEN", token)
        .kill_on_drop(true);
}

/// Starts a `subscribe --count 1` client and waits until it is live.
async fn live_subscriber(mut command: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .args(["subscribe", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, stderr.next_line())
        .await
        .expect("the subscriber starts")
        .unwrap();
    assert_eq!(line.as_deref(), Some("subscribed"));
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdout)
}

/// Sends one message with `command` and checks it exits cleanly.
/// The id of a pair conversation between `token`'s user and bob, created
/// over REST.
async fn pair_with_bob(herald: &Process, token: &str) -> String {
    let pair = json!({ "participantIds": ["bob"] });
    let (_, chat) = call_at(
        &herald.http,
        token,
        Method::POST,
        "/api/conversations",
        Some(pair),
    )
    .await;
    chat["id"].as_str().unwrap().to_owned()
}

async fn send(mut command: Command, conversation: &str, content: &str) {
    let status = command
        .args(["send", conversation, content])
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_python_subscriber_hears_node_and_a_node_subscriber_hears_python() {
    let ready = examples()
        .join("python/gen/herald/v1/herald_pb2_grpc.py")
        .exists()
        && examples().join("node/node_modules/@grpc/grpc-js").exists();
    if !tools_ready("the Python venv and Node packages of examples/", ready) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let token = mint(SECRET, "alice");
    let conversation: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/conversations", herald.http))
        .bearer_auth(token)
        .json(&serde_json::json!({ "participantIds": ["bob"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conversation = conversation["id"].as_str().unwrap();

    for (listener, speaker, content) in [
        (python(&herald, "alice"), node(&herald, "bob"), "from Node"),
        (
            node(&herald, "alice"),
            python(&herald, "bob"),
            "from Python",
        ),
    ] {
        let (mut child, mut stdout) = live_subscriber(listener).await;
        send(speaker, conversation, content).await;
        let line = tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("the message arrives")
            .unwrap();
        assert!(line.unwrap().ends_with(&format!(" bob: {content}")));
        let exit = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .expect("the subscriber stops")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
    }
    herald.terminate().await;
}

/// The Node example's `events` command prints a membership change, a
/// message and a read receipt of a group, in stream order.
#[tokio::test]
async fn the_node_events_client_prints_changes_messages_and_receipts_in_order() {
    let ready = examples().join("node/node_modules/@grpc/grpc-js").exists();
    if !tools_ready("the Node packages of examples/", ready) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let http = reqwest::Client::new();
    let call = |user: &str, path: String, body: serde_json::Value| {
        http.post(format!("http://{}{path}", herald.http))
            .bearer_auth(mint(SECRET, user))
            .json(&body)
            .send()
    };
    let group: serde_json::Value = call(
        "alice",
        "/api/conversations".into(),
        serde_json::json!({ "participantIds": ["bob", "carol"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = group["id"].as_str().unwrap();

    let mut events = node(&herald, "bob");
    events.args(["events", "--count", "3"]);
    let mut child = events
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, stderr.next_line())
        .await
        .unwrap();
    assert_eq!(line.unwrap().as_deref(), Some("subscribed"));

    let participants = format!("/api/conversations/{id}/participants");
    call(
        "alice",
        participants,
        serde_json::json!({ "userIds": ["dave"] }),
    )
    .await
    .unwrap();
    let messages = format!("/api/conversations/{id}/messages");
    let sent: serde_json::Value = call("alice", messages, serde_json::json!({ "content": "hi" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = sent["id"].as_str().unwrap();
    let read = format!("/api/conversations/{id}/read");
    call("bob", read, serde_json::json!({ "messageId": sent }))
        .await
        .unwrap();

    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the client stops after three events")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split_once(' ').unwrap().1.to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "membership by alice: +dave".to_owned(),
            "message alice: hi".to_owned(),
            format!("read bob up to {sent}"),
        ]
    );
    herald.terminate().await;
}

/// The Python backend example, with a service key made by `herald key`:
/// posts a system message bob hears, deletes bob's message, and bans bob,
/// whose stream then ends with `event: disconnect` and whose calls are
/// refused.
#[tokio::test]
async fn the_python_backend_publishes_deletes_and_bans() {
    let backend = examples().join("python/backend.py");
    let ready = examples()
        .join("python/gen/herald/v1/herald_pb2_grpc.py")
        .exists();
    if !tools_ready("the Python venv of examples/", ready) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/herald.db", dir.path().display());
    let key = crate::support::service_key(&database, "shop", "publish,moderate").await;
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET]);
    })
    .await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", herald.http);
    let (alice, bob) = (mint(SECRET, "alice"), mint(SECRET, "bob"));
    let chat = &pair_with_bob(&herald, &alice).await;
    let messages = format!("/api/conversations/{chat}/messages");
    let spam = json!({ "content": "buy cheap stuff" });
    let (_, spam) = call_at(&herald.http, &bob, Method::POST, &messages, Some(spam)).await;
    let request = http
        .get(url("/api/events"))
        .header("accept", "text/event-stream")
        .bearer_auth(&bob);
    let mut bobs = crate::support::open_sse(request).await;
    let run = |args: &[&str]| {
        let mut command = Command::new(examples().join("python/.venv/bin/python"));
        command
            .arg(&backend)
            .args(args)
            .env("HERALD_GRPC", &herald.grpc)
            .env("HERALD_KEY", &key);
        async move {
            let output = command.output().await.unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        }
    };

    let published = run(&["publish", chat, "Your order shipped"]).await;
    let heard = bobs.next_message().await;
    assert_eq!(
        (heard.id.as_str(), heard.system),
        (published.as_str(), true)
    );
    assert_eq!(heard.content, "Your order shipped");
    let spam_id = spam["id"].as_str().unwrap();
    assert_eq!(
        run(&["delete", chat, spam_id, "--reason", "spam"]).await,
        spam_id
    );
    let deleted = bobs.next_event().await.unwrap();
    assert_eq!(deleted.event, "delete");
    assert_eq!(run(&["ban", "bob", "--reason", "spam"]).await, "banned bob");
    let last = bobs.next_event().await.unwrap();
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("disconnect", r#"{"reason":"banned: spam"}"#)
    );
    let refused = http
        .get(url(&messages))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let history: serde_json::Value = http
        .get(url(&messages))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["deleted"], true);
    assert_eq!(history["messages"][1]["system"], true);
    // Every action is in the log with the key's name and its target, and
    // the key itself is nowhere in it.
    let (_, log) = herald.terminate().await;
    for action in ["publish", "delete_message", "ban"] {
        let line = log
            .lines()
            .find(|line| {
                line.contains("admin action") && line.contains(&format!("action=\"{action}\""))
            })
            .unwrap_or_else(|| panic!("no log line for {action}: {log}"));
        assert!(line.contains("key=shop"), "{line}");
    }
    let ban = log
        .lines()
        .find(|line| line.contains("admin action") && line.contains("action=\"ban\""));
    assert!(
        ban.unwrap().contains("target=\"bob\""),
        "the ban names its target"
    );
    assert!(!log.contains(&key), "the key is never logged");
}

/// The Python receiver example verifies herald's webhook batches with the
/// Standard Webhooks library (an implementation independent of herald's)
/// and prints every event, in order.
#[tokio::test]
async fn a_python_receiver_verifies_webhooks_with_the_standard_library() {
    let ready = examples()
        .join("python/.venv/lib")
        .read_dir()
        .ok()
        .and_then(|mut dirs| dirs.next())
        .and_then(|dir| dir.ok())
        .is_some_and(|dir| dir.path().join("site-packages/standardwebhooks").exists());
    if !tools_ready(
        "the Python venv (with standardwebhooks) of examples/",
        ready,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/herald.db", dir.path().display());
    let key = crate::support::service_key(&database, "hooks", "admin").await;
    let herald = Process::serve(dir.path(), |command| {
        command.args(["--jwt-secret", SECRET, "--webhook-allow-private"]);
    })
    .await;
    let mut receiver = Command::new(examples().join("python/.venv/bin/python"))
        .arg(examples().join("python/receiver.py"))
        .args(["--count", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let next_line = async |lines: &mut Lines<BufReader<ChildStdout>>| {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the receiver says something")
            .unwrap()
            .expect("a line")
    };
    let listening = next_line(&mut lines).await;
    let port = listening.strip_prefix("listening ").unwrap();
    let hook = json!({ "url": format!("http://127.0.0.1:{port}/hook") });
    let (_, webhook) = call_at(
        &herald.http,
        &key,
        Method::POST,
        "/api/admin/webhooks",
        Some(hook),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = receiver.stdin.take().unwrap();
    stdin
        .write_all(format!("{secret}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let alice = mint(SECRET, "alice");
    let chat = &pair_with_bob(&herald, &alice).await;
    let messages = format!("/api/conversations/{chat}/messages");
    let mut sent = Vec::new();
    for content in ["one", "two", "three"] {
        let body = json!({ "content": content });
        let (_, message) = call_at(&herald.http, &alice, Method::POST, &messages, Some(body)).await;
        sent.push(format!("{} message", message["id"].as_str().unwrap()));
    }
    let mut printed = Vec::new();
    for _ in 0..3 {
        printed.push(next_line(&mut lines).await);
    }
    assert_eq!(printed, sent);
    let exit = tokio::time::timeout(PATIENCE, receiver.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    herald.terminate().await;
}
