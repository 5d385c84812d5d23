//! End to end across real processes: `vigil-edge` -> a real Mosquitto with mutual TLS and ACLs ->
//! `vigil-central` -> its HTTP query API. Both the gateway and central are killed with SIGKILL
//! repeatedly during a steady stream; afterwards central holds every sample each gateway run
//! produced exactly once, in order, without gaps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vigil_tests::{http_get_auth, login, run_to_end, spawn, terminate};
use vigil_tools::broker::{Mosquitto, free_port};
use vigil_tools::pki::Pki;

struct Park {
    dir: tempfile::TempDir,
    _broker: Mosquitto,
    api_port: u16,
    password: String,
}

fn write(path: &Path, text: String) {
    std::fs::write(path, text).unwrap();
}

fn setup() -> Park {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::create(&d.join("pki")).unwrap();
    let server = pki.issue("broker", "broker", &["127.0.0.1", "localhost"]).unwrap();
    let central_tls = pki.issue("central", "central", &[]).unwrap();
    let gw_tls = pki.issue("gw-1", "gw-1", &[]).unwrap();
    let broker = Mosquitto::start_tls(&d.join("broker"), &pki, &server, "central").unwrap();
    let central_pub =
        run_to_end("vigil-central", &["keygen", "--out", d.join("central.key").to_str().unwrap()]).unwrap();
    let gw_pub = run_to_end("vigil-edge", &["keygen", "--out", d.join("gw.key").to_str().unwrap()]).unwrap();
    let api_port = free_port().unwrap();
    // Each gateway run counts its heartbeat up from 0: past 30 it crosses HH.
    write(
        &d.join("alarms.toml"),
        r#"
[[point]]
id = "gw-1/gateway.heartbeat"
gateway = "gw-1"
grade = "A"
hh = 30.0
"#
        .to_owned(),
    );
    write(
        &d.join("central.toml"),
        format!(
            r#"
data_dir = "{data}"
key_file = "{key}"
alarms = "{alarms}"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "central"
keep_alive_s = 5

[mqtt.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tlskey}"

[ingest]
resend_after_ms = 2000
checkpoint_interval_s = 2

[api]
listen = "127.0.0.1:{api_port}"
"#,
            alarms = d.join("alarms.toml").display(),
            data = d.join("central-data").display(),
            key = d.join("central.key").display(),
            port = broker.port(),
            ca = pki.ca_file().display(),
            cert = central_tls.cert.display(),
            tlskey = central_tls.key.display(),
        ),
    );
    write(
        &d.join("gateway.toml"),
        format!(
            r#"
[gateway]
id = "gw-1"
enterprise = "ent-a"
key_file = "{key}"

[spool]
path = "{spool}"
batch_max_age_ms = 100

[system]
interval_ms = 20

[uplink]
host = "127.0.0.1"
port = {port}
central_keys = ["{central}"]
keepalive_s = 5
resend_after_s = 3

[uplink.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tlskey}"
"#,
            key = d.join("gw.key").display(),
            spool = d.join("spool").display(),
            port = broker.port(),
            central = central_pub.trim(),
            ca = pki.ca_file().display(),
            cert = gw_tls.cert.display(),
            tlskey = gw_tls.key.display(),
        ),
    );
    let conf = d.join("central.toml");
    run_to_end(
        "vigil-central",
        &[
            "gateway",
            "--config",
            conf.to_str().unwrap(),
            "add",
            "gw-1",
            "--enterprise",
            "ent-a",
            "--key",
            gw_pub.trim(),
        ],
    )
    .unwrap();
    // A monitoring operator to query the API as (password generated and printed by the CLI).
    let password = run_to_end(
        "vigil-central",
        &["user", "--config", conf.to_str().unwrap(), "add", "e2e", "--role", "operator", "--generate"],
    )
    .unwrap();
    Park { dir, _broker: broker, api_port, password: password.trim().to_owned() }
}

