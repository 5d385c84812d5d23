//! Kill -9 a real `vigil-central` process many times while a gateway streams batches through the
//! real Mosquitto at 127.0.0.1:1883 and re-sends what is not acknowledged. Afterwards central holds
//! every sample exactly once: nothing acknowledged is lost, nothing is duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{SimGateway, free_port, http_get, http_get_auth, login_blocking, mqtt_client, unique};
use vigil_common::PublicKey;

const BIN: &str = env!("CARGO_BIN_EXE_vigil-central");

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn start(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_api(port: u16) {
    let start = Instant::now();
    while http_get(port, "/metrics").map(|r| r.0).ok() != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(20), "central API did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_many_times_loses_nothing_acknowledged_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("central.key");
    let central_pub = PublicKey::from_text(cli(&["keygen", "--out", key_path.to_str().unwrap()]).trim()).unwrap();
    let api = free_port();
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"{}\"\n\
             [ingest]\nresend_after_ms = 300\ncheckpoint_interval_s = 1\nregistry_reload_s = 1\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            unique("central")
        ),
    )
    .unwrap();
    let ent = unique("ent");
    let mut gw = SimGateway::new(&unique("gw"), &ent, 5);
    let cfg = config.to_str().unwrap();
    cli(&[
        "gateway",
        "--config",
        cfg,
        "add",
        gw.gateway.as_str(),
        "--enterprise",
        &ent,
        "--key",
        &gw.key.public_key().to_text(),
    ]);
    assert!(cli(&["gateway", "--config", cfg, "list"]).contains(gw.gateway.as_str()));
    // The query API needs a user: one with a generated password, logged in once; the session is
    // stored, so the token outlives every kill below.
    let password = cli(&["user", "--config", cfg, "add", "reader", "--role", "operator", "--generate"]);
    assert!(cli(&["user", "--config", cfg, "list"]).contains("\"reader\""));

    let log = dir.path().join("central.log");
    let mut child = start(&config, &log);
    wait_api(api);
    let token = login_blocking(api, "reader", password.trim());
    let (client, mut acks) = mqtt_client(&unique("gwsim"), 1883, &[gw.topic("down/ack")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = 1_795_000_000_000;
    let mut rng = u64::from(std::process::id()) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut acked_any = 0;
    let kills = 12;
    for round in 0..=kills {
        // Stream for a random time, then kill -9 (not after the last round).
        let until = Instant::now() + Duration::from_millis(200 + next() % 700);
        while Instant::now() < until {
            let (_, bytes) = gw.next_batch(10, t0);
            let _ = client.try_publish(gw.topic("up/batch"), rumqttc::QoS::AtLeastOnce, false, bytes);
            for b in gw.due(Duration::from_millis(800)) {
                let _ = client.try_publish(gw.topic("up/batch"), rumqttc::QoS::AtLeastOnce, false, b);
            }
            while let Ok((_, a)) = acks.try_recv() {
                if gw.on_ack(&a, &central_pub).is_some() {
                    acked_any += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if round < kills {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            child = start(&config, &log);
            wait_api(api);
        }
    }
    assert!(acked_any > 0, "acks flowed");
    // Drain: re-send until everything is acknowledged.
    let start_drain = Instant::now();
    while !gw.unacked.is_empty() {
        assert!(start_drain.elapsed() < Duration::from_secs(60), "{} batches never acknowledged", gw.unacked.len());
        for b in gw.due(Duration::from_millis(500)) {
            let _ = client.try_publish(gw.topic("up/batch"), rumqttc::QoS::AtLeastOnce, false, b);
        }
        if let Ok(Some((_, a))) = tokio::time::timeout(Duration::from_millis(100), acks.recv()).await {
            gw.on_ack(&a, &central_pub);
        }
    }
    // One more kill -9 after everything is acknowledged: the WAL replay must not duplicate anything.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = start(&config, &log);
    wait_api(api);

    let mut want = gw.produced.clone();
    want.sort_unstable();
    let path = format!("/api/v1/raw?point={}/{}&from=0&to=9000000000000&limit=100000", gw.gateway, gw.point);
    let (status, body) = http_get_auth(api, &token, &path).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<i64> = v["samples"].as_array().unwrap().iter().map(|s| s["ts_ms"].as_i64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "exactly once: {} stored, {} produced", got.len(), want.len());
    assert_eq!(got, want);
    // Latest and a whole-range aggregate, against the produced data.
    let value = |ts: i64| (ts % 1_000_000) as f64 / 1000.0;
    let (_, body) = http_get_auth(api, &token, &format!("/api/v1/latest?points={}/{}", gw.gateway, gw.point)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = *want.last().unwrap();
    assert_eq!(v["points"][0]["sample"]["ts_ms"].as_i64(), Some(last), "{body}");
    let (from, to) = (want[0], last + 1);
    let (status, body) = http_get_auth(
        api,
        &token,
        &format!("/api/v1/aggregate?point={}/{}&from={from}&to={to}&bucket_ms={}", gw.gateway, gw.point, to - from),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b = &v["buckets"][0];
    assert_eq!(b["count"].as_u64(), Some(want.len() as u64));
    let min = want.iter().map(|&t| value(t)).fold(f64::INFINITY, f64::min);
    let max = want.iter().map(|&t| value(t)).fold(f64::NEG_INFINITY, f64::max);
    let mean = want.iter().map(|&t| value(t)).sum::<f64>() / want.len() as f64;
    assert_eq!(b["min"].as_f64(), Some(min));
    assert_eq!(b["max"].as_f64(), Some(max));
    assert!((b["avg"].as_f64().unwrap() - mean).abs() < 1e-6, "{b}");
    assert_eq!(b["first"].as_f64(), Some(value(from)));
    assert_eq!(b["last"].as_f64(), Some(value(last)));
    let (status, _) = http_get_auth(api, &token, "/api/v1/raw?point=no-slash&from=0&to=1").unwrap();
    assert_eq!(status, 400, "a bad point name is a 400, not a crash");
    let (_, metrics) = http_get(api, "/metrics").unwrap();
    assert!(metrics.contains("vigil_wal_replayed_records"), "{metrics}");
    // Revocation through the CLI, then a clean stop: SIGTERM runs a final checkpoint and exits 0.
    cli(&["gateway", "--config", cfg, "revoke", gw.gateway.as_str()]);
    let listed = cli(&["gateway", "--config", cfg, "list"]);
    let entry: serde_json::Value =
        serde_json::from_str(listed.lines().find(|l| l.contains(gw.gateway.as_str())).unwrap()).unwrap();
    assert!(entry["keys"][0]["revoked_ms"].as_i64().is_some(), "{listed}");
    assert!(entry["last_seen_ms"].as_i64().is_some(), "{listed}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown: {status}");
    let wal_bytes: u64 =
        std::fs::read_dir(dir.path().join("data/wal")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(wal_bytes, 0, "the final checkpoint leaves an empty WAL");
    // And everything is still there after a restart from chunks alone.
    let mut child = start(&config, &log);
    wait_api(api);
    let (_, body) = http_get_auth(api, &token, &path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["samples"].as_array().unwrap().len(), want.len());
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{} batches, {} samples, {kills} kills", gw.next_seq, want.len());
}
