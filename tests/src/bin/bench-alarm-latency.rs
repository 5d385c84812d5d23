//! `bench-alarm-latency`: end-to-end alarm latency through real processes. A `vigil-sim` tank gauge
//! (Modbus TCP) whose level follows a sine through HH, H, L and LL; a `vigil-edge` polling it and
//! sending signed batches over mutual TLS; `vigil-central` with its embedded broker, ingest, alarm
//! engine and API; this program on `GET /api/v1/alarms/stream` (SSE, bearer token). For every
//! announced activation it takes the time the event arrived minus the crossing sample's source time
//! (`AlarmChange::ts_ms`, the alarm's `last_active_ms`), and minus the moment the simulated value
//! actually crossed the limit (from the sample's value on the known sine). Each alarm is
//! acknowledged, so it returns to normal at its clear and the next crossing is a new instance.
//!
//! `cargo build --release -p vigil-tests -p vigil-central -p vigil-edge -p vigil-tools`, then
//! `target/release/bench-alarm-latency [--crossings 100] [--poll-ms 1000] [--batch-age-ms 1000]`.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vigil_tests::{http_request, login, run_to_end, spawn, terminate};

/// The benchmark's options.
#[derive(Parser)]
#[command(about = "End-to-end alarm latency: simulator crossing -> edge -> broker -> central -> SSE")]
struct Cli {
    /// Announced activations to measure (after the warm-up crossing of each limit).
    #[arg(long, default_value_t = 100)]
    crossings: usize,
    /// The gateway's poll interval of the level (ms).
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// The gateway's `spool.batch_max_age_ms` (its default and the example configuration's: 1000).
    #[arg(long, default_value_t = 1000)]
    batch_age_ms: u64,
    /// List the level in the gateway's `spool.urgent_points`, so its samples are sealed and sent as
    /// soon as they are read instead of waiting for the batch age.
    #[arg(long)]
    urgent: bool,
    /// Period of the simulated level's sine (s); it crosses four limits per period.
    #[arg(long, default_value_t = 10.0)]
    period_s: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Keep the run directory (configurations, logs, data) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

const GATEWAY: &str = "gw-1";
/// The point as central names it: `{gateway}/{point_prefix}{point id}`.
const POINT: &str = "gw-1/TK1.LT";
/// The level's sine: `MID + AMP * sin(2 pi t / period)`, in %.
const MID: f64 = 50.0;
const AMP: f64 = 50.0;
/// Limits (%): well inside the sine's swing, so a sample one poll after a crossing is still on the
/// same monotone flank (the crossing time is recoverable from its value).
const LIMITS: [Limit; 4] = [
    Limit { condition: "HiHi", key: "hh", value: 80.0, rising: true },
    Limit { condition: "Hi", key: "h", value: 65.0, rising: true },
    Limit { condition: "Lo", key: "l", value: 35.0, rising: false },
    Limit { condition: "LoLo", key: "ll", value: 20.0, rising: false },
];
/// The operator the benchmark logs in as.
const USER: &str = "bench";

/// One alarm limit of the level.
struct Limit {
    /// The engine's condition name (as in the SSE payload).
    condition: &'static str,
    /// Its key in the alarm definitions.
    key: &'static str,
    /// The limit (%).
    value: f64,
    /// Crossed on the rising flank (high limits) or the falling one (low limits).
    rising: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?.local_addr()?.port())
}

/// The park's files and ports.
struct Setup {
    central_config: PathBuf,
    gateway_config: PathBuf,
    api_port: u16,
    password: String,
}

