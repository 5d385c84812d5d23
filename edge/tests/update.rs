//! Update bundles with the real `vigil-edge` binary and real files: refusals leave the box
//! untouched, a healthy new version is committed, one that never gets healthy (or crashes) is rolled
//! back by the launcher, and a kill at every step of apply, commit and rollback still ends in a
//! running agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_vigil-edge");

struct Box_ {
    dir: tempfile::TempDir,
}

impl Box_ {
    /// A gateway: agent config (no uplink: healthy means spooling), a release key it trusts.
    fn new() -> Box_ {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(run(&["keygen", "--out", d.join("gw.key").to_str().unwrap()]).status.success());
        let out = run(&["update", "keygen", "--out", d.join("release.key").to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(d.join("release-keys"), format!("# test release key\n{}", String::from_utf8_lossy(&out.stdout)))
            .unwrap();
        let config = format!(
            r#"
[gateway]
id = "gw-upd"
enterprise = "ent-a"
key_file = "{d}/gw.key"

[spool]
path = "{d}/spool"
batch_max_age_ms = 100

[system]
interval_ms = 200

[update]
root = "{d}/agent"
release_keys_file = "{d}/release-keys"
trial_window_s = 10
healthy_for_s = 2
max_attempts = 2
"#,
            d = d.display()
        );
        std::fs::write(d.join("gateway.toml"), config).unwrap();
        Box_ { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn root(&self) -> PathBuf {
        self.path("agent")
    }
    fn config(&self) -> String {
        self.path("gateway.toml").display().to_string()
    }

    /// A bundle of `binary` as `version` for `target`, signed with the trusted release key.
    fn pack(&self, binary: &Path, version: &str, target: Option<&str>, key: &str) -> PathBuf {
        let out = self.path(&format!("{version}-{}.bundle", target.unwrap_or("native")));
        let mut args = vec![
            "update".to_owned(),
            "pack".into(),
            "--binary".into(),
            binary.display().to_string(),
            "--version".into(),
            version.into(),
            "--key".into(),
            self.path(key).display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(t) = target {
            args.extend(["--target".into(), t.into()]);
        }
        let o = Command::new(EXE).args(&args).output().unwrap();
        assert!(o.status.success(), "pack: {}", String::from_utf8_lossy(&o.stderr));
        out
    }

    fn apply(&self, bundle: &Path, crash_at: Option<&str>) -> Output {
        let mut c = Command::new(EXE);
        c.args(["update", "apply", bundle.to_str().unwrap(), "--config", &self.config()]);
        if let Some(step) = crash_at {
            c.env("VIGIL_UPDATE_CRASH_AT", step);
        }
        c.output().unwrap()
    }

    /// A new version that runs the real agent: the debug binary is far above the bundle limit, so
    /// the bundle carries a launcher script that execs it.
    fn agent(&self) -> PathBuf {
        self.script("new-agent", &format!("exec {EXE} \"$@\""))
    }

    /// A fake new version: a shell script.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn launch(&self, crash_at: Option<&str>) -> Child {
        let mut c = Command::new(EXE);
        c.args(["launch", "--config", &self.config()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.path("launcher.log")).unwrap());
        if let Some(step) = crash_at {
            c.env("VIGIL_UPDATE_CRASH_AT", step);
        }
        c.spawn().unwrap()
    }

    fn health(&self) -> Option<serde_json::Value> {
        let text = std::fs::read(self.root().join("health.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn history(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.root().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn events(&self) -> Vec<String> {
        self.history().iter().map(|r| r["event"].as_str().unwrap().to_owned()).collect()
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.root().join("current")).ok().map(|p| p.display().to_string())
    }

    /// Waits until the agent reports healthy with `version` (any when `None`).
    fn wait_healthy(&self, version: Option<&str>, within: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(h) = self.health()
                && h["healthy"] == true
                && version.is_none_or(|v| h["version"] == v)
            {
                return h;
            }
            assert!(
                start.elapsed() < within,
                "no healthy agent{} within {within:?}; health {:?}; history {:?}; log:\n{}",
                version.map(|v| format!(" {v}")).unwrap_or_default(),
                self.health(),
                self.events(),
                std::fs::read_to_string(self.path("launcher.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_event(&self, event: &str, within: Duration) {
        let start = Instant::now();
        while !self.events().iter().any(|e| e == event) {
            assert!(
                start.elapsed() < within,
                "no {event:?} in the history within {within:?}: {:?}; log:\n{}",
                self.events(),
                std::fs::read_to_string(self.path("launcher.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn no_trial(&self) -> bool {
        !self.root().join("trial.json").exists()
    }

    /// Everything under the agent root: names, sizes, link targets.
    fn snapshot(&self) -> Vec<String> {
        fn walk(p: &Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(p) else { return };
            for e in entries.flatten() {
                let path = e.path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    out.push(format!("{} -> {}", path.display(), std::fs::read_link(&path).unwrap().display()));
                } else if meta.is_dir() {
                    walk(&path, out);
                } else if path.file_name().unwrap() != "health.json" {
                    out.push(format!("{} {}", path.display(), meta.len()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root(), &mut out);
        out.sort();
        out
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

/// Stops a launcher like the service manager does (SIGTERM to it and its agent).
fn stop(mut launcher: Child, b: &Box_) {
    let agent = b.health().and_then(|h| h["pid"].as_u64());
    let _ = Command::new("kill").arg("-TERM").arg(launcher.id().to_string()).status();
    let start = Instant::now();
    while launcher.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = launcher.kill();
    let _ = launcher.wait();
    if let Some(pid) = agent {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
    }
}

/// After a launcher was killed with its agent still running (the agent's own kill is the power cut).
fn kill_orphan(b: &Box_) {
    if let Some(pid) = b.health().and_then(|h| h["pid"].as_u64()) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(b.root().join("health.json"));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_signature_wrong_target_truncated_and_untrusted_bundles_are_refused_untouched() {
    let b = Box_::new();
    // Install one good version first, so "untouched" covers a real current version.
    let good = b.pack(&b.agent(), "2.0.0", None, "release.key");
    assert!(b.apply(&good, None).status.success());
    let before = b.snapshot();
    assert!(before.iter().any(|l| l.contains("current -> versions/2.0.0-")), "{before:?}");
    let bytes = std::fs::read(&good).unwrap();

    let mut altered = bytes.clone();
    // A byte of the binary (the last 64 bytes are the signature).
    let at = altered.len() - 66;
    altered[at] ^= 0x40;
    std::fs::write(b.path("altered.bundle"), &altered).unwrap();
    let truncated = &bytes[..bytes.len() - 20];
    std::fs::write(b.path("truncated.bundle"), truncated).unwrap();
    let wrong_target = b.pack(&b.agent(), "2.0.1", Some("armv7-unknown-linux-gnueabihf"), "release.key");
    assert!(run(&["update", "keygen", "--out", b.path("rogue.key").to_str().unwrap()]).status.success());
    let untrusted = b.pack(&b.agent(), "2.0.2", None, "rogue.key");
    std::fs::write(b.path("junk.bundle"), b"PK\x03\x04 definitely a zip file").unwrap();

    for (file, expect) in [
        (b.path("altered.bundle"), "bad signature"),
        (b.path("truncated.bundle"), "bundle is truncated"),
        (wrong_target, "bundle is for target armv7-unknown-linux-gnueabihf, but this gateway runs"),
        (untrusted, "which this gateway does not trust"),
        (b.path("junk.bundle"), "not an update bundle"),
    ] {
        let o = b.apply(&file, None);
        assert!(!o.status.success(), "{} was accepted", file.display());
        let err = stderr(&o);
        assert!(err.contains(expect), "{}: expected {expect:?} in {err}", file.display());
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(b.snapshot(), before, "{} changed the agent root", file.display());
    }
    // A second apply while the first is still on trial is refused too.
    let next = b.pack(&b.agent(), "2.1.0", None, "release.key");
    let o = b.apply(&next, None);
    assert!(!o.status.success() && stderr(&o).contains("is on trial"), "{}", stderr(&o));
    assert_eq!(b.snapshot(), before);
}

#[test]
fn a_healthy_new_version_is_committed() {
    let b = Box_::new();
    let launcher = b.launch(None);
    b.wait_healthy(Some(env!("CARGO_PKG_VERSION")), Duration::from_secs(30));
    let bundle = b.pack(&b.agent(), "9.9.9", None, "release.key");
    let o = b.apply(&bundle, None);
    assert!(o.status.success(), "{}", stderr(&o));
    b.wait_event("committed", Duration::from_secs(30));
    let h = b.wait_healthy(Some("9.9.9"), Duration::from_secs(10));
    assert!(b.no_trial());
    assert!(b.current().unwrap().starts_with("versions/9.9.9-"));
    let status = run(&["update", "status", "--config", &b.config()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("current: 9.9.9") && text.contains("committed"), "{text}");
    stop(launcher, &b);
    drop(h);
}

#[test]
fn a_version_that_never_gets_healthy_is_rolled_back() {
    let b = Box_::new();
    let launcher = b.launch(None);
    b.wait_healthy(None, Duration::from_secs(30));
    let hang = b.script("hang", "exec sleep 600");
    let bundle = b.pack(&hang, "3.0.0-hangs", None, "release.key");
    assert!(b.apply(&bundle, None).status.success());
    b.wait_event("rolled_back", Duration::from_secs(40));
    assert!(b.no_trial());
    assert_eq!(b.current(), None, "back on the packaged agent");
    b.wait_healthy(Some(env!("CARGO_PKG_VERSION")), Duration::from_secs(20));
    let last = b.history().last().cloned().unwrap();
    assert!(last["detail"].as_str().unwrap().contains("not healthy within 10 s"), "{last}");
    stop(launcher, &b);
}

#[test]
fn a_version_that_crashes_is_rolled_back_to_the_previous_installed_one() {
    let b = Box_::new();
    let launcher = b.launch(None);
    b.wait_healthy(None, Duration::from_secs(30));
    let v1 = b.pack(&b.agent(), "4.0.0", None, "release.key");
    assert!(b.apply(&v1, None).status.success());
    b.wait_event("committed", Duration::from_secs(30));
    let v1_link = b.current().unwrap();
    let crash = b.script("crash", "echo boom >&2; exit 3");
    let v2 = b.pack(&crash, "4.1.0", None, "release.key");
    assert!(b.apply(&v2, None).status.success());
    b.wait_event("rolled_back", Duration::from_secs(30));
    assert_eq!(b.current().unwrap(), v1_link);
    b.wait_healthy(Some("4.0.0"), Duration::from_secs(20));
    let last = b.history().last().cloned().unwrap();
    assert!(last["detail"].as_str().unwrap().contains("start(s)"), "{last}");
    stop(launcher, &b);
}

#[test]
fn a_kill_at_every_step_of_apply_leaves_a_working_agent() {
    for step in ["staged", "marked", "switched", "recorded"] {
        let b = Box_::new();
        let bundle = b.pack(&b.agent(), "5.0.0", None, "release.key");
        let o = b.apply(&bundle, Some(step));
        assert_eq!(o.status.code(), Some(9), "{step}: {}", stderr(&o));
        let launcher = b.launch(None);
        b.wait_healthy(None, Duration::from_secs(30));
        // Whatever the step, the trial ends (committed, or dropped before the switch).
        let start = Instant::now();
        while !b.no_trial() {
            assert!(start.elapsed() < Duration::from_secs(30), "{step}: trial never ended: {:?}", b.events());
            std::thread::sleep(Duration::from_millis(100));
        }
        let events = b.events();
        match step {
            "staged" => assert_eq!(b.current(), None, "{step}"),
            "marked" => {
                assert_eq!(b.current(), None, "{step}");
                assert!(events.contains(&"abandoned".to_owned()), "{step}: {events:?}");
            }
            _ => {
                b.wait_event("committed", Duration::from_secs(20));
                b.wait_healthy(Some("5.0.0"), Duration::from_secs(10));
            }
        }
        // And a fresh apply works afterwards (no half-staged leftovers in the way).
        stop(launcher, &b);
        if step == "staged" || step == "marked" {
            assert!(b.apply(&bundle, None).status.success(), "{step}: re-apply");
        }
    }
}

#[test]
fn a_kill_at_every_step_of_the_launcher_leaves_a_working_agent() {
    // Commit steps and the trial's start counter.
    for step in ["attempt-counted", "commit-recorded", "committed"] {
        let b = Box_::new();
        let bundle = b.pack(&b.agent(), "6.0.0", None, "release.key");
        assert!(b.apply(&bundle, None).status.success());
        let mut launcher = b.launch(Some(step));
        let start = Instant::now();
        let status = loop {
            if let Some(s) = launcher.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{step}: launcher never reached the step");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(9), "{step}");
        kill_orphan(&b);
        let launcher = b.launch(None);
        b.wait_healthy(Some("6.0.0"), Duration::from_secs(30));
        b.wait_event("committed", Duration::from_secs(30));
        let start = Instant::now();
        while !b.no_trial() {
            assert!(start.elapsed() < Duration::from_secs(20), "{step}: trial never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
        stop(launcher, &b);
    }
    // Rollback steps.
    for step in ["rollback-marked", "rollback-switched", "rollback-recorded"] {
        let b = Box_::new();
        let crash = b.script("crash", "exit 3");
        let bundle = b.pack(&crash, "7.0.0", None, "release.key");
        assert!(b.apply(&bundle, None).status.success());
        let mut launcher = b.launch(Some(step));
        let start = Instant::now();
        let status = loop {
            if let Some(s) = launcher.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{step}: launcher never reached the step");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(9), "{step}");
        let launcher = b.launch(None);
        b.wait_healthy(Some(env!("CARGO_PKG_VERSION")), Duration::from_secs(30));
        b.wait_event("rolled_back", Duration::from_secs(10));
        assert!(b.no_trial(), "{step}");
        assert_eq!(b.current(), None, "{step}");
        stop(launcher, &b);
    }
}
