//! The monitoring-room web UI end to end: headless Chromium (driven by `tests/ui/e2e.mjs` with
//! playwright-core) against the real `vigil-central` of a small park: a TLS Mosquitto, two
//! gateways (`vigil-edge`) of two enterprises, a simulated Modbus tank gauge (`vigil-sim`).
//! The browser logs in, watches the console while the tank level crosses its HH limit, sees the
//! alarm arrive live, acknowledges it, opens the trend, and an enterprise user sees only its own
//! enterprise. Screenshots of every screen go to `docs/screenshots/`.
//!
//! It needs Chromium, a CJK font, Node.js and `npm ci` in `tests/ui`: `tools/ui-e2e.sh` installs
//! them and runs this test; without them it fails (it never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vigil_tests::{http_get, run_to_end, spawn, terminate};
use vigil_tools::broker::{Mosquitto, free_port};
use vigil_tools::pki::Pki;

const PASSWORD: &str = "Vigil-e2e-2026!Ui";
const POINT: &str = "gw-a/TK101.LT";
const OTHER: &str = "gw-b/gateway.heartbeat";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// What the test needs besides the workspace binaries; a clear failure naming the fix if absent.
fn check_tools() {
    let ui = workspace().join("tests/ui");
    assert!(Path::new(&chromium()).exists(), "{} missing: run tools/ui-e2e.sh (installs chromium)", chromium());
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node missing: run tools/ui-e2e.sh (installs nodejs)");
    assert!(
        ui.join("node_modules/playwright-core").exists(),
        "tests/ui/node_modules missing: run tools/ui-e2e.sh (npm ci in tests/ui)"
    );
}

fn gateway_toml(d: &Path, id: &str, enterprise: &str, broker_port: u16, central_pub: &str, pki: &Pki) -> String {
    let tls = pki.issue(id, id, &[]).unwrap();
    format!(
        r#"
[gateway]
id = "{id}"
enterprise = "{enterprise}"
key_file = "{key}"

[spool]
path = "{spool}"
batch_max_age_ms = 50

[system]
interval_ms = 500

[uplink]
host = "127.0.0.1"
port = {broker_port}
central_keys = ["{central_pub}"]
keepalive_s = 5
resend_after_s = 3

[uplink.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tlskey}"
"#,
        key = d.join(format!("{id}.key")).display(),
        spool = d.join(format!("{id}-spool")).display(),
        ca = pki.ca_file().display(),
        cert = tls.cert.display(),
        tlskey = tls.key.display(),
    )
}

struct Park {
    dir: tempfile::TempDir,
    _broker: Mosquitto,
    api_port: u16,
    central: Child,
    edge_b: Child,
}

