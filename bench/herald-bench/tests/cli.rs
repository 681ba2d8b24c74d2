//! The command line lists every scenario. (Each scenario runs against a real
//! herald in herald's own suite, `tests/herald/bench.rs`; this test also
//! makes `cargo test` build the binary that suite runs.)

#[test]
fn every_scenario_is_on_the_command_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for scenario in ["crossnode", "idle", "group", "direct", "hostile"] {
        assert!(help.contains(scenario), "{scenario} missing from:\n{help}");
    }
}
