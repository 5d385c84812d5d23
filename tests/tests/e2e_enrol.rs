//! Gateway enrolment end to end with real processes: `vigil-central pki init` and `run` (embedded
//! broker), an administrator creates a token over the API, `vigil-edge enroll` redeems it (keys made
//! on the gateway, certificate signed by central), and `vigil-edge run` with a configuration built
//! from the written snippet delivers its heartbeat over mutual TLS. The used token is refused.
//! Then configuration pushes through the API: applied, refused with the gateway's exact error while
//! the old file stays, and one made while the gateway is offline goes out when it comes back.
//! Point metadata on the way: the `vigil-edge catalogue` document imported before the gateway
//! connects, then replaced by the catalogue the gateway signs, which follows each applied push.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use vigil_tests::{http_get_auth, http_request, login, run_to_end, spawn, terminate};
use vigil_tools::broker::free_port;

fn catalogue(api_port: u16, token: &str) -> serde_json::Value {
    let (status, body) = http_get_auth(api_port, token, "/api/v1/gateways/gw-en/catalogue").unwrap();
    if status == 404 {
        return serde_json::Value::Null;
    }
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The gateway's own catalogue once it lists `gateway.heartbeat` with `poll_ms` and is current.
fn wait_catalogue(api_port: u16, token: &str, poll_ms: u64, d: &std::path::Path) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let c = catalogue(api_port, token);
        let heartbeat = c["document"]["points"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == "gateway.heartbeat"))
            .map(|p| p["poll_ms"].clone());
        if c["source"] == "gateway" && c["current"] == true && heartbeat == Some(poll_ms.into()) {
            return c;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(d.join("central.log")).unwrap_or_default();
            panic!("the gateway's catalogue with poll_ms {poll_ms} did not arrive: {c}\ncentral:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn point(api_port: u16, token: &str, key: &str) -> serde_json::Value {
    let (status, body) = http_get_auth(api_port, token, "/api/v1/points?gateway=gw-en&limit=1000").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["items"].as_array().unwrap().iter().find(|p| p["key"] == key).cloned().unwrap_or_default()
}

fn heartbeats(api_port: u16, token: &str) -> usize {
    let path = format!("/api/v1/raw?point=gw-en/gateway.heartbeat&from=0&to={}&limit=100000", i64::MAX);
    match http_get_auth(api_port, token, &path) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["samples"].as_array().map_or(0, Vec::len)
        }
        _ => 0,
    }
}