/// Writes keys, PKI, central, gateway and alarm configurations into `dir`, registers the gateway
/// and creates the operator the benchmark logs in as.
fn setup(dir: &Path, cli: &Cli) -> Result<Setup> {
    let (broker_port, api_port, modbus_port) = (free_port()?, free_port()?, free_port()?);
    let central_pub = run_to_end("vigil-central", &["keygen", "--out", path_str(&dir.join("central.key"))?])?;
    let pki = dir.join("pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", path_str(&pki)?])?;
    let tls = run_to_end("vigil-central", &["pki", "issue-gateway", GATEWAY, "--dir", path_str(&pki)?])?;
    let tls = PathBuf::from(tls.trim());
    let gw_pub = run_to_end("vigil-edge", &["keygen", "--out", path_str(&dir.join("gw.key"))?])?;
    let mut alarms = format!(
        "[[point]]\nid = \"{POINT}\"\ngateway = \"{GATEWAY}\"\nenterprise = \"ent-a\"\ngrade = \"A\"\ndeadband = 1.0\n"
    );
    for l in &LIMITS {
        alarms.push_str(&format!("{} = {}\n", l.key, l.value));
    }
    write(&dir.join("alarms.toml"), &alarms)?;
    let central_config = dir.join("central.toml");
    write(
        &central_config,
        &format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\nalarms = \"alarms.toml\"\n\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\n\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n"
        ),
    )?;
    let conf = path_str(&central_config)?;
    run_to_end(
        "vigil-central",
        &["gateway", "--config", conf, "add", GATEWAY, "--enterprise", "ent-a", "--key", gw_pub.trim()],
    )?;
    let password =
        run_to_end("vigil-central", &["user", "--config", conf, "add", USER, "--role", "operator", "--generate"])?
            .trim()
            .to_owned();
    let gateway_config = dir.join("gateway.toml");
    write(
        &gateway_config,
        &format!(
            r#"[gateway]
id = "{GATEWAY}"
enterprise = "ent-a"
key_file = "{key}"

[spool]
path = "{spool}"
batch_max_age_ms = {age}
urgent_points = [{urgent}]

[system]
interval_ms = 1000

[uplink]
host = "127.0.0.1"
port = {broker_port}
central_keys = ["{central}"]
keepalive_s = 5

[uplink.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tls_key}"

[[devices]]
name = "tk1"
protocol = "tcp"
host = "127.0.0.1"
port = {modbus_port}
unit = 1
point_prefix = "TK1."
poll_ms = {poll}
timeout_ms = 500

[[devices.points]]
id = "LT"
kind = "holding"
address = 0
type = "f32"
unit = "%"
range = [0.0, 100.0]
sim = "sine {MID} {AMP} {period}"
"#,
            key = dir.join("gw.key").display(),
            spool = dir.join("spool").display(),
            age = cli.batch_age_ms,
            central = central_pub.trim(),
            ca = tls.join("ca.pem").display(),
            cert = tls.join(format!("{GATEWAY}.pem")).display(),
            tls_key = tls.join(format!("{GATEWAY}.key")).display(),
            poll = cli.poll_ms,
            urgent = if cli.urgent { "\"TK1.LT\"" } else { "" },
            period = cli.period_s,
        ),
    )?;
    Ok(Setup { central_config, gateway_config, api_port, password })
}

/// The started processes, stopped (SIGTERM, in reverse order) when dropped.
struct Processes(Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, mut child) in self.0.drain(..).rev() {
            if let Err(e) = terminate(&mut child) {
                eprintln!("stopping {name}: {e:#}");
            }
        }
    }
}

/// An HTTP/1.1 chunked body, decoded as it arrives.
struct Chunked<R> {
    inner: R,
    left: usize,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let size = line.trim();
            if size.is_empty() {
                continue; // the CRLF after a chunk's data
            }
            let size = size.split(';').next().unwrap_or(size);
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk size {size:?}")))?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let n = self.left.min(buf.len());
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

/// One Server-Sent Event: its type, data, and when its last line was read (ms since the epoch).
struct Event {
    kind: String,
    data: String,
    arrived_ms: i64,
}

/// The alarm stream of central's API, read event by event.
struct Stream(Box<dyn BufRead>);

impl Stream {
    /// Opens `GET /api/v1/alarms/stream` with a bearer token; every read waits at most 30 s (central
    /// sends a keep-alive comment every 15 s).
    fn open(port: u16, token: &str) -> Result<Stream> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting to central's API")?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        write!(
            s,
            "GET /api/v1/alarms/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).context("reading the stream's status line")?;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).context("reading the stream's headers")? == 0 {
                bail!("the stream closed in its headers");
            }
            if line.trim().is_empty() {
                break;
            }
            chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding:") && line.contains("chunked");
        }
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("GET /api/v1/alarms/stream answered {}", status.trim());
        }
        Ok(Stream(if chunked { Box::new(BufReader::new(Chunked { inner: r, left: 0 })) } else { Box::new(r) }))
    }

    /// The next event (keep-alive comments skipped).
    fn next(&mut self) -> Result<Event> {
        let (mut kind, mut data) = (String::from("message"), String::new());
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).context("reading the alarm stream (nothing for 30 s?)")? == 0 {
                bail!("central closed the alarm stream");
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Ok(Event { kind, data, arrived_ms: now_ms() });
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_owned(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {} // id, retry, comments (": keepalive")
            }
        }
    }
}

