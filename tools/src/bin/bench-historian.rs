//! Measures the historian: bytes per sample on disk for a realistic plant mix (lossless), and the
//! time of a 1,000-bucket aggregate over one point holding a year of 1 s data.
//! Run with `cargo run --release -p vigil-tools --bin bench-historian [-- --days 365]`.

use std::time::Instant;

use anyhow::{Context, Result};
use vigil_central::historian::{FileChunkStore, Historian, SeriesKey};
use vigil_central::swinging_door;
use vigil_common::{ClockQuality, GatewayId, PointId, Quality, Sample};
use vigil_tools::workload::{Rng, Signal, plant};

const START_MS: i64 = 1_795_000_000_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Typical swinging-door deviation per signal kind: a few instrument resolution steps.
fn deviation(signal: Signal) -> f64 {
    match signal {
        Signal::Level => 0.005,
        Signal::Temperature => 0.3,
        Signal::Pressure => 0.005,
        Signal::Gas => 0.3,
        Signal::Digital => 0.0,
    }
}

/// Stores `seconds` of `points` at 1 s; returns (bytes per input sample, bytes, input samples).
fn storage(points: usize, seconds: usize, quantised: bool, jitter_ms: u64, sdt: bool) -> Result<(f64, u64, u64)> {
    let dir = tempfile::tempdir()?;
    let store = FileChunkStore::open(dir.path())?;
    let mut h = Historian::open(Box::new(store), 0, 50_000_000)?;
    let mut rng = Rng::new(11);
    let pts = plant(points, &mut rng);
    let gw = GatewayId::new("gw-bench")?;
    let mut total = 0u64;
    let mut pending: Vec<Vec<Sample>> = vec![Vec::new(); pts.len()];
    // 10 s batches as a gateway sends them; per point its samples, in requests of 16 that share a timestamp.
    for block in 0..seconds / 10 {
        let mut per: Vec<Vec<Sample>> = vec![Vec::with_capacity(10); pts.len()];
        for poll in 0..10 {
            for (request, group) in pts.chunks(16).enumerate() {
                let jitter = if jitter_ms == 0 { 0 } else { (rng.next_u64() % jitter_ms) as i64 };
                let ts = START_MS + ((block * 10 + poll) as i64) * 1000 + request as i64 * 3 + jitter;
                let t = (ts - START_MS) as f64 / 1000.0;
                for (j, p) in group.iter().enumerate() {
                    let value = p.value(t, &mut rng, quantised);
                    per[request * 16 + j].push(Sample {
                        ts_ms: ts,
                        value,
                        quality: Quality::GOOD,
                        clock: ClockQuality::NTP_SYNCED,
                    });
                }
            }
        }
        for (i, (p, s)) in pts.iter().zip(per).enumerate() {
            total += s.len() as u64;
            if sdt {
                pending[i].extend(s);
            } else {
                h.insert(&gw, &p.id, &s)?;
            }
        }
    }
    for (p, s) in pts.iter().zip(pending) {
        let kept: Vec<Sample> =
            swinging_door::keep(&s, deviation(p.signal), &[]).into_iter().map(|i| s[i].clone()).collect();
        h.insert(&gw, &p.id, &kept)?;
    }
    h.make_durable()?;
    let bytes = h.disk_bytes();
    Ok((bytes as f64 / total as f64, bytes, total))
}

fn main() -> Result<()> {
    let days: i64 =
        std::env::args().skip_while(|a| a != "--days").nth(1).map(|d| d.parse()).transpose()?.unwrap_or(365);
    println!(
        "# storage: realistic plant mix (30% levels, 25% temperatures, 20% pressures, 15% gas, 10% digital), 1 s polls"
    );
    println!("{:<52} {:>12} {:>14} {:>10}", "data", "samples", "chunk bytes", "B/sample");
    println!(
        "(swinging door deviations: level 5 mm, temperature 0.3 C, pressure 0.005 MPa, gas 0.3 %LEL, digital 0; B/sample per input sample)"
    );
    for (label, quantised, jitter, sdt) in [
        ("instrument resolution, polls 0-19 ms late, lossless", true, 20, false),
        ("instrument resolution, polls 0-4 ms late, lossless", true, 5, false),
        ("instrument resolution, steady polls, lossless", true, 0, false),
        ("unquantised f64 noise, polls 0-19 ms late, lossless", false, 20, false),
        ("instrument resolution, 0-19 ms late, swinging door", true, 20, true),
    ] {
        let (bps, bytes, n) = storage(1000, 3600, quantised, jitter, sdt)?;
        println!("{label:<52} {n:>12} {bytes:>14} {bps:>10.3}");
    }

    println!();
    println!(
        "# query: one level point, {days} days of 1 s data, 1,000-bucket aggregate (count/min/max/avg/stddev/first/last)"
    );
    let dir = tempfile::tempdir()?;
    let mut h = Historian::open(Box::new(FileChunkStore::open(dir.path())?), 0, 50_000_000)?;
    let mut rng = Rng::new(5);
    let point = plant(1, &mut rng).remove(0);
    let gw = GatewayId::new("gw-bench")?;
    let n = (days * 86_400) as usize;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(3600);
    for i in 0..n {
        let ts = START_MS + i as i64 * 1000 + (rng.next_u64() % 20) as i64;
        let value = point.value(i as f64, &mut rng, true);
        batch.push(Sample { ts_ms: ts, value, quality: Quality::GOOD, clock: ClockQuality::NTP_SYNCED });
        if batch.len() == 3600 {
            h.insert(&gw, &point.id, &batch)?;
            batch.clear();
        }
    }
    h.insert(&gw, &point.id, &batch)?;
    h.make_durable()?;
    h.committed();
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "loaded {n} samples in {load_s:.1} s ({:.0} samples/s into the historian), {:.3} B/sample on disk",
        n as f64 / load_s,
        h.disk_bytes() as f64 / n as f64
    );
    drop(h);
    let reopen = Instant::now();
    let h = Historian::open(Box::new(FileChunkStore::open(dir.path())?), 1, 50_000_000)?;
    println!("reopen (index {} chunk files): {:.0} ms", days + 1, reopen.elapsed().as_secs_f64() * 1000.0);
    let key = SeriesKey { gateway: gw, point: PointId::new(point.id.as_str())? };
    let (from, to) = (START_MS, START_MS + days * 86_400_000);
    let bucket = (to - from) / 1000;
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..11 {
        let t = Instant::now();
        let b = h.aggregate(&key, from, to, bucket).context("aggregate")?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        count = b.iter().map(|x| x.stats.count).sum::<u64>();
    }
    anyhow::ensure!(count == n as u64, "aggregate counted {count} of {n} samples");
    println!(
        "{:<52} {:>10.1} ms (median of 11; max {:.1})",
        "1,000 buckets over the whole range",
        median(times.clone()),
        times.iter().cloned().fold(0.0, f64::max)
    );
    let mut times = Vec::new();
    for i in 0..11 {
        let t = Instant::now();
        let from = START_MS + i * 7 * 86_400_000 + 1234;
        let r = h.raw(&key, from, from + 3_600_000, 10_000)?;
        anyhow::ensure!(r.len() == 3600, "raw hour returned {}", r.len());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{:<52} {:>10.2} ms (median of 11)", "raw range, one hour (3,600 samples)", median(times));
    let mut times = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let _ = h.latest(std::slice::from_ref(&key));
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!("{:<52} {:>10.2} us (median of 11)", "latest value", median(times));
    Ok(())
}