#[test]
fn an_enrolled_gateway_delivers_its_heartbeat_and_takes_configuration_pushes() {
    // `enroll` is new: never run a stale binary.
    vigil_tests::build_binaries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    let central_pub =
        run_to_end("vigil-central", &["keygen", "--out", d.join("central.key").to_str().unwrap()]).unwrap();
    run_to_end("vigil-central", &["pki", "init", "--dir", d.join("pki").to_str().unwrap()]).unwrap();
    let password = run_to_end(
        "vigil-central",
        &["user", "--config", conf.to_str().unwrap(), "add", "admin", "--role", "park_admin", "--generate"],
    )
    .unwrap();
    let mut central =
        spawn("vigil-central", &["run", "--config", conf.to_str().unwrap()], &d.join("central.log")).unwrap();
    let admin = login(api_port, "admin", password.trim()).unwrap();

    let body = r#"{"gateway": "gw-en", "enterprise": "ent-a", "ttl_s": 600}"#;
    let (status, answer) = http_request(api_port, "POST", "/api/v1/enrolments", Some(&admin), Some(body)).unwrap();
    assert_eq!(status, 201, "{answer}");
    let token = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["token"].as_str().unwrap().to_owned();

    let central_url = format!("http://127.0.0.1:{api_port}");
    let gw_dir = d.join("gw");
    let enroll = |dir: &std::path::Path| {
        run_to_end(
            "vigil-edge",
            &["enroll", "--central", &central_url, "--token", &token, "--id", "gw-en", "--dir", dir.to_str().unwrap()],
        )
    };
    let snippet_path = enroll(&gw_dir).unwrap();
    let snippet_path = std::path::Path::new(snippet_path.trim());
    assert_eq!(snippet_path, gw_dir.canonicalize().unwrap().join("gateway-enrolled.toml"));
    for (key, mode) in [("gateway.key", 0o600), ("gateway-tls.key", 0o600), ("gateway.pem", 0o644), ("ca.pem", 0o644)] {
        let m = std::fs::metadata(gw_dir.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{key}");
    }
    let snippet = std::fs::read_to_string(snippet_path).unwrap();
    let parsed: toml::Table = toml::from_str(&snippet).unwrap();
    assert_eq!(parsed["gateway"]["enterprise"].as_str(), Some("ent-a"));
    assert_eq!(parsed["uplink"]["port"].as_integer(), Some(i64::from(broker_port)));
    assert_eq!(parsed["uplink"]["central_keys"][0].as_str(), Some(central_pub.trim()));
    // The token worked once: a second enrolment is refused with a clear error and leaves no keys.
    let again = enroll(&d.join("gw2")).unwrap_err().to_string();
    assert!(again.contains("refused the enrolment token") && again.contains("used"), "{again}");
    assert!(!d.join("gw2/gateway.key").exists() && !d.join("gw2/gateway-tls.key").exists());

    let gw_conf = d.join("gateway.toml");
    std::fs::write(
        &gw_conf,
        format!(
            "{snippet}\n[spool]\npath = \"{}\"\nbatch_max_age_ms = 100\n\n[system]\ninterval_ms = 20\n\n\
             [[devices]]\nname = \"tanks\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\n\
             point_prefix = \"TK101.\"\npoints = [{{ id = \"LT\", kind = \"holding\", address = 0, type = \"f32\", \
             unit = \"m\", range = [0.0, 20.0] }}]\n",
            d.join("spool").display(),
            free_port().unwrap()
        ),
    )
    .unwrap();

    // Before the gateway connects: the technician's offline catalogue, imported.
    assert!(catalogue(api_port, &admin).is_null());
    let doc = run_to_end("vigil-edge", &["catalogue", "--config", gw_conf.to_str().unwrap()]).unwrap();
    let (status, body) =
        http_request(api_port, "PUT", "/api/v1/gateways/gw-en/catalogue", Some(&admin), Some(&doc)).unwrap();
    assert_eq!(status, 201, "{body}");
    let imported: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((imported["source"].as_str(), imported["imported_by"].as_str()), (Some("import"), Some("admin")));
    let lt = point(api_port, &admin, "gw-en/TK101.LT");
    assert_eq!((lt["unit"].as_str(), lt["device"].as_str()), (Some("m"), Some("tanks")), "{lt}");
    assert_eq!(
        (lt["range"].clone(), lt["configured"].clone(), lt["stored"].clone()),
        (serde_json::json!([0.0, 20.0]), true.into(), false.into()),
        "{lt}"
    );
    // A document of another gateway is refused, naming both.
    let other = doc.replace("\"gw-en\"", "\"gw-other\"");
    let (status, body) =
        http_request(api_port, "PUT", "/api/v1/gateways/gw-en/catalogue", Some(&admin), Some(&other)).unwrap();
    assert!(status == 400 && body.contains("gw-other"), "{status} {body}");
    let mut edge = spawn("vigil-edge", &["run", "--config", gw_conf.to_str().unwrap()], &d.join("edge.log")).unwrap();
    let start = Instant::now();
    while heartbeats(api_port, &admin) < 10 {
        if start.elapsed() > Duration::from_secs(60) {
            let log = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
            panic!(
                "no heartbeats from the enrolled gateway\nedge:\n{}\ncentral:\n{}",
                log("edge.log"),
                log("central.log")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!std::fs::read_to_string(d.join("central.log")).unwrap().contains(&token), "the token reached the log");

    // The gateway's signed catalogue replaces the import, and an import no longer replaces it.
    let own = wait_catalogue(api_port, &admin, 20, d);
    assert!(own["imported_by"].is_null(), "{own}");
    let (status, body) =
        http_request(api_port, "PUT", "/api/v1/gateways/gw-en/catalogue", Some(&admin), Some(&doc)).unwrap();
    assert_eq!(status, 409, "{body}");
    let hb = point(api_port, &admin, "gw-en/gateway.heartbeat");
    assert_eq!(
        (hb["configured"].clone(), hb["stored"].clone(), hb["device"].clone()),
        (true.into(), true.into(), "gateway".into()),
        "{hb}"
    );
    let (_, devices) = http_get_auth(api_port, &admin, "/api/v1/devices?gateway=gw-en").unwrap();
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    let tanks = devices["items"].as_array().unwrap().iter().find(|d| d["name"] == "tanks").cloned().unwrap_or_default();
    assert_eq!(
        (tanks["protocol"].as_str(), tanks["points"].as_u64(), tanks["source"].as_str()),
        (Some("modbus_tcp"), Some(1), Some("gateway")),
        "{devices}"
    );

    // Configuration pushes through the API.
    let installed = std::fs::read_to_string(&gw_conf).unwrap();
    let v1 = installed.replace("interval_ms = 20", "interval_ms = 25");
    assert_eq!(push(api_port, &admin, &v1), 1);
    let (status, _) = wait_push(api_port, &admin, 1, d);
    assert_eq!(status, "applied");
    // The catalogue follows the configuration the gateway now runs.
    wait_catalogue(api_port, &admin, 25, d);
    // Pushed files live in the state directory beside the spool; the installed file is left alone.
    let pushed = d.join("config/gateway.toml");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "the pushed file runs on the gateway");
    assert_eq!(std::fs::read_to_string(&gw_conf).unwrap(), installed, "the installed file is not touched");
    let (_, gateway) = http_get_auth(api_port, &admin, "/api/v1/gateways/gw-en").unwrap();
    let gateway: serde_json::Value = serde_json::from_str(&gateway).unwrap();
    assert_eq!(gateway["config_version"], 1, "{gateway}");

    let invalid = v1.replace("batch_max_age_ms = 100", "batch_max_age_ms = 5");
    assert_eq!(push(api_port, &admin, &invalid), 2);
    let (status, detail) = wait_push(api_port, &admin, 2, d);
    assert_eq!(status, "rejected");
    assert!(detail.contains("spool.batch_max_age_ms") && detail.contains("outside 10..=3600000"), "{detail}");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v1, "the old file stays");

    // Pushed while the gateway is down: sent again when its birth shows it has not handled it.
    terminate(&mut edge).unwrap();
    let v3 = v1.replace("interval_ms = 25", "interval_ms = 30");
    assert_eq!(push(api_port, &admin, &v3), 3);
    let mut edge = spawn("vigil-edge", &["run", "--config", gw_conf.to_str().unwrap()], &d.join("edge2.log")).unwrap();
    let (status, _) = wait_push(api_port, &admin, 3, d);
    assert_eq!(status, "applied");
    assert_eq!(std::fs::read_to_string(&pushed).unwrap(), v3);
    terminate(&mut edge).unwrap();
    terminate(&mut central).unwrap();
}

/// Pushes `toml` to gw-en; returns the version central gave it.
fn push(api_port: u16, token: &str, toml: &str) -> i64 {
    let body = serde_json::json!({ "toml": toml }).to_string();
    let (status, answer) =
        http_request(api_port, "POST", "/api/v1/gateways/gw-en/config", Some(token), Some(&body)).unwrap();
    assert_eq!(status, 202, "{answer}");
    serde_json::from_str::<serde_json::Value>(&answer).unwrap()["version"].as_i64().unwrap()
}

/// Waits for push `version` to reach a final status; returns it and its detail.
fn wait_push(api_port: u16, token: &str, version: i64, d: &std::path::Path) -> (String, String) {
    let start = Instant::now();
    loop {
        let (_, body) = http_get_auth(api_port, token, &format!("/api/v1/gateways/gw-en/config/{version}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let status = v["status"].as_str().unwrap_or("").to_owned();
        if ["applied", "rejected", "rolled_back"].contains(&status.as_str()) {
            return (status, v["detail"].as_str().unwrap_or("").to_owned());
        }
        if start.elapsed() > Duration::from_secs(90) {
            let log = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
            panic!("push {version} stuck at {v}\nedge:\n{}\ncentral:\n{}", log("edge.log"), log("central.log"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Someone between the gateway and central answers in central's place (or alters its answer):
/// without central's MAC by the token, the gateway stores nothing and says why.
#[test]
fn an_answer_not_authenticated_by_the_token_is_refused_and_nothing_is_stored() {
    vigil_tests::build_binaries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let impostor = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head and the declared body, then answer a plausible enrolment with a bad MAC.
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if req.len() >= end + 4 + len {
                    break;
                }
            }
            assert!(n > 0, "client closed early");
        }
        let body = serde_json::json!({
            "gateway": "gw-mitm", "enterprise": "ent-a", "cert_pem": "x", "ca_pem": "x",
            "central_public_key": "ed25519:00", "broker": { "host": "evil", "port": 1 },
        })
        .to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvigil-enrolment-mac: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            "ab".repeat(32),
            body.len()
        );
        s.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&req).to_string()
    });
    let gw_dir = dir.path().join("gw");
    let token = "vigil-enrol-0123456789abcdef0123456789abcdef";
    let central = format!("http://127.0.0.1:{port}");
    let err = run_to_end(
        "vigil-edge",
        &["enroll", "--central", &central, "--token", token, "--id", "gw-mitm", "--dir", gw_dir.to_str().unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not authenticated by the enrolment token") && err.contains("wrong MAC"), "{err}");
    let request = impostor.join().unwrap();
    assert!(!request.contains(token), "the token itself was sent: {request}");
    let left: Vec<_> =
        std::fs::read_dir(&gw_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}
