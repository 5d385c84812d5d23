//! The local status page with the real agent reading the real Modbus simulator over TCP: the page
//! refuses a wrong or missing password, its JSON shows the points, devices and spool, `/metrics`
//! is valid Prometheus text, and `vigil-edge status` prints the summary. The listener over real
//! sockets: a client trickling its headers is cut off, connections over the limit are closed, and a
//! normal request works afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::http::Method;
use base64::Engine as _;
use vigil_edge::sources::camera::client::{self, Response};
use vigil_tools::sim::{Sim, Unit, points_of, tcp};

const PASSWORD: &str = "correct horse battery";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(url: &str, auth: Option<(&str, &str)>) -> Response {
    let headers: Vec<(&str, String)> = auth
        .map(|(u, p)| {
            ("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
        })
        .into_iter()
        .collect();
    client::send(Method::GET, url, &headers, Vec::new(), Duration::from_secs(10), 1 << 24).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_points_devices_and_spool_behind_a_password() {
    let dir = tempfile::tempdir().unwrap();
    vigil_common::keyfile::create(&dir.path().join("gw.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_port = listener.local_addr().unwrap().port();
    let dead_port = free_port();
    let status_port = free_port();
    let hash = vigil_edge::status::hash_password(PASSWORD).unwrap();
    let config = format!(
        r#"
[gateway]
id = "gw-status"
enterprise = "ent-a"
key_file = "{d}/gw.key"

[spool]
path = "{d}/spool"
batch_max_age_ms = 100

[system]
interval_ms = 200

[status]
listen = "127.0.0.1:{status_port}"
password_hash = "{hash}"
events = 50

[[devices]]
name = "tank-1"
protocol = "tcp"
host = "127.0.0.1"
port = {sim_port}
poll_ms = 100

[[devices.points]]
id = "level"
kind = "holding"
address = 0
unit = "cm"
sim = "const 42"

[[devices]]
name = "pump-dead"
protocol = "tcp"
host = "127.0.0.1"
port = {dead_port}
poll_ms = 200
timeout_ms = 200
backoff_max_ms = 1000

[[devices.points]]
id = "speed"
kind = "input"
address = 3
"#,
        d = dir.path().display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let plant = vigil_edge::config::load(&path).unwrap();

    let sim = Sim::new();
    sim.add_unit(1, Unit::new(points_of(&plant, 0, 7).unwrap()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sim_task = tokio::spawn(tcp::serve(listener, sim, stop.clone()));
    let agent = tokio::spawn(vigil_edge::agent::run_with(
        std::sync::Arc::new(plant),
        stop.clone(),
        vigil_edge::agent::Hardware::default(),
    ));

    let base = format!("http://127.0.0.1:{status_port}");
    let url = format!("{base}/status.json");
    let auth = Some(("technician", PASSWORD));
    // Wait for the page, a good reading, the dead device offline and something in the spool.
    let start = Instant::now();
    let status = loop {
        if let Ok(r) = client::send(
            Method::GET,
            &url,
            &[(
                "authorization",
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("technician:{PASSWORD}"))),
            )],
            Vec::new(),
            Duration::from_secs(5),
            1 << 24,
        )
        .await
            && r.status == 200
        {
            let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let level = s["points"].as_array().unwrap().iter().find(|p| p["id"] == "tank-1.level").cloned();
            let dead = s["devices"].as_array().unwrap().iter().find(|d| d["name"] == "pump-dead").cloned();
            let spooled: u64 = s["spool"].as_array().unwrap().iter().map(|c| c["batches"].as_u64().unwrap()).sum();
            if level.is_some_and(|p| p["good"] == true && p["value"] == 42)
                && dead.is_some_and(|d| d["state"] == "offline")
                && spooled > 0
            {
                break s;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "status never showed the readings");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let devices = status["devices"].as_array().unwrap();
    let tank = devices.iter().find(|d| d["name"] == "tank-1").unwrap();
    assert_eq!(tank["state"], "online");
    assert_eq!(tank["kind"], "modbus");
    let dead = devices.iter().find(|d| d["name"] == "pump-dead").unwrap();
    assert!(dead["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{dead}");
    let speed = status["points"].as_array().unwrap().iter().find(|p| p["id"] == "pump-dead.speed").unwrap();
    assert_eq!(speed["good"], false, "{speed}");
    assert_eq!(status["uplink"], "disabled");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(!status["clock"].as_str().unwrap().is_empty());
    let config = status["config"].as_str().unwrap();
    assert!(
        config.contains("installed file") && config.contains(&format!("{}", dir.path().join("config").display())),
        "{config}"
    );
    assert_eq!(status["spool"].as_array().unwrap().len(), 3);
    let backfill = status["spool"].as_array().unwrap().iter().find(|c| c["class"] == "backfill").unwrap();
    assert!(backfill["batches"].as_u64().unwrap() > 0 && backfill["oldest_unacked_s"].as_f64().is_some(), "{backfill}");
    assert!(
        status["events"].as_array().unwrap().iter().any(|e| e["text"].as_str().unwrap().contains("DeviceOffline")),
        "{}",
        status["events"]
    );

    // Wrong, missing and wrong-user credentials are all 401, with a Basic challenge.
    for a in [None, Some(("technician", "wrong")), Some(("admin", PASSWORD)), Some(("technician", ""))] {
        for p in ["/", "/status.json", "/metrics"] {
            let r = get(&format!("{base}{p}"), a).await;
            assert_eq!(r.status, 401, "{p} with {a:?}");
        }
    }

    // The HTML page shows the same, with no external assets.
    let html = get(&format!("{base}/"), auth).await;
    assert_eq!(html.status, 200);
    let text = String::from_utf8(html.body).unwrap();
    assert!(text.contains("tank-1.level") && text.contains("pump-dead") && text.contains("backfill"));
    assert!(!text.contains("http://") && !text.contains("https://"), "no external assets");

    // /metrics: every line a comment or `name{labels} value`.
    let m = get(&format!("{base}/metrics"), auth).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let base_name = name.split('{').next().unwrap();
        assert!(
            base_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !base_name.is_empty(),
            "bad name {line:?}"
        );
        samples.insert(name.to_owned(), v);
    }
    assert!(samples["vigil_edge_spool_batches{class=\"backfill\"}"] > 0.0);
    assert!(samples["vigil_edge_acquisition_responses_total"] > 0.0);
    assert!(samples["vigil_edge_batcher_batches_total"] > 0.0);
    assert!(samples["vigil_edge_status_auth_failures_total"] >= 12.0);
    assert_eq!(samples["vigil_edge_devices_offline"], 1.0);

    // The terminal summary from the real binary.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["status", "--url", &base])
        .env("VIGIL_STATUS_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        summary.contains("gateway gw-status")
            && summary.contains("tank-1.level")
            && summary.contains("uplink  disabled"),
        "{summary}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["status", "--url", &base])
        .env("VIGIL_STATUS_PASSWORD", "nope")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong user or password"));

    stop_tx.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), agent).await.unwrap();
    let _ = sim_task.await;
}

#[test]
fn a_plaintext_password_or_an_open_listen_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    vigil_common::keyfile::create(&dir.path().join("gw.key")).unwrap();
    let base = format!(
        "[gateway]\nid = \"g\"\nenterprise = \"e\"\nkey_file = \"{d}/gw.key\"\n[spool]\npath = \"{d}/spool\"\n",
        d = dir.path().display()
    );
    let path = dir.path().join("g.toml");
    std::fs::write(&path, format!("{base}[status]\nlisten = \"127.0.0.1:8081\"\npassword = \"secret\"\n")).unwrap();
    let e = vigil_edge::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("password"), "{e}");
    std::fs::write(&path, format!("{base}[status]\nlisten = \"0.0.0.0:8081\"\npassword_hash = \"plain\"\n")).unwrap();
    let e = vigil_edge::config::load(&path).unwrap_err().to_string();
    assert!(e.contains("status.listen") && e.contains("status.password_hash"), "{e}");
}

async fn connect(port: u16) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Reads until the server closes (or `within` passes: then `None`).
async fn read_to_close(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_cuts_slow_headers_and_bounds_connections_and_request_size() {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt as _;
    use vigil_edge::status::{Board, Handles, StatusConfig};

    let dir = tempfile::tempdir().unwrap();
    vigil_common::keyfile::create(&dir.path().join("gw.key")).unwrap();
    let port = free_port();
    let hash = vigil_edge::status::hash_password(PASSWORD).unwrap();
    let text = format!(
        "[gateway]\nid = \"gw-limits\"\nenterprise = \"e\"\nkey_file = \"{d}/gw.key\"\n[spool]\npath = \"{d}/spool\"\n\
         [status]\nlisten = \"127.0.0.1:{port}\"\npassword_hash = \"{hash}\"\nheader_timeout_ms = 800\nmax_connections = 2\n",
        d = dir.path().display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let plant = vigil_edge::config::load(&path).unwrap();
    let config: StatusConfig = plant.config.status.clone().unwrap();
    let handles = Handles {
        spool: Box::new(vigil_edge::spool::SpoolStats::default),
        online: Arc::default(),
        uplink: None,
        batcher: Arc::default(),
        acquisition: Arc::default(),
        config: Box::new(|| "test".into()),
        config_pushes: Box::new(Default::default),
    };
    let board = Arc::new(Board::new(&plant, 10, handles));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(vigil_edge::status::serve(config, board, stop));
    let base = format!("http://127.0.0.1:{port}");
    let auth = Some(("technician", PASSWORD));
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the page never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(900)).await; // the probe connection above timed out

    // Slowloris: a request head one byte every 100 ms would take 5 s; it is cut at the 800 ms timeout.
    let mut slow = connect(port).await;
    let head = format!("GET /status.json HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n", "a".repeat(20));
    let started = Instant::now();
    let mut cut = None;
    for b in head.as_bytes() {
        if slow.write_all(&[*b]).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The server closing shows as a read of 0 bytes (or a reset) while the head is unfinished.
        let mut probe = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut probe)).await
            && n == 0
        {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the slow client was never cut off");
    assert!(cut >= Duration::from_millis(700) && cut < Duration::from_secs(3), "cut after {cut:?}");
    drop(slow);

    // Two connections hold both slots; a third is told 503 and closed at once.
    let held = [connect(port).await, connect(port).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect(port).await;
    let answer = read_to_close(&mut third, Duration::from_millis(500)).await.expect("closed at once, not held");
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&answer));
    drop(held);

    // Once the holders are gone a normal request works.
    let start = Instant::now();
    let ok = loop {
        let r = client::send(
            Method::GET,
            &format!("{base}/status.json"),
            &[(
                "authorization",
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("technician:{PASSWORD}"))),
            )],
            Vec::new(),
            Duration::from_secs(10),
            1 << 24,
        )
        .await;
        if let Ok(r) = r
            && r.status == 200
        {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no normal request after the limit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(s["gateway"], "gw-limits");

    // A head over max_request_bytes (16 KiB default) is refused; so is a body.
    let mut big = connect(port).await;
    let huge = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "b".repeat(40_000));
    let _ = big.write_all(huge.as_bytes()).await;
    let answer = read_to_close(&mut big, Duration::from_secs(3)).await.expect("closed");
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    let r = client::send(
        Method::POST,
        &format!("{base}/status.json"),
        &[("authorization", "Basic eDp5".to_owned())],
        vec![b'z'; 1000],
        Duration::from_secs(5),
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);

    // The counters on /metrics.
    let m = get(&format!("{base}/metrics"), auth).await;
    let text = String::from_utf8(m.body).unwrap();
    let value = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("vigil_edge_status_header_timeouts_total") >= 1.0, "{text}");
    assert!(value("vigil_edge_status_connections_refused_total") >= 1.0, "{text}");
    assert!(value("vigil_edge_status_requests_too_large_total") >= 2.0, "{text}");
    assert!(value("vigil_edge_status_connections_accepted_total") >= 4.0, "{text}");
    assert!(value("vigil_edge_status_connections_active") >= 1.0, "{text}");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap();
}
