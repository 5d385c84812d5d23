//! The demo park as the README runs it, headless: `vigil-demo --check` generates the park from
//! `configs/demo/park.toml`, starts central (embedded broker and storage), enrols every gateway with
//! a one-time token and `vigil-edge enroll`, starts the simulated plants (Modbus TCP/RTU, a DCS over
//! OPC UA with SignAndEncrypt and its certificate trusted), cameras and gateways, and exits 0 only
//! when every expected alarm was raised (tank H/HH, gas H/HH, a DCS vessel's H, a silent levelling
//! sensor, the cut gateway, both cameras' gas leaks), each camera alarm carries a snapshot central
//! serves, the maintenance window's alarm is suppressed, every DCS point has a good sample at
//! central, and every gateway's heartbeat arrived without a gap after the outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_park_runs_its_scenario_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-demo"))
        .args(["--check", "--check-timeout-s", "300", "--dir"])
        .arg(&run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The logs say why a process misbehaved; show the end of each.
        for entry in std::fs::read_dir(run.join("logs")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!("--- {} ---", entry.path().display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    assert!(out.status.success(), "vigil-demo --check failed:\n{stderr}");
    assert!(stderr.contains("check passed"), "{stderr}");
}
