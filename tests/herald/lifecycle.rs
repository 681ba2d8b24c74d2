//! Start, restart and shutdown, in process and as the real binary.

use crate::support::{
    PATIENCE, Process, TestDb, authorized, code, contents, end_of, herald_command, next_message,
    page, spawn_app,
};
use herald::pb;
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

async fn draining_flips_grpc_health_to_not_serving(db: TestDb) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let app = spawn_app(&db).await;
    let mut health = HealthClient::new(app.channel().await);
    let request = HealthCheckRequest {
        service: "herald.v1.Messenger".into(),
    };
    let mut watch = health.watch(request).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let (next, ()) = tokio::join!(async { watch.message().await }, app.stop());

    let next = next
        .expect("an update before the stream ends")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

on_every_backend!(
    draining_flips_grpc_health_to_not_serving,
    messages_survive_a_restart_on_the_same_database,
    shutdown_ends_open_streams_and_finishes
);

#[tokio::test]
async fn herald_token_prints_one_token_and_nothing_else() {
    let output = herald_command()
        .args([
            "token",
            "alice",
            "--jwt-secret",
            "s3cret-0123456789abcdef0123456789abcdef",
        ])
        .output()
        .await
        .unwrap();

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let claims = herald::Auth::hs256(b"s3cret-0123456789abcdef0123456789abcdef")
        .verify(lines[0])
        .unwrap();
    assert_eq!(claims.user.as_str(), "alice");
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_one_line_reason_and_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/x.db", dir.path().display());
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let ports = ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"];
    let serve = |more: &[&str]| -> Vec<String> {
        ["serve"]
            .iter()
            .chain(&ports)
            .chain(more)
            .map(|arg| arg.to_string())
            .collect()
    };
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["token".into(), "alice".into()],
            "herald token needs --jwt-secret",
        ),
        (
            vec!["serve".into(), "--http".into(), "not an address".into()],
            "--http: cannot parse or resolve address 'not an address'",
        ),
        (
            serve(&["--database-url", "mysql://nope"]),
            "cannot open the database: error with configuration: the database URL must start with sqlite: or postgres:",
        ),
        (
            serve(&["--database-url", "postgres://127.0.0.1:1/x"]),
            "cannot open the database: ",
        ),
        (
            serve(&[
                "--database-url",
                &database,
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                missing.to_str().unwrap(),
            ]),
            // The cause, from the operating system, follows the reason.
            "missing.pem: No such file or directory",
        ),
        (
            serve(&[
                "--database-url",
                &database,
                "--jwt-jwks",
                not_pem.to_str().unwrap(),
                "--jwt-any-issuer",
                "--jwt-any-audience",
            ]),
            "not.pem: not a JWKS: expected value at line 1",
        ),
    ];
    for (args, expected) in cases {
        let output = herald_command().args(&args).output().await.unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{args:?}");
        let reason: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("herald: "))
            .collect();
        assert_eq!(reason.len(), 1, "{args:?}: {stderr}");
        assert!(reason[0].contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_first_run_prints_working_demo_tokens_and_sigterm_exits_zero_with_streams_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut herald = Process::serve(dir.path(), |_| {}).await;
    let token = loop {
        let line = tokio::time::timeout(PATIENCE, herald.stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(token) = line.trim().strip_prefix("alice's token: ") {
            break token.to_owned();
        }
    };

    let mut client = herald.client().await;
    let request = authorized(
        pb::SubscribeMessagesRequest::default(),
        &format!("Bearer {token}"),
    );
    let mut stream = client
        .subscribe_messages(request)
        .await
        .unwrap()
        .into_inner();
    // Read the stream's end while the process shuts down, as a client would.
    let (status, (exit, log)) = tokio::join!(end_of(&mut stream, PATIENCE), herald.terminate());

    assert_eq!(status.code(), Code::Unavailable, "{status:?}\n{log}");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_config_file_sets_what_flags_and_environment_leave_unset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    let settings = "jwt-secret = \"from-the-file-0123456789abcdef0123456789abcdef\"\nmax_content_bytes = 10\nmax-participants = 5\ncors-origin = [\"http://a.example\", \"http://b.example\"]\n";
    std::fs::write(&file, settings).unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command
            .arg("--config")
            .arg(&file)
            .args(["--max-content-bytes", "20"])
            .env("HERALD_MAX_PARTICIPANTS", "2");
    })
    .await;
    let bearer = format!(
        "Bearer {}",
        crate::support::mint("from-the-file-0123456789abcdef0123456789abcdef", "alice")
    );
    let mut client = herald.client().await;
    let pair = pb::CreateConversationRequest {
        participant_ids: vec!["bob".into()],
    };
    let conversation = client
        .create_conversation(authorized(pair, &bearer))
        .await
        .unwrap()
        .into_inner();
    let send = |content: &str| {
        let body = pb::CreateMessageRequest {
            conversation_id: conversation.id.clone(),
            content: content.into(),
            ..Default::default()
        };
        authorized(body, &bearer)
    };

    let fifteen = client.create_message(send("fifteen bytes!!")).await;
    let too_long = client.create_message(send("twenty-one bytes long")).await;
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/api/messages", herald.http),
        )
        .header("origin", "http://b.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();

    let group = pb::CreateConversationRequest {
        participant_ids: vec!["bob".into(), "carol".into()],
    };
    let group = client.create_conversation(authorized(group, &bearer)).await;
    assert_eq!(
        code(group),
        Code::InvalidArgument,
        "the environment (2) wins over the file (5)"
    );
    assert!(fifteen.is_ok(), "the flag (20) wins over the file (10)");
    assert_eq!(code(too_long), Code::InvalidArgument);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://b.example"
    );
    herald.terminate().await;

    std::fs::write(&file, "no-such-setting = 1\n").unwrap();
    let output = herald_command()
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("unknown setting 'no-such-setting'"),
        "{stderr}"
    );

    // The file belongs to `serve` alone: `token` neither reads it nor takes
    // a user called "serve" for the subcommand.
    let output = herald_command()
        .env("HERALD_CONFIG", &file)
        .args(["token", "--jwt-secret", &"s".repeat(32), "serve"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let token = String::from_utf8(output.stdout).unwrap();
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "serve", "{claims}");
}
