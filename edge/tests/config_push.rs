//! Configuration pushes against a real agent process (`vigil-edge run`), a real TLS Mosquitto and
//! a stand-in central that signs `ApplyConfig` commands: a valid push is installed, restarted on and
//! kept; a forged one is ignored; an invalid one is refused with the exact error while the old file
//! stays; one that cuts the gateway off from central is rolled back by itself. Pushed files go to the
//! push directory beside the spool, never over the installed file, which may be read-only (as
//! `/etc/vigil/` is on a packaged gateway); an edit of the installed file wins over an earlier push.
//! The agent's status page counts the outcomes on `/metrics`, across the restarts pushes cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command as Process};
use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use rumqttc::QoS;
use support::{ENTERPRISE, Park, StandInCentral, gateway_id, wait_for};
use vigil_common::{Channel, Command, CommandAction, EnterpriseId, PushResult, SigningKey, Topic};
use vigil_edge::sources::camera::client;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(park: &Park) -> Agent {
    let child = Process::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["run", "--config"])
        .arg(park.config_file())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(park.dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    Agent(child)
}

fn command_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn push(central: &StandInCentral, key: &SigningKey, version: u64, toml: &str) {
    let now = vigil_edge::spool::now_ms();
    let cmd = Command {
        gateway: gateway_id(),
        id: command_id(),
        issued_ms: now,
        expires_ms: now + 60_000,
        action: CommandAction::ApplyConfig { version, toml: toml.to_owned() },
    };
    let topic = Topic::new(EnterpriseId::new(ENTERPRISE).unwrap(), gateway_id(), Channel::DownCmd).to_string();
    central.client.publish(topic, QoS::AtLeastOnce, false, cmd.seal(key).unwrap()).await.unwrap();
}

/// The newest state's last push, if it is for `version`.
fn outcome(central: &StandInCentral, version: u64) -> Option<PushResult> {
    let r = central.received.lock().unwrap();
    let last = r.states.iter().rev().find(|s| s.online)?.config.last_push.clone()?;
    (last.version == version).then_some(last.result)
}

fn running(central: &StandInCentral) -> Option<u64> {
    let r = central.received.lock().unwrap();
    r.states.iter().rev().find(|s| s.online).map(|s| s.config.running)
}

fn log(park: &Park) -> String {
    std::fs::read_to_string(park.dir.path().join("agent.log")).unwrap_or_default()
}

const STATUS_PASSWORD: &str = "push metrics";

/// A `[status]` section on a free port, and the port.
fn status_section() -> (String, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hash = vigil_edge::status::hash_password(STATUS_PASSWORD).unwrap();
    (format!("\n[status]\nlisten = \"127.0.0.1:{port}\"\npassword_hash = \"{hash}\"\n"), port)
}

