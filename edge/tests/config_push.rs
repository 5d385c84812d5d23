//! Configuration pushes against a real agent process (`vigil-edge run`), a real TLS Mosquitto and
//! a stand-in central that signs `ApplyConfig` commands: a valid push is installed, restarted on and
//! kept; a forged one is ignored; an invalid one is refused with the exact error while the old file
//! stays; one that cuts the gateway off from central is rolled back by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command as Process};
use std::time::Duration;

use rumqttc::QoS;
use support::{ENTERPRISE, Park, StandInCentral, gateway_id, wait_for};
use vigil_common::{Channel, Command, CommandAction, EnterpriseId, PushResult, SigningKey, Topic};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_configurations_are_validated_installed_kept_refused_or_rolled_back() {
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    let _ = park.gateway_config(park.broker.port());
    let original = std::fs::read_to_string(park.config_file()).unwrap();
    let _agent = start(&park);
    assert!(wait_for(30, || running(&central) == Some(0)).await, "the agent reports the installed file as version 0");

    // 1. A valid push: installed, the agent restarts on it, reaches central, keeps it.
    let v1 = original.replace("interval_ms = 20", "interval_ms = 25");
    assert_ne!(v1, original);
    push(&central, &park.central_key, 1, &v1).await;
    let kept = wait_for(60, || outcome(&central, 1) == Some(PushResult::Applied)).await;
    assert!(kept, "version 1 applied; agent log:\n{}", log(&park));
    assert_eq!(running(&central), Some(1));
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), v1, "the pushed file is in place");
    let previous = park.dir.path().join("gateway.toml.previous");
    assert!(!previous.exists(), "nothing to roll back to once kept");

    // 2. Signed by another key: ignored, nothing changes.
    let forged = v1.replace("interval_ms = 25", "interval_ms = 30");
    push(&central, &SigningKey::generate().unwrap(), 2, &forged).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), v1, "a forged push changes nothing");
    assert!(outcome(&central, 2).is_none(), "and is not even reported as handled");
    assert!(log(&park).contains("command refused"), "the refusal is logged");

    // 3. Invalid: refused with the exact problem; the old file stays and the agent goes on.
    let invalid = v1.replace("batch_max_age_ms = 100", "batch_max_age_ms = 5");
    push(&central, &park.central_key, 2, &invalid).await;
    assert!(wait_for(30, || matches!(outcome(&central, 2), Some(PushResult::Rejected(_)))).await, "version 2 refused");
    let Some(PushResult::Rejected(why)) = outcome(&central, 2) else { unreachable!() };
    assert!(why.contains("batch_max_age_ms") && why.contains("outside 10..=3600000"), "the exact error: {why}");
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), v1, "the running file stays");
    assert_eq!(running(&central), Some(1));
    let batches_before = central.received.lock().unwrap().batches.len();
    let more = wait_for(10, || central.received.lock().unwrap().batches.len() > batches_before + 5).await;
    assert!(more, "the agent keeps sending");

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
    assert_eq!(std::fs::read_to_string(park.config_file()).unwrap(), v1, "the previous file is back");
    assert_eq!(running(&central), Some(1), "and runs as version 1");
}
