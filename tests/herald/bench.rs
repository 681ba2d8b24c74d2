//! A smoke run of every herald-bench scenario with tiny counts against the
//! real binary, so the benchmark tool keeps working. (The figures come from
//! `bench/run.sh`, never from tests.)

use crate::support::Process;
use std::path::PathBuf;

/// herald-bench is a package of its own (it speaks only the wire), built
/// beside herald by `cargo test` at the workspace root; built here when a
/// narrower command left it out.
async fn bench_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_herald")).with_file_name("herald-bench");
    if !binary.exists() {
        let built = tokio::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "herald-bench"])
            .status()
            .await
            .unwrap();
        assert!(built.success(), "cargo build -p herald-bench");
    }
    binary
}

async fn run_bench(args: &[&str]) -> String {
    let output = tokio::process::Command::new(bench_binary().await)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .expect("the bench ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs_against_herald() {
    let dir = tempfile::tempdir().unwrap();
    let herald = Process::serve(dir.path(), |command| {
        command.args([
            "--jwt-secret",
            "bench-secret-0123456789abcdef0123456789abcdef",
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
            "--presence-grace",
            "200ms",
        ]);
    })
    .await;
    let pid = herald.child.id().unwrap().to_string();
    let target = [
        "--http",
        &herald.http,
        "--grpc",
        &herald.grpc,
        "--jwt-secret",
        "bench-secret-0123456789abcdef0123456789abcdef",
        "--pid",
        &pid,
    ];

    let idle = run_bench(&[&["idle", "--subscribers", "20"], &target[..]].concat()).await;
    let group =
        run_bench(&[&["group", "--users", "10", "--messages", "5"], &target[..]].concat()).await;
    let direct = run_bench(
        &[
            &[
                "direct",
                "--users",
                "10",
                "--messages",
                "10",
                "--rate",
                "200",
            ],
            &target[..],
        ]
        .concat(),
    )
    .await;
    // Edits and reactions, received on the event streams.
    let mut changes = Vec::new();
    for op in ["edit", "react"] {
        let direct = ["direct", "--users", "10", "--messages", "10", "--op", op];
        changes.push(run_bench(&[&direct[..], &target[..]].concat()).await);
    }
    let over_grpc = [
        "group",
        "--transport",
        "grpc",
        "--users",
        "10",
        "--messages",
        "5",
    ];
    let over_grpc = run_bench(&[&over_grpc[..], &target[..]].concat()).await;
    let crossnode = [
        "crossnode",
        "--write",
        &herald.grpc,
        "--read",
        &herald.grpc,
        "--jwt-secret",
        "bench-secret-0123456789abcdef0123456789abcdef",
        "--messages",
        "20",
    ];
    let crossnode = run_bench(&crossnode).await;
    let hostile = [
        "hostile",
        "--seconds",
        "1",
        "--rate",
        "20",
        "--slow-connections",
        "10",
        "--stream-flood",
        "10",
        "--resumers",
        "2",
        "--history",
        "10",
        "--anonymous",
        "4",
        "--announced",
        "2",
        "--stalled",
        "4",
        "--stuck",
        "2",
    ];
    let hostile = run_bench(&[&hostile[..], &target[..]].concat()).await;
    let presence = [
        "presence",
        "--users",
        "20",
        "--group",
        "5",
        "--rate",
        "20",
        "--away-ms",
        "600",
        "--seconds",
        "1",
    ];
    let presence = run_bench(&[&presence[..], &target[..]].concat()).await;

    assert!(idle.contains("streams=20 "), "{idle}");
    assert!(group.contains("delivered=50 "), "{group}");
    assert!(direct.contains("rate=200 delivered=20 "), "{direct}");
    for change in &changes {
        assert!(change.contains("delivered=20 "), "{change}");
    }
    assert!(
        over_grpc.contains("transport=Grpc") && over_grpc.contains("delivered=50 "),
        "{over_grpc}"
    );
    assert!(crossnode.contains("delivered=20 "), "{crossnode}");
    assert!(
        hostile.contains("success_rate=1.0000 lost=0 duplicated=0 forged_delivered=0 "),
        "{hostile}"
    );
    assert!(hostile.contains(" presence_leaked=0"), "{hostile}");
    let events = presence
        .split_whitespace()
        .find_map(|field| field.strip_prefix("presence_events="))
        .and_then(|count| count.parse::<u64>().ok());
    assert!(events.is_some_and(|events| events > 0), "{presence}");
    herald.terminate().await;
}
