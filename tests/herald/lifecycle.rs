//! Start, restart and shutdown, in process and as the real binary.

use crate::support::{PATIENCE, TestDb, contents, end_of, next_message, page, spawn_app};
use herald::pb;
use std::process::Stdio;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::Code;

async fn messages_survive_a_restart_on_the_same_database(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let before = alice
        .send(&conversation.id, "before the restart")
        .await
        .unwrap();
    app.stop().await;

    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut resumed = bob.subscribe(&before.id).await.unwrap();
    let after = alice
        .send(&conversation.id, "after the restart")
        .await
        .unwrap();

    assert!(after.id.parse::<u64>().unwrap() > before.id.parse::<u64>().unwrap());
    let history = bob.messages(page(&conversation.id)).await.unwrap();
    assert_eq!(
        contents(&history),
        ["before the restart", "after the restart"]
    );
    assert_eq!(next_message(&mut resumed).await, after);
    assert_eq!(
        alice.create_conversation(&["bob"]).await.unwrap().id,
        conversation.id
    );
}

async fn shutdown_ends_open_streams_and_finishes(db: TestDb) {
    let app = spawn_app(&db).await;
    let bob = app.user("bob").await;
    let mut stream = bob.subscribe("").await.unwrap();

    let (status, ()) = tokio::join!(end_of(&mut stream, PATIENCE), app.stop());

    assert_eq!(status.code(), Code::Unavailable);
}

on_every_backend!(
    messages_survive_a_restart_on_the_same_database,
    shutdown_ends_open_streams_and_finishes
);

fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .env_remove("HERALD_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn herald_token_prints_one_token_and_nothing_else() {
    let output = herald()
        .args(["token", "alice", "--jwt-secret", "s3cret"])
        .output()
        .await
        .unwrap();

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let claims = herald::auth::Auth::hs256(b"s3cret")
        .verify(lines[0])
        .unwrap();
    assert_eq!(claims.user.as_str(), "alice");
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/x.db", dir.path().display());
    let cases: [&[&str]; 4] = [
        &["token", "alice"],
        &[
            "serve",
            "--http",
            "not an address",
            "--database-url",
            &database,
        ],
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--database-url",
            "mysql://nope",
        ],
        &[
            "serve",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--database-url",
            "postgres://127.0.0.1:1/x",
        ],
    ];
    for args in cases {
        let output = herald().args(args).output().await.unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{args:?}");
        let reason: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("herald: "))
            .collect();
        assert_eq!(reason.len(), 1, "{args:?}: {stderr}");
    }
}

/// Reads `lines` until `pick` finds what it wants in one.
async fn first_line(
    lines: &mut tokio::io::Lines<BufReader<impl tokio::io::AsyncRead + Unpin>>,
    pick: impl Fn(&str) -> Option<String>,
) -> String {
    let search = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(found) = pick(&line) {
                return found;
            }
        }
        panic!("the output ended before the expected line");
    };
    tokio::time::timeout(PATIENCE, search)
        .await
        .expect("the line comes in time")
}

fn spawn_serve(dir: &std::path::Path) -> Child {
    let database = format!("sqlite://{}/herald.db", dir.display());
    herald()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ])
        .args(["--drain-timeout", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_first_run_prints_working_demo_tokens_and_sigterm_exits_zero_with_streams_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_serve(dir.path());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let grpc = first_line(&mut stderr, |line| {
        line.contains("herald is serving")
            .then(|| line.split("grpc=").nth(1).unwrap().trim().to_owned())
    })
    .await;
    let token = first_line(&mut stdout, |line| {
        line.trim()
            .strip_prefix("alice's token: ")
            .map(str::to_owned)
    })
    .await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::messenger_client::MessengerClient::new(channel);
    let request = crate::support::authorized(
        pb::SubscribeMessagesRequest::default(),
        &format!("Bearer {token}"),
    );
    let mut stream = client
        .subscribe_messages(request)
        .await
        .unwrap()
        .into_inner();

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = end_of(&mut stream, PATIENCE).await;
    let exit = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("herald exits")
        .unwrap();

    assert_eq!(status.code(), Code::Unavailable);
    assert!(exit.success(), "{exit:?}");
}
