//! End to end through central's embedded broker, no other service: real `vigil-edge` ->
//! `vigil-central` (broker, ingest, alarms, API) over mutual TLS with certificates from
//! `vigil-central pki`. The gateway's data is stored and acknowledged (its spool drains), its will
//! raises the offline alarm when it is SIGKILLed, and central (broker included) SIGKILLed and
//! restarted mid-stream loses and duplicates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vigil_edge::spool::{SledSpool, Spool as _};
use vigil_tests::{http_get, http_get_auth, login, run_to_end, spawn, terminate};
use vigil_tools::broker::free_port;

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

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn metric(api_port: u16, name: &str) -> u64 {
    let (_, body) = http_get(api_port, "/metrics").unwrap_or_default();
    body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_park_on_one_binary_stores_acknowledges_and_survives_kills() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (broker_port, api_port) = (free_port().unwrap(), free_port().unwrap());
    let conf = d.join("central.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\n\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\n\n\
             [ingest]\nresend_after_ms = 2000\ncheckpoint_interval_s = 2\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"
        ),
    )
    .unwrap();
    let central_pub =
        run_to_end("vigil-central", &["keygen", "--out", d.join("central.key").to_str().unwrap()]).unwrap();
    // Without certificates, `run` names the missing files and the command that makes them.
    let err = run_to_end("vigil-central", &["run", "--config", conf.to_str().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("pki/ca.pem") && err.contains("pki init --dir"), "{err}");

    let pki = d.join("pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", pki.to_str().unwrap()]).unwrap();
    let gw_files =
        run_to_end("vigil-central", &["pki", "issue-gateway", "gw-1", "--dir", pki.to_str().unwrap()]).unwrap();
    let gw_files = Path::new(gw_files.trim());
    let gw_pub = run_to_end("vigil-edge", &["keygen", "--out", d.join("gw.key").to_str().unwrap()]).unwrap();
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
    let gw_conf = d.join("gateway.toml");
    std::fs::write(
        &gw_conf,
        format!(
            "[gateway]\nid = \"gw-1\"\nenterprise = \"ent-a\"\nkey_file = \"{key}\"\n\n[spool]\npath = \"{spool}\"\nbatch_max_age_ms = 100\n\n\
             [system]\ninterval_ms = 20\n\n[uplink]\nhost = \"127.0.0.1\"\nport = {broker_port}\ncentral_keys = [\"{central}\"]\nkeepalive_s = 5\nresend_after_s = 3\n\n\
             [uplink.tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{tlskey}\"\n",
            key = d.join("gw.key").display(),
            spool = d.join("spool").display(),
            central = central_pub.trim(),
            ca = gw_files.join("ca.pem").display(),
            cert = gw_files.join("gw-1.pem").display(),
            tlskey = gw_files.join("gw-1.key").display(),
        ),
    )
    .unwrap();
    // An operator to query the API as (its session is stored: it survives central's kills below).
    let password = run_to_end(
        "vigil-central",
        &["user", "--config", conf.to_str().unwrap(), "add", "e2e", "--role", "operator", "--generate"],
    )
    .unwrap();
    let (central_args, gw_args) =
        (["run", "--config", conf.to_str().unwrap()], ["run", "--config", gw_conf.to_str().unwrap()]);
    let mut central = spawn("vigil-central", &central_args, &d.join("central.log")).unwrap();
    let mut edge = spawn("vigil-edge", &gw_args, &d.join("edge.log")).unwrap();
    let token = login(api_port, "e2e", password.trim()).unwrap();
    let token = token.as_str();
    wait_for("heartbeats through the embedded broker", Duration::from_secs(60), || {
        heartbeats(api_port, token).len() >= 30
    });

    // SIGKILL the gateway: the broker publishes its will, central raises the offline alarm.
    edge.kill().unwrap();
    edge.wait().unwrap();
    wait_for("the gateway-offline alarm from the will", Duration::from_secs(30), || {
        http_get_auth(api_port, token, "/api/v1/alarms").is_ok_and(|(_, b)| b.contains("GatewayOffline"))
    });
    assert!(metric(api_port, "vigil_broker_wills_total") >= 1);
    assert!(metric(api_port, "vigil_broker_connections_total") >= 2, "central's ingest and the gateway");

    // SIGKILL central (and its broker) mid-stream, twice; the gateway keeps producing meanwhile.
    edge = spawn("vigil-edge", &gw_args, &d.join("edge.log")).unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        central.kill().unwrap();
        central.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        central = spawn("vigil-central", &central_args, &d.join("central.log")).unwrap();
    }
    let before = heartbeats(api_port, token).len();
    wait_for("heartbeats after the restarts", Duration::from_secs(60), || {
        heartbeats(api_port, token).len() >= before + 30
    });
    terminate(&mut edge).unwrap();
    let mut last = 0;
    let mut samples = Vec::new();
    wait_for("the backlog to drain", Duration::from_secs(30), || {
        samples = heartbeats(api_port, token);
        let settled = !samples.is_empty() && samples.len() == last;
        last = samples.len();
        settled
    });
    terminate(&mut central).unwrap();

    assert!(samples.windows(2).all(|w| w[0].0 < w[1].0), "duplicated or reordered heartbeats");
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
    assert_eq!(runs, 2, "both gateway runs arrived");
    // Acknowledged batches were deleted from the gateway's spool: of the hundreds sent, at most the
    // last few (in flight at SIGTERM) remain.
    let (spool, _) = SledSpool::open(&d.join("spool"), 64 << 20).unwrap();
    let left: u64 = spool.stats().classes.iter().map(|c| c.batches).sum();
    assert!(left <= 10, "{left} batches still in the spool after {} heartbeats were stored", samples.len());
}
