//! OPC UA acquisition benchmark: the simulator (in this process) serves 10,000 variables changing
//! every second; `vigil-edge acquire` (a separate process) subscribes to all of them with 1 s
//! sampling and publishing. Every second this harness samples the agent's CPU time and RSS from
//! /proc/PID and reports the medians over the measured part of the run (after a warm-up that covers
//! session and subscription setup), plus the agent's own counters.
//!
//! `CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release -p vigil-edge --bin vigil-edge`
//! and the same for `-p vigil-tools --bin bench-opcua`, then `target/release/bench-opcua`
//! (options: `--seconds S` measured, `--warmup S`, `--tanks T` (3 items each), `--detectors D`
//! (2 items each), `--security none|encrypt`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use vigil_tools::sim::opcua::{Layout, NAMESPACE_URI, OpcuaSim, SimConfig};

struct Opts {
    seconds: u64,
    warmup: u64,
    tanks: usize,
    detectors: usize,
    encrypt: bool,
}

fn parse() -> Result<Opts> {
    let mut o = Opts { seconds: 60, warmup: 20, tanks: 2000, detectors: 2000, encrypt: false };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [k, v] = pair else { bail!("options come in pairs: --name value") };
        let n = || v.parse::<u64>().with_context(|| format!("{k} {v}: not a number"));
        match k.as_str() {
            "--seconds" => o.seconds = n()?,
            "--warmup" => o.warmup = n()?,
            "--tanks" => o.tanks = n()? as usize,
            "--detectors" => o.detectors = n()? as usize,
            "--security" => {
                o.encrypt = match v.as_str() {
                    "none" => false,
                    "encrypt" => true,
                    _ => bail!("--security none|encrypt"),
                }
            }
            _ => bail!("unknown option {k}"),
        }
    }
    ensure!(o.seconds >= 5 && o.tanks + o.detectors > 0, "bad options");
    Ok(o)
}

fn config(dir: &Path, o: &Opts, layout: &Layout, endpoint: &str) -> Result<PathBuf> {
    let mut s = format!(
        "[gateway]\nid = \"gw-bench\"\nenterprise = \"ent-bench\"\nkey_file = \"/nonexistent\"\n[spool]\npath = \"/nonexistent\"\n\
         [acquisition]\nmax_silent_s = 60\nqueue = 4096\n\n[[opcua]]\nname = \"dcs\"\nendpoint = \"{endpoint}\"\n\
         pki_dir = \"pki\"\npublish_interval_ms = 1000\nsampling_ms = 1000\nmax_items_per_subscription = 1000\n"
    );
    if o.encrypt {
        s += "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n";
    }
    for (_, vars) in &layout.objects {
        for v in vars {
            let ty = if v.boolean { "type = \"bool\"\n" } else { "" };
            s += &format!("[[opcua.points]]\nid = \"{}\"\nnode = \"nsu={NAMESPACE_URI};s={}\"\n{ty}", v.name, v.name);
        }
    }
    let f = dir.join("gateway.toml");
    std::fs::write(&f, s)?;
    Ok(f)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (CPU seconds, RSS MB) of process `pid`.
fn proc_of(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) in USER_HZ, which is 100 on Linux.
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, kb / 1024.0))
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let o = parse()?;
    let bin_dir = std::env::current_exe()?.parent().map(Path::to_path_buf).context("exe dir")?;
    let edge_bin = bin_dir.join("vigil-edge");
    ensure!(
        edge_bin.exists(),
        "{} is missing: cargo build --release -p vigil-edge --bin vigil-edge",
        edge_bin.display()
    );
    let dir = std::env::temp_dir().join(format!("vigil-bench-opcua-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let layout = Layout::plant(o.tanks, o.detectors);
    let items = layout.len();
    let sim = OpcuaSim::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        pki_dir: dir.join("sim-pki"),
        layout: layout.clone(),
        update: Duration::from_secs(1),
    })
    .await?;
    if o.encrypt {
        vigil_edge::sources::opcua::trust_certificate(&dir.join("pki"), &sim.certificate())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let cfg = config(&dir, &o, &layout, &sim.endpoint())?;
    let total = o.warmup + o.seconds;
    println!(
        "{items} monitored items, sampling and publishing 1 s, values change every 1 s, security {}, {} s warm-up + {} s measured",
        if o.encrypt { "Basic256Sha256/SignAndEncrypt" } else { "None" },
        o.warmup,
        o.seconds
    );
    let child = Command::new(&edge_bin)
        .args(["acquire", "--config"])
        .arg(&cfg)
        .args(["--seconds", &total.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting vigil-edge acquire")?;
    let pid = child.id();
    let mut child = Kill(child);
    let started = Instant::now();
    let (mut cpu_pct, mut rss) = (Vec::new(), Vec::new());
    let mut last = proc_of(pid).context("reading /proc of the agent")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for s in 1..total {
        tick.tick().await;
        let Some(now) = proc_of(pid) else { break };
        if s > o.warmup {
            cpu_pct.push(100.0 * (now.0 - last.0));
            rss.push(now.1);
        }
        last = now;
    }
    let out = tokio::task::spawn_blocking(move || {
        let c = &mut child.0;
        let status = c.wait();
        let mut text = String::new();
        if let Some(mut so) = c.stdout.take() {
            use std::io::Read as _;
            let _ = so.read_to_string(&mut text);
        }
        (status, text)
    })
    .await?;
    let (status, text) = out;
    ensure!(status.map(|s| s.success()).unwrap_or(false), "vigil-edge acquire failed: {text}");
    let mut lines = text.lines();
    let counters = lines.next().unwrap_or("");
    let secs = field(counters, "seconds").unwrap_or(started.elapsed().as_secs_f64());
    println!("agent counters: {counters}");
    println!(
        "agent: cpu median {:.1} % of one core (p90 {:.1} %), RSS median {:.1} MB (max {:.1} MB); {:.0} values/s received, {:.0} samples/s out, stale dropped {}, overflow {}",
        median(cpu_pct.clone()),
        p90(cpu_pct),
        median(rss.clone()),
        rss.iter().copied().fold(0.0, f64::max),
        field(counters, "opcua_values").unwrap_or(0.0) / secs,
        field(counters, "samples_out").unwrap_or(0.0) / secs,
        field(counters, "opcua_stale_dropped").unwrap_or(-1.0),
        field(counters, "opcua_overflow").unwrap_or(-1.0),
    );
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn p90(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}