/// One measured activation.
struct Sample {
    /// SSE arrival minus the crossing sample's source time (ms).
    from_sample: i64,
    /// SSE arrival minus the simulated crossing, when recoverable from the sample's value (ms).
    from_crossing: Option<f64>,
    /// Central's receive time minus the sample's source time (edge batching, uplink, broker, ingest).
    to_central: i64,
}

/// Seconds between the limit crossing and a sample of `value` on the sine's rising (or falling)
/// flank; `None` when the value is not on that flank within a quarter period.
fn since_crossing(value: f64, limit: f64, rising: bool, period_s: f64) -> Option<f64> {
    let phase = |v: f64| ((v - MID) / AMP).clamp(-1.0, 1.0).asin();
    let d = if rising { phase(value) - phase(limit) } else { phase(limit) - phase(value) };
    (d >= 0.0).then_some(d * period_s / std::f64::consts::TAU)
}

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy>(sorted: &[T], q: f64) -> T {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn measure(cli: &Cli, setup: &Setup, token: &str) -> Result<Vec<Sample>> {
    let mut stream = Stream::open(setup.api_port, token)?;
    // Acknowledgements go out from their own thread, so the stream is read without pause.
    let (ack_tx, ack_rx) = mpsc::channel::<i64>();
    let (port, ack_token) = (setup.api_port, token.to_owned());
    let acker = std::thread::spawn(move || {
        let mut failed = 0u32;
        for id in ack_rx {
            let path = format!("/api/v1/alarms/{id}/acknowledge");
            match http_request(port, "POST", &path, Some(&ack_token), Some(r#"{"comment":"bench"}"#)) {
                Ok((200, _)) => {}
                Ok((status, body)) => {
                    failed += 1;
                    eprintln!("acknowledge {id}: {status} {body}");
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("acknowledge {id}: {e:#}");
                }
            }
        }
        failed
    });
    let deadline = Instant::now() + Duration::from_secs(cli.timeout_s);
    let mut warmed = [false; LIMITS.len()];
    let mut samples = Vec::new();
    let (mut other, mut off_flank) = (0usize, 0usize);
    while samples.len() < cli.crossings {
        if Instant::now() > deadline {
            bail!("only {} of {} crossings within {} s", samples.len(), cli.crossings, cli.timeout_s);
        }
        let ev = stream.next()?;
        if ev.kind != "alarm" {
            eprintln!("stream event {:?}: {}", ev.kind, ev.data);
            continue;
        }
        let c: serde_json::Value = serde_json::from_str(&ev.data).context("an alarm event that is not JSON")?;
        let a = &c["alarm"];
        let kind = c["kind"].as_str().unwrap_or("");
        if a["key"]["source"]["Point"].as_str() != Some(POINT)
            || !matches!(kind, "Raised" | "Reactivated")
            || c["annunciate"] != true
        {
            other += 1;
            continue;
        }
        let condition = a["key"]["condition"].as_str().unwrap_or("");
        let Some(i) = LIMITS.iter().position(|l| l.condition == condition) else {
            other += 1;
            continue;
        };
        if let Some(id) = a["id"].as_i64() {
            let _ = ack_tx.send(id);
        }
        let (ts, received) = (c["ts_ms"].as_i64().unwrap_or(0), a["received_ms"].as_i64().unwrap_or(0));
        if !std::mem::replace(&mut warmed[i], true) {
            continue; // the first activation of a limit may be the first sample after start
        }
        let l = &LIMITS[i];
        let since = a["value"].as_f64().and_then(|v| since_crossing(v, l.value, l.rising, cli.period_s));
        // A sample more than one poll (plus slack) past the crossing was not the crossing sample.
        let since = since.filter(|s| *s * 1000.0 <= cli.poll_ms as f64 + 50.0);
        if since.is_none() {
            off_flank += 1;
        }
        samples.push(Sample {
            from_sample: ev.arrived_ms - ts,
            from_crossing: since.map(|s| (ev.arrived_ms - ts) as f64 + s * 1000.0),
            to_central: received - ts,
        });
        if kind == "Reactivated" {
            eprintln!("{condition} re-activated before returning to normal (acknowledgement late?)");
        }
    }
    drop(ack_tx);
    let failed = acker.join().map_err(|_| anyhow::anyhow!("the acknowledging thread panicked"))?;
    eprintln!("other stream events: {other}; crossing estimates off the flank: {off_flank}; failed acks: {failed}");
    Ok(samples)
}

fn report(cli: &Cli, samples: &[Sample]) {
    let mut s: Vec<i64> = samples.iter().map(|x| x.from_sample).collect();
    s.sort_unstable();
    let mut c: Vec<f64> = samples.iter().filter_map(|x| x.from_crossing).collect();
    c.sort_unstable_by(f64::total_cmp);
    let mut r: Vec<i64> = samples.iter().map(|x| x.to_central).collect();
    r.sort_unstable();
    println!(
        "alarm latency end to end (poll {} ms, batch_max_age {} ms, urgent {}, sine period {} s)",
        cli.poll_ms, cli.batch_age_ms, cli.urgent, cli.period_s
    );
    println!(
        "  crossing sample's source time -> SSE event: p50 {} ms, p99 {} ms, max {} ms, n {}",
        pct(&s, 0.5),
        pct(&s, 0.99),
        s[s.len() - 1],
        s.len()
    );
    if !c.is_empty() {
        println!(
            "  simulated value crossing -> SSE event:      p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, n {}",
            pct(&c, 0.5),
            pct(&c, 0.99),
            c[c.len() - 1],
            c.len()
        );
    }
    println!(
        "  of which source time -> central's receive:  p50 {} ms, p99 {} ms, max {} ms",
        pct(&r, 0.5),
        pct(&r, 0.99),
        r[r.len() - 1]
    );
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.crossings == 0
        || cli.poll_ms < 10
        || cli.batch_age_ms == 0
        || !cli.period_s.is_finite()
        || cli.period_s < 1.0
    {
        bail!("--crossings >= 1, --poll-ms >= 10, --batch-age-ms >= 1 and --period-s >= 1 please");
    }
    let dir = std::env::temp_dir().join(format!("vigil-bench-alarm-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run(&cli, &dir);
    if cli.keep || result.is_err() {
        eprintln!("run directory (logs, configurations): {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("removing {}: {e}", dir.display());
    }
    let samples = result?;
    report(&cli, &samples);
    Ok(())
}

fn run(cli: &Cli, dir: &Path) -> Result<Vec<Sample>> {
    let setup = setup(dir, cli)?;
    let mut procs = Processes(Vec::new());
    let log = |name: &str| dir.join(format!("{name}.log"));
    procs.0.push((
        "vigil-central",
        spawn("vigil-central", &["run", "--config", path_str(&setup.central_config)?], &log("central"))?,
    ));
    let gateway = path_str(&setup.gateway_config)?;
    procs.0.push(("vigil-sim", spawn("vigil-sim", &["modbus", "--config", gateway], &log("sim"))?));
    let token = login(setup.api_port, USER, &setup.password)?;
    procs.0.push(("vigil-edge", spawn("vigil-edge", &["run", "--config", gateway], &log("edge"))?));
    let samples = measure(cli, &setup, &token)?;
    drop(procs);
    Ok(samples)
}