/// The push figures on the status page's `/metrics`, in the order `expected` gives them, once they
/// equal `expected` (the page goes away and comes back with every restart a push causes); the last
/// figures read if they never do.
async fn push_metrics(port: u16, expected: [f64; 6]) -> [f64; 6] {
    const NAMES: [&str; 6] = [
        "vigil_edge_config_pushes_total{result=\"on_trial\"}",
        "vigil_edge_config_pushes_total{result=\"applied\"}",
        "vigil_edge_config_pushes_total{result=\"rejected\"}",
        "vigil_edge_config_pushes_total{result=\"rolled_back\"}",
        "vigil_edge_config_running_version",
        "vigil_edge_config_trial_version",
    ];
    let auth =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("technician:{STATUS_PASSWORD}")));
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut seen = [-1.0; 6];
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let headers = [("authorization", auth.clone())];
        if let Ok(r) = client::send(Method::GET, &url, &headers, Vec::new(), Duration::from_secs(5), 1 << 24).await
            && r.status == 200
        {
            let text = String::from_utf8(r.body).unwrap();
            for (value, name) in seen.iter_mut().zip(NAMES) {
                *value =
                    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(-1.0);
            }
            if seen == expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_configurations_are_validated_installed_kept_refused_or_rolled_back() {
    let mut park = Park::new();
    let (status, status_port) = status_section();
    park.extra_config = status;
    let central = StandInCentral::start(&park).await;
    let _ = park.gateway_config(park.broker.port());
    let original = std::fs::read_to_string(park.config_file()).unwrap();
    let _agent = start(&park);
    assert!(wait_for(30, || running(&central) == Some(0)).await, "the agent reports the installed file as version 0");
    // /metrics: on_trial, applied, rejected, rolled_back, running version, trial version.
    assert_eq!(push_metrics(status_port, [0.0; 6]).await, [0.0; 6], "no pushes yet");

    // 1. A valid push: installed, the agent restarts on it, reaches central, keeps it.
    let v1 = original.replace("interval_ms = 20", "interval_ms = 25");
    assert_ne!(v1, original);
    push(&central, &park.central_key, 1, &v1).await;
    let kept = wait_for(60, || outcome(&central, 1) == Some(PushResult::Applied)).await;
    assert!(kept, "version 1 applied; agent log:\n{}", log(&park));
    assert_eq!(running(&central), Some(1));
    let pushed = park.dir.path().join("config").join("gateway.toml");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "the pushed file is in the push directory");
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), original, "the installed file is untouched");
    let previous = park.dir.path().join("config").join("gateway.toml.previous");
    assert!(!previous.exists(), "nothing to roll back to once kept");
    assert!(log(&park).contains("pushed version 1"), "the log says which file runs");

    // 2. Signed by another key: ignored, nothing changes.
    let forged = v1.replace("interval_ms = 25", "interval_ms = 30");
    push(&central, &SigningKey::generate().unwrap(), 2, &forged).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "a forged push changes nothing");
    assert!(outcome(&central, 2).is_none(), "and is not even reported as handled");
    assert!(log(&park).contains("command refused"), "the refusal is logged");

    // 3. Invalid: refused with the exact problem; the old file stays and the agent goes on.
    let invalid = v1.replace("batch_max_age_ms = 100", "batch_max_age_ms = 5");
    push(&central, &park.central_key, 2, &invalid).await;
    assert!(wait_for(30, || matches!(outcome(&central, 2), Some(PushResult::Rejected(_)))).await, "version 2 refused");
    let Some(PushResult::Rejected(why)) = outcome(&central, 2) else { unreachable!() };
    assert!(why.contains("batch_max_age_ms") && why.contains("outside 10..=3600000"), "the exact error: {why}");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "the running file stays");
    assert_eq!(running(&central), Some(1));
    let batches_before = central.received.lock().unwrap().batches.len();
    let more = wait_for(10, || central.received.lock().unwrap().batches.len() > batches_before + 5).await;
    assert!(more, "the agent keeps sending");
    // The install was counted by the turn before the restart, the keep and the refusal by this one.
    let expected = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
    assert_eq!(push_metrics(status_port, expected).await, expected, "one on trial, applied and refused; v1 runs");

    // 4. Valid but cuts the gateway off (wrong broker port): rolled back after the trial window.
    let cut_off = v1
        .replace(&format!("port = {}", park.broker.port()), "port = 9")
        .replace("resend_after_s = 3", "resend_after_s = 3\nconfig_trial_s = 5");
    assert_ne!(cut_off, v1);
    push(&central, &park.central_key, 3, &cut_off).await;
    let rolled_back = wait_for(60, || matches!(outcome(&central, 3), Some(PushResult::RolledBack(_)))).await;
    assert!(rolled_back, "version 3 rolled back; agent log:\n{}", log(&park));
    let Some(PushResult::RolledBack(why)) = outcome(&central, 3) else { unreachable!() };
    assert!(why.contains("did not reach central within 5 s"), "{why}");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "the previous file is back");
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), original, "the installed file is untouched");
    assert_eq!(running(&central), Some(1), "and runs as version 1");
    let expected = [2.0, 1.0, 1.0, 1.0, 1.0, 0.0];
    assert_eq!(push_metrics(status_port, expected).await, expected, "the rollback is counted too");
}

