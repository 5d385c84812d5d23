//! Helpers shared by central's integration tests: a minimal gateway that seals, publishes and
//! re-sends until acknowledged, an HTTP GET, and unique names.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use vigil_common::{Ack, BatchBuilder, DropCounters, GatewayId, PointId, Priority, PublicKey, Sample, SigningKey};

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from 127.0.0.1:`port`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    // Chunked transfer encoding: de-chunk.
    if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return Ok((status, out));
    }
    Ok((status, body))
}

/// A mqtt client connected to the test broker, with its event loop driven in the background;
/// every publish it receives goes to the returned channel.
pub async fn mqtt_client(
    id: &str,
    port: u16,
    subscribe: &[String],
) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subs = subscribe.to_vec();
    let c2 = client.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for s in &subs {
                        let _ = c2.subscribe(s.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

/// A minimal gateway: seals batches of one point, keeps each until central acknowledges it, re-sends.
pub struct SimGateway {
    /// Its id.
    pub gateway: GatewayId,
    /// Its enterprise.
    pub enterprise: String,
    /// Its key.
    pub key: SigningKey,
    /// Spool epoch.
    pub epoch: u64,
    /// Next sequence number.
    pub next_seq: u64,
    /// Unacknowledged batches: seq -> (bytes, last sent).
    pub unacked: BTreeMap<u64, (Vec<u8>, Instant)>,
    /// Every timestamp produced.
    pub produced: Vec<i64>,
    /// Point.
    pub point: PointId,
}

impl SimGateway {
    /// A gateway with a fresh key.
    pub fn new(gateway: &str, enterprise: &str, seed: u8) -> SimGateway {
        SimGateway {
            gateway: GatewayId::new(gateway).unwrap(),
            enterprise: enterprise.to_owned(),
            key: SigningKey::from_seed(&[seed; 32]),
            epoch: 1,
            next_seq: 0,
            unacked: BTreeMap::new(),
            produced: Vec::new(),
            point: PointId::new("TK101.LT1").unwrap(),
        }
    }

    /// Topic of a channel.
    pub fn topic(&self, suffix: &str) -> String {
        format!("vigil/v1/{}/{}/{suffix}", self.enterprise, self.gateway)
    }

    /// Seals the next batch of `n` samples starting at `t0 + seq * n` seconds.
    pub fn next_batch(&mut self, n: usize, t0: i64) -> (u64, Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut b = BatchBuilder::new();
        for i in 0..n {
            let ts = t0 + (seq as i64 * n as i64 + i as i64) * 1000;
            b.push(&self.point, Sample::good(ts, (ts % 1_000_000) as f64 / 1000.0));
            self.produced.push(ts);
        }
        let batch = b.build(self.gateway.clone(), self.epoch, seq, Priority::Live, t0, DropCounters::default());
        let bytes = batch.seal(&self.key).unwrap();
        self.unacked.insert(seq, (bytes.clone(), Instant::now()));
        (seq, bytes)
    }

    /// Applies a down/ack message; returns the ack when it verifies.
    pub fn on_ack(&mut self, bytes: &[u8], central: &PublicKey) -> Option<Ack> {
        let ack = Ack::open(bytes, &self.gateway, self.epoch, |_| Some(central.clone())).ok()?;
        for r in &ack.acked {
            let seqs: Vec<u64> = self.unacked.range(r.first..=r.last).map(|(s, _)| *s).collect();
            for s in seqs {
                self.unacked.remove(&s);
            }
        }
        Some(ack)
    }

    /// Batches unacknowledged for longer than `after`, marked as sent now.
    pub fn due(&mut self, after: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (bytes, sent) in self.unacked.values_mut() {
            if sent.elapsed() >= after {
                *sent = Instant::now();
                out.push(bytes.clone());
            }
        }
        out
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection to 127.0.0.1:`port` (async, for tests that run
/// the server in the same runtime); `token` goes into `Authorization: Bearer`.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await.expect("answer within 60 s").unwrap();
    parse_answer(&buf)
}

/// Parses a whole HTTP/1.1 answer as read off the socket (chunked bodies are joined).
pub fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Answer { status, headers, body }
}

/// Logs in through the API; returns the token.
pub async fn login(port: u16, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let a = request(port, "POST", "/api/v1/auth/login", None, &[], Some(&body)).await;
    assert_eq!(a.status, 200, "login of {user}: {}", a.body);
    a.json()["token"].as_str().unwrap().to_owned()
}

/// GET with a bearer token, blocking (for tests that run central as a separate process).
pub fn http_get_auth(port: u16, token: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_blocking(port, "GET", path, Some(token), None)
}

/// Any request, blocking; returns (status, body).
pub fn http_blocking(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        return Ok((status, out));
    }
    Ok((status, body.to_owned()))
}

/// Logs in against a separately running central (blocking); returns the token.
pub fn login_blocking(port: u16, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let (status, body) = http_blocking(port, "POST", "/api/v1/auth/login", None, Some(&body)).unwrap();
    assert_eq!(status, 200, "login of {user}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}