fn start_park() -> Park {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::create(&d.join("pki")).unwrap();
    let server = pki.issue("broker", "broker", &["127.0.0.1", "localhost"]).unwrap();
    let central_tls = pki.issue("central", "central", &[]).unwrap();
    let broker = Mosquitto::start_tls(&d.join("broker"), &pki, &server, "central").unwrap();
    let central_pub =
        run_to_end("vigil-central", &["keygen", "--out", d.join("central.key").to_str().unwrap()]).unwrap();
    let central_pub = central_pub.trim();
    let api_port = free_port().unwrap();
    let modbus_port = free_port().unwrap();
    // The tank level (enterprise A, grade S) and gateway B's heartbeat (enterprise B, grade B,
    // past HH within seconds of its start: an alarm of another enterprise).
    write(
        &d.join("alarms.toml"),
        &format!(
            r#"
[[point]]
id = "{POINT}"
gateway = "gw-a"
enterprise = "ent-a"
grade = "S"
hh = 90.0
h = 80.0
l = 10.0
ll = 5.0
deadband = 1.0

[[point]]
id = "{OTHER}"
gateway = "gw-b"
enterprise = "ent-b"
grade = "B"
hh = 5.0
"#
        ),
    );
    write(
        &d.join("central.toml"),
        &format!(
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
checkpoint_interval_s = 5

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
    // Gateway A polls a tank gauge the simulator serves: 50 % for 6 s after the simulator starts,
    // then 95 % (past HH 90).
    let mut gw_a = gateway_toml(d, "gw-a", "ent-a", broker.port(), central_pub, &pki);
    gw_a.push_str(&format!(
        r#"
[[devices]]
name = "tk101"
protocol = "tcp"
host = "127.0.0.1"
port = {modbus_port}
unit = 1
point_prefix = "TK101."
timeout_ms = 500
poll_ms = 200

[[devices.points]]
id = "LT"
kind = "holding"
address = 0
type = "f32"
unit = "%"
range = [0.0, 100.0]
sim = "step 50 95 6"
"#
    ));
    write(&d.join("gw-a.toml"), &gw_a);
    write(&d.join("gw-b.toml"), &gateway_toml(d, "gw-b", "ent-b", broker.port(), central_pub, &pki));
    let conf = d.join("central.toml");
    let conf = conf.to_str().unwrap();
    for (id, ent) in [("gw-a", "ent-a"), ("gw-b", "ent-b")] {
        let key_path = d.join(format!("{id}.key"));
        let public = run_to_end("vigil-edge", &["keygen", "--out", key_path.to_str().unwrap()]).unwrap();
        run_to_end(
            "vigil-central",
            &["gateway", "--config", conf, "add", id, "--enterprise", ent, "--key", public.trim()],
        )
        .unwrap();
    }
    for (user, role, ent) in
        [("op1", "operator", None), ("ent-a-user", "enterprise_user", Some("ent-a")), ("audit1", "auditor", None)]
    {
        add_user(conf, user, role, ent);
    }
    let central = spawn("vigil-central", &["run", "--config", conf], &d.join("central.log")).unwrap();
    let edge_b =
        spawn("vigil-edge", &["run", "--config", d.join("gw-b.toml").to_str().unwrap()], &d.join("gw-b.log")).unwrap();
    let start = Instant::now();
    while http_get(api_port, "/api/v1/health").is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "central's API did not come up (see {})", d.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    Park { dir, _broker: broker, api_port, central, edge_b }
}

/// `vigil-central user add`, the password on stdin.
fn add_user(conf: &str, user: &str, role: &str, enterprise: Option<&str>) {
    let mut args = vec!["user", "--config", conf, "add", user, "--role", role];
    if let Some(e) = enterprise {
        args.extend(["--enterprise", e]);
    }
    let mut child = Command::new(vigil_tests::binary("vigil-central").unwrap())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user add {user}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs chromium, fonts-noto-cjk, node and npm ci in tests/ui: run tools/ui-e2e.sh"]
fn operators_work_a_live_alarm_in_the_browser() {
    check_tools();
    let mut park = start_park();
    let d = park.dir.path().to_owned();
    let shots = std::env::var("VIGIL_SCREENSHOTS").map_or_else(|_| workspace().join("docs/screenshots"), PathBuf::from);
    let mut node = Command::new("node")
        .arg("e2e.mjs")
        .current_dir(workspace().join("tests/ui"))
        .env("VIGIL_URL", format!("http://127.0.0.1:{}", park.api_port))
        .env("VIGIL_OPERATOR", format!("op1:{PASSWORD}"))
        .env("VIGIL_ENTERPRISE_USER", format!("ent-a-user:{PASSWORD}"))
        .env("VIGIL_AUDITOR", format!("audit1:{PASSWORD}"))
        .env("VIGIL_POINT", POINT)
        .env("VIGIL_ENTERPRISE", "ent-a")
        .env("VIGIL_OTHER_POINT", OTHER)
        .env("VIGIL_SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut crossing: Vec<Child> = Vec::new();
    let mut result = None;
    // Every wait in the script is bounded; this bounds the whole run.
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        println!("browser: {line}");
        if line == "READY" {
            // The console is open: start the tank gauge and its gateway; 6 s later the level crosses.
            let gw_a = d.join("gw-a.toml");
            let gw_a = gw_a.to_str().unwrap();
            crossing.push(spawn("vigil-sim", &["modbus", "--config", gw_a], &d.join("sim.log")).unwrap());
            crossing.push(spawn("vigil-edge", &["run", "--config", gw_a], &d.join("gw-a.log")).unwrap());
        }
        if let Some(r) = line.strip_prefix("RESULT ") {
            result = Some(r.to_owned());
        }
    }
    let status = match node.try_wait().unwrap() {
        Some(s) => s,
        None => {
            node.kill().unwrap();
            node.wait().unwrap()
        }
    };
    for mut c in crossing {
        terminate(&mut c).unwrap();
    }
    terminate(&mut park.edge_b).unwrap();
    terminate(&mut park.central).unwrap();
    if !status.success() {
        for log in ["central.log", "gw-a.log", "gw-b.log", "sim.log"] {
            let text = std::fs::read_to_string(d.join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            println!("--- last lines of {log}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    assert!(status.success(), "browser test failed: {}", result.unwrap_or_default());
    println!("ui e2e figures: {}", result.unwrap_or_default());
}
