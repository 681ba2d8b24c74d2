//! The README's grpcurl session, run as written (with the built binary in
//! place of `cargo run --release -q --`), so the docs cannot rot.

use std::time::Duration;

#[tokio::test]
async fn the_readme_grpcurl_session_works_as_written() {
    let present = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok();
    if !crate::support::tools_ready("grpcurl", present) {
        return;
    }
    let readme = include_str!("../../README.md");
    let session = readme
        .split("<!-- grpcurl-session: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- grpcurl-session: end -->").next())
        .and_then(|block| block.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README has a marked grpcurl session");
    // Free ports of its own, so a herald already running on the defaults
    // (a developer's) does not answer in its place.
    let free = || format!("127.0.0.1:{}", crate::support::free_port());
    let (http, grpc) = (free(), free());
    assert!(session.contains("serve --database-url") && session.contains("127.0.0.1:50051"));
    let script = session
        .replace("cargo run --release -q --", env!("CARGO_BIN_EXE_herald"))
        .replace(
            "serve --database-url",
            &format!("serve --http {http} --grpc {grpc} --database-url"),
        )
        .replace("127.0.0.1:50051", &grpc);
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

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "herald.v1.Messenger",
        "grpc.health.v1.Health",
        "rpc SubscribeMessages",
        "\"messages\": [",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    // Once as CreateMessage's answer, once on bob's stream, once in ListMessages.
    assert_eq!(
        stdout.matches("\"content\": \"hello, bob\"").count(),
        3,
        "{stdout}\n{stderr}"
    );
}