/// The packaged layout without the package: the installed file in a read-only directory (as
/// `/etc/vigil` under `ProtectSystem=strict`), the spool in a writable one. Pushes, their previous
/// copy and the push status all land in `config/` beside the spool; which file runs follows the
/// documented precedence. As root the directory permissions do not bite, so the paths are checked
/// as well as the outcome.
#[test]
fn pushes_live_beside_the_spool_and_an_edit_of_the_installed_file_wins() {
    use std::os::unix::fs::PermissionsExt as _;
    use vigil_edge::config_push::{self, ConfigPush, Files, Received};

    let dir = tempfile::tempdir().unwrap();
    let (etc, var) = (dir.path().join("etc"), dir.path().join("var"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&var).unwrap();
    vigil_common::keyfile::create(&var.join("gw.key")).unwrap();
    let central = SigningKey::generate().unwrap().public_key().to_text();
    let text = format!(
        "[gateway]\nid = \"gw-ro\"\nenterprise = \"ent-a\"\nkey_file = \"{v}/gw.key\"\n\n[spool]\npath = \"{v}/spool\"\n\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = 1883\nplaintext = true\ncentral_keys = [\"{central}\"]\n",
        v = var.display()
    );
    let installed = etc.join("gateway.toml");
    std::fs::write(&installed, &text).unwrap();
    let read_only = |on: bool| {
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(if on { 0o555 } else { 0o755 })).unwrap()
    };
    read_only(true);
    let etc_writable = std::fs::write(etc.join("probe"), b"x").is_ok();

    // The path choice: `config` beside the spool directory.
    let files = Files::of(&installed).unwrap();
    assert_eq!(files.dir, var.join("config"));
    assert_eq!(files.pushed, var.join("config").join("gateway.toml"));
    let s = config_push::select(&installed).unwrap();
    assert!(!s.pushed && s.file == installed, "no push yet: the installed file runs ({})", s.reason);
    assert!(s.reason.contains("installed file"), "{}", s.reason);

    // A push is installed in the push directory; the read-only installed file is untouched.
    let plant = config_push::load(&installed).unwrap();
    let store = ConfigPush::open(&plant.installed, &plant.file).unwrap();
    let v1 = text.replace("port = 1883", "port = 1884");
    assert_eq!(store.receive(1, &v1, &plant), Received::Installed);
    assert_eq!(std::fs::read_to_string(&files.pushed).unwrap(), v1);
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), text);
    assert!(var.join("config/gateway.toml.push.json").is_file(), "the push status is beside it");
    assert!(!var.join("config/gateway.toml.previous").exists(), "it replaced the installed file: nothing to copy");
    let s = config_push::select(&installed).unwrap();
    assert!(s.pushed && s.version == 1 && s.reason.contains("on trial"), "{}", s.reason);
    store.commit();
    assert_eq!(store.report().running, 1);
    let counts = store.metrics().counts;
    assert_eq!((counts.on_trial, counts.applied, counts.rejected, counts.rolled_back), (1, 1, 0, 0));

    // The next start loads the pushed file, anchored at the installed file's directory.
    let plant = config_push::load(&installed).unwrap();
    assert_eq!((plant.file.as_path(), plant.installed.as_path()), (files.pushed.as_path(), installed.as_path()));
    assert_eq!(plant.config.uplink.as_ref().unwrap().port, 1884);
    let store = ConfigPush::open(&plant.installed, &plant.file).unwrap();
    assert_eq!(store.report().running, 1);
    assert!(store.describe().contains("pushed version 1, kept"), "{}", store.describe());
    assert_eq!(store.metrics().counts.applied, 1, "the counts survive the restart");
    assert!(matches!(store.receive(0, &v1, &plant), Received::Rejected(_)), "older than the running version");

    // A second push keeps the first as the previous copy; a rollback puts it back.
    let v2 = text.replace("port = 1883", "port = 1885");
    assert_eq!(store.receive(2, &v2, &plant), Received::Installed);
    assert_eq!(store.metrics().trial, Some(2));
    assert_eq!(std::fs::read_to_string(var.join("config/gateway.toml.previous")).unwrap(), v1);
    store.roll_back("test").unwrap();
    assert_eq!(std::fs::read_to_string(&files.pushed).unwrap(), v1);
    assert!(!var.join("config/gateway.toml.previous").exists());
    assert_eq!(store.report().running, 1);
    let m = store.metrics();
    assert_eq!((m.running, m.trial), (1, None));
    let counts = m.counts;
    assert_eq!((counts.on_trial, counts.applied, counts.rejected, counts.rolled_back), (2, 1, 1, 1));

    // A kept pushed file that no longer loads is skipped for the installed file.
    std::fs::write(&files.pushed, v1.replace("[uplink]", "[uplink]\nno_such_key = 1")).unwrap();
    assert_eq!(config_push::load(&installed).unwrap().file, installed, "the installed file runs instead");
    std::fs::write(&files.pushed, &v1).unwrap();

    // The technician edits the installed file: the edit wins, the pushed file is set aside.
    read_only(false);
    let edited = text.replace("port = 1883", "port = 1886");
    std::fs::write(&installed, &edited).unwrap();
    read_only(true);
    let s = config_push::select(&installed).unwrap();
    assert!(!s.pushed && s.overridden == Some(1) && s.reason.contains("edit wins"), "{}", s.reason);
    let plant = config_push::load(&installed).unwrap();
    assert_eq!(plant.file, installed);
    assert_eq!(plant.config.uplink.as_ref().unwrap().port, 1886);
    assert!(!files.pushed.exists() && var.join("config/gateway.toml.replaced").is_file());
    let store = ConfigPush::open(&plant.installed, &plant.file).unwrap();
    let report = store.report();
    assert_eq!(report.running, 0, "the installed file runs as version 0");
    assert_eq!(store.metrics().counts.rolled_back, 2, "setting the pushed file aside counts as a rollback");
    let Some(PushResult::RolledBack(why)) = report.last_push.map(|l| l.result) else { panic!("a rollback") };
    assert!(why.contains("edited on the gateway"), "{why}");

    // A trial over the installed file rolls back to it (the pushed file goes away).
    assert_eq!(store.receive(3, &v1, &plant), Received::Installed);
    store.roll_back("test").unwrap();
    assert!(!files.pushed.exists());
    assert!(!config_push::select(&installed).unwrap().pushed);
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), edited);
    read_only(false);
    if !etc_writable {
        eprintln!("the installed directory was really read-only");
    }
}