fn heartbeats(api_port: u16, token: &str) -> Vec<(i64, i64)> {
    let path = format!("/api/v1/raw?point=gw-1/gateway.heartbeat&from=0&to={}&limit=100000", i64::MAX);
    let (status, body) = http_get_auth(api_port, token, &path).unwrap_or((0, String::new()));
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["ts_ms"].as_i64().unwrap(), s["value"].as_i64().unwrap()))
        .collect()
}

#[test]
fn gateway_and_central_killed_repeatedly_lose_and_duplicate_nothing() {
    let park = setup();
    let d = park.dir.path();
    let (gw_conf, central_conf) = (d.join("gateway.toml"), d.join("central.toml"));
    let (gw_args, central_args) =
        (["run", "--config", gw_conf.to_str().unwrap()], ["run", "--config", central_conf.to_str().unwrap()]);
    let mut central = spawn("vigil-central", &central_args, &d.join("central.log")).unwrap();
    // The session is stored by central: the token stays valid across the kills below.
    let token = login(park.api_port, "e2e", &park.password).unwrap();
    let mut edge = spawn("vigil-edge", &gw_args, &d.join("edge.log")).unwrap();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(400 + next() % 1200));
        if round % 3 == 2 {
            central.kill().unwrap(); // SIGKILL
            central.wait().unwrap();
            central = spawn("vigil-central", &central_args, &d.join("central.log")).unwrap();
        } else {
            edge.kill().unwrap();
            edge.wait().unwrap();
            edge = spawn("vigil-edge", &gw_args, &d.join("edge.log")).unwrap();
        }
    }
    // Let the last runs settle: the gateway's backlog drains and central acknowledges it. The
    // heartbeat of the running gateway is past its HH limit by now: the alarm engine raised it.
    std::thread::sleep(Duration::from_secs(4));
    let (status, body) = http_get_auth(park.api_port, &token, "/api/v1/alarms").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gw-1/gateway.heartbeat") && body.contains("HiHi"), "HH alarm for the heartbeat: {body}");
    // Each SIGKILL of the gateway made the broker publish its signed will: central raised the
    // gateway-offline alarm from it (and cleared it on the next birth).
    assert!(body.contains("GatewayOffline"), "gateway offline alarm from the will: {body}");
    // Central was SIGKILLed twice mid-alarm and the heartbeat crossed HH again in every
    // gateway run: still one live alarm record for that point and condition, re-activated, never
    // doubled. (Backfill older than the point's newest data is recorded apart as replay records.)
    let alarms: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hh = alarms["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["key"]["condition"] == "HiHi" && a["key"]["source"]["Point"] == "gw-1/gateway.heartbeat")
        .filter(|a| a["replay"] == false)
        .count();
    assert_eq!(hh, 1, "one live HH alarm for the heartbeat: {body}");
    terminate(&mut edge).unwrap();
    let start = Instant::now();
    let mut samples = heartbeats(park.api_port, &token);
    let mut last_len = 0;
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        samples = heartbeats(park.api_port, &token);
        if !samples.is_empty() && samples.len() == last_len {
            break;
        }
        last_len = samples.len();
    }
    terminate(&mut central).unwrap();

    assert!(samples.len() > 200, "only {} heartbeats at central (see {})", samples.len(), d.display());
    assert!(samples.windows(2).all(|w| w[0].0 < w[1].0), "duplicated or reordered heartbeats");
    // Each gateway run counts 0, 1, 2, ...: a run must be complete up to where it was killed.
    let mut runs = 0;
    let mut expected = 0;
    for (ts, v) in &samples {
        if *v == 0 {
            runs += 1;
            expected = 0;
        }
        assert_eq!(*v, expected, "gap in a gateway run at ts {ts}: a stored sample was lost");
        expected += 1;
    }
    assert!(runs >= 5, "heartbeats of {runs} gateway runs arrived");
}
