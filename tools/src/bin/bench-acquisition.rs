//! Acquisition benchmark: 10,000 points on 50 simulated Modbus TCP devices, polled every second.
//! Runs `vigil-sim modbus` and `vigil-edge acquire` as separate processes and reports the agent's CPU
//! time and peak RSS (measured by the agent from /proc/self) per run, and their medians.
//!
//! `cargo build --release -p vigil-edge -p vigil-tools && target/release/bench-acquisition`
//! (options: `--runs N`, `--seconds S`, `--devices D`, `--points P` per device, `--port BASE`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

struct Opts {
    runs: usize,
    seconds: u64,
    devices: usize,
    points: usize,
    port: u16,
}

fn parse() -> Result<Opts> {
    let mut o = Opts { runs: 3, seconds: 60, devices: 50, points: 200, port: 21000 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.chunks(2);
    for pair in &mut it {
        let [k, v] = pair else { bail!("options come in pairs: --name value") };
        let n: u64 = v.parse().with_context(|| format!("{k} {v}: not a number"))?;
        match k.as_str() {
            "--runs" => o.runs = n as usize,
            "--seconds" => o.seconds = n,
            "--devices" => o.devices = n as usize,
            "--points" => o.points = n as usize,
            "--port" => o.port = u16::try_from(n).context("--port")?,
            _ => bail!("unknown option {k}"),
        }
    }
    ensure!(o.runs > 0 && o.seconds > 0 && o.devices > 0 && o.points > 0 && o.points <= 2000, "bad options");
    Ok(o)
}

/// A 200-register device profile: a plant-like mix of u16, i16 (scaled), f32 (CDAB) and u32, with
/// deadbands at about instrument resolution, holes between blocks (so requests merge across gaps) and
/// a few status bits.
fn profile(points: usize) -> String {
    let mut s = String::from("description = \"benchmark device\"\naddress_base = 0\n");
    let mut addr = 0u32;
    for i in 0..points {
        let (ty, extra, width) = match i % 10 {
            0..=3 => ("u16", "scale = 0.1\ndeadband = 0.2\nrange = [0.0, 100.0]\n", 1),
            4 | 5 => ("i16", "scale = 0.01\ndeadband = 0.05\nrange = [-50.0, 150.0]\n", 1),
            6 | 7 => ("f32", "order = \"CDAB\"\ndeadband = 0.01\nrange = [0.0, 20.0]\n", 2),
            8 => ("u32", "deadband = 5.0\nrange = [0.0, 100000.0]\n", 2),
            _ => ("bool", "bit = 3\n", 1),
        };
        s += &format!("[[points]]\nid = \"p{i:04}\"\nkind = \"holding\"\naddress = {addr}\ntype = \"{ty}\"\n{extra}");
        addr += width + if i % 25 == 24 { 4 } else { 0 };
    }
    s
}

fn config(dir: &Path, o: &Opts) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("profiles"))?;
    std::fs::write(dir.join("profiles/bench.toml"), profile(o.points))?;
    let mut s = String::from(
        "[gateway]\nid = \"gw-bench\"\nenterprise = \"ent-bench\"\nkey_file = \"/nonexistent\"\n[spool]\npath = \"/nonexistent\"\n\
         [acquisition]\nprofile_dir = \"profiles\"\nmax_silent_s = 60\n",
    );
    for d in 0..o.devices {
        s += &format!(
            "[[devices]]\nname = \"dev{d:03}\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\nprofile = \"bench\"\npoint_prefix = \"D{d:03}.\"\npoll_ms = 1000\ntimeout_ms = 1000\n",
            u32::from(o.port) + d as u32
        );
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
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() -> Result<()> {
    let o = parse()?;
    let bin_dir = std::env::current_exe()?.parent().map(Path::to_path_buf).context("exe dir")?;
    let (sim_bin, edge_bin) = (bin_dir.join("vigil-sim"), bin_dir.join("vigil-edge"));
    for b in [&sim_bin, &edge_bin] {
        ensure!(b.exists(), "{} is missing: cargo build --release -p vigil-edge -p vigil-tools", b.display());
    }
    let dir = std::env::temp_dir().join(format!("vigil-bench-acq-{}", std::process::id()));
    let cfg = config(&dir, &o)?;
    println!(
        "{} devices x {} points = {} points, poll 1 s, {} s per run, {} run(s)",
        o.devices,
        o.points,
        o.devices * o.points,
        o.seconds,
        o.runs
    );
    let check = Command::new(&edge_bin).args(["check", "--config"]).arg(&cfg).output()?;
    ensure!(check.status.success(), "config rejected: {}", String::from_utf8_lossy(&check.stderr));
    if let Some(l) = String::from_utf8_lossy(&check.stdout).lines().next() {
        println!("{l}");
    }
    let sim = Kill(Command::new(&sim_bin).args(["modbus", "--config"]).arg(&cfg).stderr(Stdio::null()).spawn()?);
    // wait for the last device's port
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", o.port + o.devices as u16 - 1)).is_err() {
        ensure!(Instant::now() < deadline, "simulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut cpu, mut rss, mut rate) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=o.runs {
        let out = Command::new(&edge_bin)
            .args(["acquire", "--config"])
            .arg(&cfg)
            .args(["--seconds", &o.seconds.to_string()])
            .output()?;
        ensure!(out.status.success(), "vigil-edge acquire failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (counters, figures) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        let readings = field(counters, "readings").unwrap_or(0.0);
        let secs = field(counters, "seconds").unwrap_or(o.seconds as f64);
        let timeouts = field(counters, "timeouts").unwrap_or(-1.0);
        let overruns = field(counters, "overruns").unwrap_or(-1.0);
        let c = field(figures, "cpu_percent_of_one_core").unwrap_or(f64::NAN);
        let r = field(figures, "peak_rss_mb").unwrap_or(f64::NAN);
        println!(
            "run {run}: cpu {c:.2} % of one core ({} s), peak RSS {r:.1} MB, {:.0} readings/s, samples_out {}, timeouts {timeouts}, overruns {overruns}",
            field(figures, "cpu_seconds").unwrap_or(f64::NAN),
            readings / secs,
            field(counters, "samples_out").unwrap_or(0.0)
        );
        cpu.push(c);
        rss.push(r);
        rate.push(readings / secs);
    }
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "median: cpu {:.2} % of one core, peak RSS {:.1} MB, {:.0} readings/s",
        median(cpu),
        median(rss),
        median(rate)
    );
    Ok(())
}
