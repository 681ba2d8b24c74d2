//! The README's sessions, run as written (with the built binary in place of
//! `cargo run --release -q --`, and ports of their own), so the docs cannot
//! rot.

use std::time::Duration;

/// Runs the README's shell block marked `marker`; its stdout, or a
/// failure with both outputs. `None` when grpcurl is missing and allowed to be.
async fn run_session(marker: &str) -> Option<String> {
    let present = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok();
    if !crate::support::tools_ready("grpcurl", present) {
        return None;
    }
    let readme = include_str!("../../README.md");
    let session = readme
        .split(&format!("<!-- {marker}: begin -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {marker}: end -->")).next())
        .and_then(|block| block.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap_or_else(|| panic!("the README has a session marked {marker}"));
    // Free ports of its own, so a herald already running on the defaults
    // (a developer's) does not answer in its place.
    let free = || format!("127.0.0.1:{}", crate::support::free_port());
    let (http, grpc) = (free(), free());
    assert!(session.contains("serve --database-url"));
    let script = session
        .replace("cargo run --release -q --", env!("CARGO_BIN_EXE_herald"))
        .replace(
            "serve --database-url",
            &format!("serve --http {http} --grpc {grpc} --database-url"),
        )
        .replace("127.0.0.1:50051", &grpc)
        .replace("127.0.0.1:8080", &http);
    let dir = tempfile::tempdir().unwrap();

    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the session ends")
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    Some(stdout)
}

#[tokio::test]
async fn the_readme_grpcurl_session_works_as_written() {
    let Some(stdout) = run_session("grpcurl-session").await else {
        return;
    };
    for expected in [
        "herald.v1.Messenger",
        "grpc.health.v1.Health",
        "rpc SubscribeMessages",
        "\"messages\": [",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // Once as CreateMessage's answer, once on bob's stream, once in ListMessages.
    assert_eq!(
        stdout.matches("\"content\": \"hello, bob\"").count(),
        3,
        "{stdout}"
    );
}

#[tokio::test]
async fn the_readme_message_changes_session_works_as_written() {
    let Some(stdout) = run_session("changes-session").await else {
        return;
    };
    for expected in [
        // EditMessage's answer (grpcurl prints JSON with spaces).
        "\"content\": \"hello\"",
        "\"editedAt\": \"",
        // The reaction's answer, and the reply.
        r#""reactions":[{"emoji":"👍","count":1,"mine":true}]"#,
        r#""replyToId":""#,
        // Bob's replay: the edit, the reaction, the reply, in order.
        "event: edit",
        "event: reaction",
        // The tombstone.
        r#""deleted":true"#,
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let edit = stdout.find("event: edit").unwrap_or_default();
    let reaction = stdout.find("event: reaction").unwrap_or_default();
    let reply = stdout.rfind(r#"data: {"id""#).unwrap_or_default();
    assert!(edit < reaction && reaction < reply, "{stdout}");
}
