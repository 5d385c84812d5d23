#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `vigil-central user` commands and the first-run administrator, against the real binary:
//! a user added with its password on stdin logs in over HTTP, a disabled one does not, and a fresh
//! central creates `admin` with a one-time password (owner-only file) that must be changed first.

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, http_blocking, http_get, login_blocking, unique};

const BIN: &str = env!("CARGO_BIN_EXE_vigil-central");

fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn users_from_the_cli_and_the_first_run_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("central.key");
    assert!(cli(&["keygen", "--out", key.to_str().unwrap()], "").0);
    let api = free_port();
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"{}\"\n\
             [api]\nlisten = \"127.0.0.1:{api}\"\n",
            unique("central-cli")
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    // A fresh data directory and no user: `run` creates admin with a one-time password.
    let log = std::fs::File::create(dir.path().join("central.log")).unwrap();
    let mut child = Command::new(BIN).args(["run", "--config", cfg]).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let start = Instant::now();
    while http_get(api, "/api/v1/health").map(|r| r.0).ok() != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(30), "central did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = dir.path().join("data/initial-admin-password");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let initial = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let stderr = std::fs::read_to_string(dir.path().join("central.log")).unwrap();
    assert!(stderr.contains(&initial), "the password is shown once on stderr");
    let login = |user: &str, pw: &str| {
        let body = serde_json::json!({ "user": user, "password": pw }).to_string();
        http_blocking(api, "POST", "/api/v1/auth/login", None, Some(&body)).unwrap()
    };
    let (status, body) = login("admin", &initial);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"password_expired\":true"), "{body}");
    let change = serde_json::json!({ "user": "admin", "old": initial, "new": "Park-Chief-2026!" }).to_string();
    let (status, body) = http_blocking(api, "POST", "/api/v1/auth/password", None, Some(&change)).unwrap();
    assert_eq!(status, 200, "{body}");
    let admin = login_blocking(api, "admin", "Park-Chief-2026!");
    let (status, _) = http_blocking(api, "GET", "/api/v1/gateways", Some(&admin), None).unwrap();
    assert_eq!(status, 200);

    // Users from the CLI while central runs: password on stdin, or generated.
    let (ok, _, err) = cli(
        &["user", "--config", cfg, "add", "eve", "--role", "enterprise_user", "--enterprise", "ent-a"],
        "Enterprise-Sun-9\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["user", "--config", cfg, "add", "weak", "--role", "operator"], "short\n");
    assert!(!ok && err.contains("at least 12 characters"), "the policy applies to the CLI too: {err}");
    let (ok, _, err) = cli(&["user", "--config", cfg, "add", "x", "--role", "enterprise_user"], "Enterprise-Sun-9\n");
    assert!(!ok && err.contains("needs at least one enterprise"), "{err}");
    let (ok, _, err) = cli(&["user", "--config", cfg, "add", "x", "--role", "king"], "Enterprise-Sun-9\n");
    assert!(!ok && err.contains("unknown role"), "{err}");
    let (ok, generated, err) = cli(&["user", "--config", cfg, "add", "olga", "--role", "operator", "--generate"], "");
    assert!(ok, "{err}");
    let eve = login_blocking(api, "eve", "Enterprise-Sun-9");
    let (status, body) = http_blocking(api, "GET", "/api/v1/auth/me", Some(&eve), None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"enterprises\":[\"ent-a\"]"), "{body}");
    login_blocking(api, "olga", generated.trim());
    let (_, list, _) = cli(&["user", "--config", cfg, "list"], "");
    let names: Vec<String> = list
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin", "eve", "olga"]);

    // Disable: the running central refuses the session (within its 5 s session cache) and the login.
    let (ok, _, err) = cli(&["user", "--config", cfg, "disable", "eve"], "");
    assert!(ok, "{err}");
    let (status, body) = login("eve", "Enterprise-Sun-9");
    assert_eq!(status, 403, "{body}");
    let start = Instant::now();
    while http_blocking(api, "GET", "/api/v1/auth/me", Some(&eve), None).unwrap().0 != 401 {
        assert!(start.elapsed() < Duration::from_secs(30), "the disabled user's session still works");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cli(&["user", "--config", cfg, "enable", "eve"], "").0);
    login_blocking(api, "eve", "Enterprise-Sun-9");
    child.kill().unwrap();
    child.wait().unwrap();
}
