//! JavaScript clients against the real binary, driven from `tests/browser/`:
//! the chat page and the browser example in headless Chromium
//! (playwright-core), gRPC-Web from Connect's browser transport, and buf
//! lint on the proto. `scripts/test.sh` installs Chromium, grpcurl and the
//! npm packages and sets `HERALD_REQUIRE_TOOLS`, so the README's test command
//! always runs these; a bare `cargo test` without them says it skipped.

use crate::support::tools_ready;
use std::{path::Path, time::Duration};

fn browser_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether the browser tests can run here (or must, per `HERALD_REQUIRE_TOOLS`).
fn ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let grpcurl = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok();
    tools_ready(
        "Chromium, grpcurl and tests/browser/node_modules",
        browser_dir().join("node_modules/playwright-core").exists()
            && Path::new(&chromium).exists()
            && grpcurl,
    )
}

/// Runs `node tests/browser/<script>` against the built binary.
async fn run_script(script: &str) {
    if !ready() {
        return;
    }
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join(script))
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the script finishes in two minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}

#[tokio::test]
async fn two_people_chat_through_the_page_and_it_survives_a_server_restart() {
    run_script("chat.mjs").await;
}

#[tokio::test]
async fn two_pages_see_edits_deletions_reactions_and_replies_live_and_after_a_reload() {
    run_script("changes.mjs").await;
}

#[tokio::test]
async fn a_page_shows_system_messages_apart_and_stops_reconnecting_when_banned() {
    run_script("moderation.mjs").await;
}

#[tokio::test]
async fn three_pages_see_a_group_change_and_read_receipts_through_the_event_stream() {
    run_script("members.mjs").await;
}

#[tokio::test]
async fn a_page_shows_who_is_online_and_who_is_typing() {
    run_script("presence.mjs").await;
}

#[tokio::test]
async fn grpc_web_serves_a_browser_client_library_on_the_http_port() {
    run_script("grpc-web.mjs").await;
}

#[tokio::test]
async fn the_browser_example_receives_and_sends_from_another_origin() {
    run_script("example.mjs").await;
}

/// Runs buf from tests/browser's packages with `args` in the repository;
/// fails with its output unless it succeeds.
async fn buf(args: &[&str]) {
    let buf = browser_dir().join("node_modules/.bin/buf");
    if !tools_ready("buf (tests/browser/node_modules)", buf.exists()) {
        return;
    }
    let output = tokio::process::Command::new(buf)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The proto stays wire- and JSON-compatible with the last released one
/// (tests/proto-released: herald.v1 before message changes), by buf's FILE
/// rules: fields and rpcs are only ever added.
#[tokio::test]
async fn the_proto_breaks_nothing_of_the_released_one() {
    buf(&["breaking", "proto", "--against", "tests/proto-released"]).await;
}

#[tokio::test]
async fn the_proto_passes_buf_lint() {
    buf(&["lint"]).await;
}
