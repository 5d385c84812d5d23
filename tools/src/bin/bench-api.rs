//! Measures central's HTTP API under the customer's concurrency figure: N concurrent clients (300 by
//! default), each with its own session over a keep-alive connection, mixing latest values of 10
//! points (40 %), the alarm list (40 %) and a one-day 5-minute aggregate of a point holding a day
//! of 1 s data (20 %). Server and clients share this process and machine (2 cores here), so the
//! figures include the clients' own CPU. Every call also goes through the API-call log.
//! Run with `cargo run --release -p vigil-tools --bin bench-api [-- --clients 300 --seconds 20]`
//! (`--think-ms 1000`: clients that pause between requests, as people at screens do; `--unaligned`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use vigil_central::alarms::{AlarmConfig, AlarmEngine};
use vigil_central::api::ApiState;
use vigil_central::config::ApiConfig;
use vigil_central::historian::{FileChunkStore, Historian};
use vigil_central::identity::{AuthConfig, NewUser, Role};
use vigil_common::{EnterpriseId, GatewayId, PointId, Sample, SigningKey};

const DAY_START_MS: i64 = 1_795_000_000_000;
const DAY_MS: i64 = 86_400_000;
const PASSWORD: &str = "Bench-Mark-2026!";

#[derive(Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Gateways (20 points each, latest values only).
    #[arg(long, default_value_t = 20)]
    gateways: usize,
    /// Points holding a full day of 1 s data (the aggregate targets).
    #[arg(long, default_value_t = 5)]
    day_points: usize,
    /// Open alarms in the engine.
    #[arg(long, default_value_t = 200)]
    alarms: usize,
    /// Ask the one-day aggregate from the day's first sample instead of from a 5-minute boundary
    /// (as the trend view asks since its buckets are aligned): no roll-up fits, every sample is decoded.
    #[arg(long)]
    unaligned: bool,
    /// Think time between a client's requests, ms (uniform in 0.5x..1.5x; 0: closed loop, saturation).
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
}

