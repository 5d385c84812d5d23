//! Updates ordered by central, end to end with real processes: `vigil-central run` (embedded
//! broker, API) and `vigil-edge launch` (the launcher the service runs, with an agent root in a temp
//! dir). A park administrator uploads a bundle made by `vigil-edge update pack` and orders the
//! gateway to install it; the gateway downloads it with the order's token, installs it on trial,
//! the launcher commits it, and central's API shows it committed. Then the refusals: a bundle whose
//! bytes are not the ones ordered (SHA-256), a bad release signature, a wrong target and an expired
//! download token each fail with the gateway's reason in the API, the running version untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::{binary, http_get_auth, http_request, login, run_to_end, spawn, terminate};
use vigil_tools::broker::free_port;

struct Park {
    dir: tempfile::TempDir,
    api_port: u16,
    admin: String,
}

impl Park {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!("launcher/agent:\n{}\ncentral:\n{}", self.log("edge.log"), self.log("central.log"))
    }

    /// `vigil-edge launch` on the gateway configuration, with extra environment.
    fn launch(&self, env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("edge.log")).unwrap();
        let mut c = Command::new(binary("vigil-edge").unwrap());
        c.args(["launch", "--config", self.path("gateway.toml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    /// A bundle of the test's "new agent" (a script that execs the real binary: the debug binary is
    /// above the bundle limit) as `version`, signed with the gateway's trusted release key.
    fn pack(&self, version: &str, target: Option<&str>) -> Vec<u8> {
        let script = self.path("new-agent");
        if !script.exists() {
            let exe = binary("vigil-edge").unwrap();
            std::fs::write(&script, format!("#!/bin/sh\nexec {} \"$@\"\n", exe.display())).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = self.path(&format!("{version}.bundle"));
        let (script, key, out_s) =
            (script.display().to_string(), self.path("release.key").display().to_string(), out.display().to_string());
        let mut args =
            vec!["update", "pack", "--binary", &script, "--version", version, "--key", &key, "--out", &out_s];
        if let Some(t) = target {
            args.extend(["--target", t]);
        }
        run_to_end("vigil-edge", &args).unwrap();
        std::fs::read(out).unwrap()
    }

    /// Uploads `bundle`; returns its SHA-256 as central names it.
    fn upload(&self, bundle: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.api_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /api/v1/updates HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.admin,
            bundle.len()
        )
        .unwrap();
        s.write_all(bundle).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str::<serde_json::Value>(body).unwrap()["sha256"].as_str().unwrap().to_owned()
    }

    /// Orders gw-up to install `sha`; returns the order id.
    fn order(&self, sha: &str, ttl_s: Option<u64>) -> i64 {
        let mut body = serde_json::json!({ "bundle": sha });
        if let Some(t) = ttl_s {
            body["token_ttl_s"] = t.into();
        }
        let (status, answer) = http_request(
            self.api_port,
            "POST",
            "/api/v1/gateways/gw-up/update",
            Some(&self.admin),
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(status, 202, "{answer}");
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"].as_i64().unwrap()
    }

    fn updates(&self) -> serde_json::Value {
        let (status, body) = http_get_auth(self.api_port, &self.admin, "/api/v1/gateways/gw-up/update").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until order `id` reaches a final status; returns it with its detail and the whole view.
    fn wait_order(&self, id: i64) -> (String, String, serde_json::Value) {
        let start = Instant::now();
        loop {
            let v = self.updates();
            let o = v["items"].as_array().unwrap().iter().find(|o| o["id"] == id).cloned().unwrap();
            let status = o["status"].as_str().unwrap().to_owned();
            if ["committed", "rolled_back", "failed"].contains(&status.as_str()) {
                return (status, o["detail"].as_str().unwrap_or("").to_owned(), v);
            }
            assert!(start.elapsed() < Duration::from_secs(120), "order {id} stuck at {o}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait(&self, what: &str, mut ok: impl FnMut(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while !ok(&self.updates()) {
            assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.path("agent/current")).ok().map(|p| p.display().to_string())
    }
}

fn setup() -> (Park, Child) {
    vigil_tests::build_binaries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (broker_port, api_port) = (free_port().unwrap(), free_port().unwrap());
    let conf = d.join("central.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\n\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\n\n\
             [ingest]\nregistry_reload_s = 1\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"
        ),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let central_pub = run_to_end("vigil-central", &["keygen", "--out", &s(&d.join("central.key"))]).unwrap();
    let pki = d.join("pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", &s(&pki)]).unwrap();
    let gw_files = run_to_end("vigil-central", &["pki", "issue-gateway", "gw-up", "--dir", &s(&pki)]).unwrap();
    let gw_files = PathBuf::from(gw_files.trim());
    let gw_pub = run_to_end("vigil-edge", &["keygen", "--out", &s(&d.join("gw.key"))]).unwrap();
    run_to_end(
        "vigil-central",
        &["gateway", "--config", &s(&conf), "add", "gw-up", "--enterprise", "ent-a", "--key", gw_pub.trim()],
    )
    .unwrap();
    let release_pub = run_to_end("vigil-edge", &["update", "keygen", "--out", &s(&d.join("release.key"))]).unwrap();
    std::fs::write(d.join("release-keys"), release_pub).unwrap();
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "[gateway]\nid = \"gw-up\"\nenterprise = \"ent-a\"\nkey_file = \"{d}/gw.key\"\n\n\
             [spool]\npath = \"{d}/spool\"\nbatch_max_age_ms = 100\n\n[system]\ninterval_ms = 200\n\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {broker_port}\ncentral_keys = [\"{central}\"]\nkeepalive_s = 5\n\n\
             [uplink.tls]\nca_file = \"{gw}/ca.pem\"\ncert_file = \"{gw}/gw-up.pem\"\nkey_file = \"{gw}/gw-up.key\"\n\n\
             [update]\nroot = \"{d}/agent\"\nrelease_keys_file = \"{d}/release-keys\"\ntrial_window_s = 30\n\
             healthy_for_s = 2\nmax_attempts = 2\ncentral_url = \"http://127.0.0.1:{api_port}\"\ndownload_timeout_s = 30\n",
            d = d.display(),
            gw = gw_files.display(),
            central = central_pub.trim(),
        ),
    )
    .unwrap();
    let password = run_to_end(
        "vigil-central",
        &["user", "--config", &s(&conf), "add", "admin", "--role", "park_admin", "--generate"],
    )
    .unwrap();
    let central = spawn("vigil-central", &["run", "--config", &s(&conf)], &d.join("central.log")).unwrap();
    let admin = login(api_port, "admin", password.trim()).unwrap();
    (Park { dir, api_port, admin }, central)
}

#[test]
fn central_orders_an_update_that_is_installed_committed_and_bad_bundles_are_refused() {
    let (park, mut central) = setup();
    let mut launcher = park.launch(&[]);
    park.wait("the gateway's first state", |v| v["agent_version"].is_string());

    // The update: downloaded, installed on trial, committed by the launcher, seen by central.
    let good = park.pack("2.0.0", None);
    let sha = park.upload(&good);
    let id = park.order(&sha, None);
    let (status, detail, v) = park.wait_order(id);
    assert_eq!(status, "committed", "{detail}: {v}\n{}", park.logs());
    park.wait("the committed version reported as installed", |v| v["installed"] == "2.0.0" && v["on_trial"].is_null());
    let running = park.current().unwrap();
    assert!(running.starts_with(&format!("versions/2.0.0-{}", &sha[..8])), "{running}");
    let v = park.updates();
    let order = v["items"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap();
    assert!(order["downloads"].as_i64().unwrap() >= 1, "{order}");
    let events: Vec<&str> = v["history"].as_array().unwrap().iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert!(events.ends_with(&["installed", "committed"]), "{v}");
    assert!(!park.log("central.log").contains("x-vigil-download-token:"), "a token reached the log");

    // Refusals, each with the gateway's reason in the API; the running version stays.
    let refused = |id: i64, expect: &str| {
        let (status, detail, v) = park.wait_order(id);
        assert_eq!(status, "failed", "{expect}: {detail}: {v}\n{}", park.logs());
        assert!(detail.contains(expect), "expected {expect:?} in {detail:?}");
        assert_eq!(park.current().as_deref(), Some(running.as_str()), "{expect}: the running version changed");
        assert_eq!(v["installed"], "2.0.0");
        detail
    };

    // The stored bundle's bytes changed on central (disk damage, tampering): not the ordered bundle.
    let b = park.pack("2.1.0", None);
    let sha = park.upload(&b);
    let stored = park.path("data/updates").join(&sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    let in_binary = bytes.len() - 70;
    bytes[in_binary] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    let detail = refused(park.order(&sha, None), "SHA-256");
    assert!(detail.contains("central's order names"), "{detail}");

    // Altered after signing (central takes it: it checks the header and length, not the signature).
    let mut b = park.pack("2.2.0", None);
    let in_binary = b.len() - 70;
    b[in_binary] ^= 0x01;
    let sha = park.upload(&b);
    refused(park.order(&sha, None), "bad signature");

    // Built for another box: refused from the order, before any download.
    let b = park.pack("2.3.0", Some("aarch64-unknown-linux-gnu"));
    let sha = park.upload(&b);
    let id = park.order(&sha, None);
    refused(
        id,
        &format!(
            "bundle is for target aarch64-unknown-linux-gnu, but this gateway runs {}",
            vigil_edge::update::RUNNING_TARGET
        ),
    );
    let order = park.updates()["items"].as_array().unwrap().iter().find(|o| o["id"] == id).cloned().unwrap();
    assert_eq!(order["downloads"], 0, "{order}");

    // The download token expired before the gateway used it (its download is held back 2.5 s).
    terminate(&mut launcher).unwrap();
    let mut launcher = park.launch(&[("VIGIL_UPDATE_DOWNLOAD_DELAY_MS", "2500")]);
    let b = park.pack("2.4.0", None);
    let sha = park.upload(&b);
    let start = Instant::now();
    loop {
        let (_, gw) = http_get_auth(park.api_port, &park.admin, "/api/v1/gateways/gw-up").unwrap();
        if serde_json::from_str::<serde_json::Value>(&gw).unwrap()["online"] == true {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the gateway did not come back\n{}", park.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
    refused(park.order(&sha, Some(1)), "expired");

    terminate(&mut launcher).unwrap();
    terminate(&mut central).unwrap();
}
