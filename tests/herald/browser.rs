//! The chat page in a real headless Chromium, driven by
//! `tests/browser/chat.mjs` (playwright-core). `scripts/test.sh` installs
//! Chromium and the node package and sets `HERALD_REQUIRE_BROWSER`, so the
//! README's test command always runs this; a bare `cargo test` without them
//! says it skipped.

use std::{path::Path, time::Duration};

#[tokio::test]
async fn two_people_chat_through_the_page_and_it_survives_a_server_restart() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready =
        browser_dir.join("node_modules/playwright-core").exists() && Path::new(&chromium).exists();
    if !ready {
        let required = std::env::var_os("HERALD_REQUIRE_BROWSER").is_some();
        assert!(
            !required,
            "Chromium, grpcurl or tests/browser/node_modules is missing; run scripts/test.sh"
        );
        eprintln!(
            "skipped: Chromium, grpcurl or tests/browser/node_modules is missing (scripts/test.sh installs them)"
        );
        return;
    }

    let run = tokio::process::Command::new("node")
        .arg(browser_dir.join("chat.mjs"))
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test finishes in two minutes")
        .expect("node runs");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("browser chat test passed"), "{stdout}");
}