/// A keep-alive HTTP/1.1 connection (responses must carry Content-Length, as axum's JSON ones do).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(64 * 1024) })
    }

    async fn call(&mut self, method: &str, path: &str, token: Option<&str>, body: &str) -> Result<(u16, Vec<u8>)> {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head.split_whitespace().nth(1).context("no status")?.parse()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .context("no content-length")?
                    .trim()
                    .parse()?;
                while self.buf.len() < end + 4 + len {
                    self.read_more().await?;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let ix = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[ix]
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let setup = Instant::now();
    let mut h = Historian::open(Box::new(FileChunkStore::open(&dir.path().join("chunks"))?), 0, 50_000_000)?;
    let gateways: Vec<String> = (0..args.gateways).map(|g| format!("gw-{g:02}")).collect();
    let mut points = Vec::new();
    for g in &gateways {
        let gw = GatewayId::new(g.clone())?;
        for p in 0..20 {
            let pid = PointId::new(format!("p{p:02}"))?;
            h.insert(&gw, &pid, &[Sample::good(DAY_START_MS + DAY_MS - 1000, p as f64)])?;
            points.push(format!("{g}/p{p:02}"));
        }
    }
    let day_gw = GatewayId::new("gw-day")?;
    for d in 0..args.day_points {
        let pid = PointId::new(format!("day{d}"))?;
        for block in (0..DAY_MS).step_by(3_600_000) {
            let samples: Vec<Sample> = (0..3600)
                .map(|i| {
                    let ts = DAY_START_MS + block + i * 1000;
                    Sample::good(ts, ((ts / 1000) % 1000) as f64 / 10.0)
                })
                .collect();
            h.insert(&day_gw, &pid, &samples)?;
        }
    }
    let mut defs = String::new();
    for p in points.iter().take(args.alarms) {
        let gw = p.split('/').next().unwrap_or_default();
        defs.push_str(&format!("[[point]]\nid = \"{p}\"\ngateway = \"{gw}\"\nenterprise = \"ent\"\nhh = 90.0\n"));
    }
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("alarms.db")).create_if_missing(true),
        )
        .await?;
    let mut engine = AlarmEngine::open_sqlite(pool, AlarmConfig::from_toml("bench", &defs)?).await?;
    for p in points.iter().take(args.alarms) {
        let (g, _) = p.split_once('/').context("key")?;
        let at = engine.resolve_key(p).context("defined point")?;
        engine.on_sample_at(&GatewayId::new(g)?, at, &Sample::good(DAY_START_MS, 95.0), DAY_START_MS).await?;
    }
    let open_alarms = engine.open_alarms().len();
    let state = ApiState::open(
        dir.path(),
        ApiConfig::default(),
        AuthConfig::default(),
        Arc::new(RwLock::new(h)),
        Arc::default(),
        Some(Arc::new(tokio::sync::Mutex::new(engine))),
    )
    .await?;
    for (i, g) in gateways.iter().chain(std::iter::once(&"gw-day".to_owned())).enumerate() {
        let key = SigningKey::from_seed(&[(i % 250) as u8 + 1; 32]).public_key();
        state.registry.add(&GatewayId::new(g.clone())?, &EnterpriseId::new("ent")?, &key, 1).await?;
    }
    let new = NewUser {
        name: "operator".into(),
        role: Role::Operator,
        enterprises: None,
        password: PASSWORD.into(),
        must_change: false,
    };
    state.identity.add_user(new, "bench", "bench", DAY_START_MS).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let calls = state.calls.clone();
    tokio::spawn(vigil_central::api::serve(listener, state));
    println!(
        "setup {:.1} s: {} points with a latest value, {} with a day of 1 s data, {open_alarms} open alarms",
        setup.elapsed().as_secs_f64(),
        points.len(),
        args.day_points
    );

    // One session and one keep-alive connection per client.
    let login = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..args.clients {
        let mut c = Conn::open(port).await?;
        let body = format!("{{\"user\":\"operator\",\"password\":\"{PASSWORD}\"}}");
        let (status, answer) = c.call("POST", "/api/v1/auth/login", None, &body).await?;
        if status != 200 {
            bail!("login: {status} {}", String::from_utf8_lossy(&answer));
        }
        let v: serde_json::Value = serde_json::from_slice(&answer)?;
        let token = v["token"].as_str().context("token")?.to_owned();
        conns.push((c, token));
    }
    println!("{} logins (Argon2id each, sequential) in {:.1} s", args.clients, login.elapsed().as_secs_f64());

    let points = Arc::new(points);
    let agg_from = if args.unaligned { DAY_START_MS } else { DAY_START_MS - DAY_START_MS.rem_euclid(300_000) };
    let think_ms = args.think_ms;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (i, (mut conn, token)) in conns.into_iter().enumerate() {
        let points = points.clone();
        let day_points = args.day_points;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let mut lat: [Vec<f64>; 3] = Default::default();
            let mut errors = 0u64;
            while Instant::now() < until {
                let r = rng.next() % 10;
                let (kind, path) = if r < 4 {
                    let start = (rng.next() as usize) % (points.len() - 10);
                    (0, format!("/api/v1/latest?points={}", points[start..start + 10].join(",")))
                } else if r < 8 {
                    (1, "/api/v1/alarms".to_owned())
                } else {
                    let d = rng.next() as usize % day_points;
                    (
                        2,
                        format!(
                            "/api/v1/aggregate?point=gw-day/day{d}&from={agg_from}&to={}&bucket_ms=300000",
                            agg_from + DAY_MS
                        ),
                    )
                };
                let t = Instant::now();
                match conn.call("GET", &path, Some(&token), "").await {
                    Ok((200, _)) => lat[kind].push(t.elapsed().as_secs_f64() * 1000.0),
                    Ok(_) | Err(_) => errors += 1,
                }
                if think_ms > 0 {
                    let pause = think_ms / 2 + rng.next() % think_ms.max(1);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            (lat, errors)
        }));
    }
    let mut all: [Vec<f64>; 3] = Default::default();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        errors += e;
        for k in 0..3 {
            all[k].extend(&lat[k]);
        }
    }
    calls.flush().await;
    let mut total: Vec<f64> = all.iter().flatten().copied().collect();
    total.sort_by(f64::total_cmp);
    println!(
        "{} clients ({}), {} s: {} requests ({:.0}/s), {errors} errors",
        args.clients,
        match (think_ms, args.unaligned) {
            (0, false) => "closed loop, aligned aggregate".to_owned(),
            (0, true) => "closed loop, unaligned aggregate".to_owned(),
            (t, a) => format!("think {t} ms, {} aggregate", if a { "unaligned" } else { "aligned" }),
        },
        args.seconds,
        total.len(),
        total.len() as f64 / args.seconds as f64
    );
    for (k, name) in ["latest (10 points)", "alarm list", "one-day aggregate"].iter().enumerate() {
        let mut v = all[k].clone();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{name:>20}: n={:>7} p50={:>7.1} ms p99={:>7.1} ms mean={:>7.1} ms",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            mean
        );
    }
    let mean = total.iter().sum::<f64>() / total.len().max(1) as f64;
    println!(
        "{:>20}: n={:>7} p50={:>7.1} ms p99={:>7.1} ms mean={:>7.1} ms",
        "all",
        total.len(),
        percentile(&total, 0.5),
        percentile(&total, 0.99),
        mean
    );
    Ok(())
}
