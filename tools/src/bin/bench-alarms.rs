//! Measures the alarm engine: evaluation cost per sample that changes nothing (the common case) with
//! 100,000 defined points, and the cost of a sample that raises or clears an alarm (durable in SQLite
//! before it is announced). Run with `cargo run --release -p vigil-tools --bin bench-alarms`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use vigil_central::alarms::{AlarmConfig, AlarmEngine, PointDef, PointRef};
use vigil_common::{GatewayId, PointId, Sample, Value};
use vigil_tools::workload::Rng;

const POINTS: usize = 100_000;
const ROUNDS: usize = 11;
const START_MS: i64 = 1_795_000_000_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Polls a future once with a no-op waker: the no-change path never awaits, so this measures the
/// real `on_sample` call without an executor round trip. A future that is not ready is an error here.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn config() -> AlarmConfig {
    let mut cfg = AlarmConfig::default();
    for i in 0..POINTS {
        let mut d = PointDef::new(format!("ent-{:02}/unit-{:03}/TAG{:06}.PV", i % 76, i % 500, i));
        d.gateway = Some(format!("gw-{:03}", i % 400));
        d.enterprise = Some(format!("ent-{:02}", i % 76));
        d.hh = Some(95.0);
        d.h = Some(90.0);
        d.l = Some(10.0);
        d.ll = Some(5.0);
        d.deadband = 0.5;
        d.rate_per_s = Some(50.0);
        d.expected_interval_s = Some(1.0);
        d.frozen_after_s = Some(3600.0);
        cfg.point.push(d);
    }
    cfg
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("alarms.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut engine = rt.block_on(async {
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(opts).await?;
        AlarmEngine::open_sqlite(pool, config()).await.context("opening the engine")
    })?;
    let cfg = config();
    let ids: Vec<PointId> = cfg.point.iter().map(|d| PointId::new(d.id.as_str())).collect::<Result<_, _>>()?;
    let gws: Vec<GatewayId> =
        cfg.point.iter().map(|d| GatewayId::new(d.gateway.clone().unwrap_or_default())).collect::<Result<_, _>>()?;
    let mut rng = Rng::new(11);
    let base: Vec<f64> = (0..POINTS).map(|_| 50.0 + 20.0 * rng.unit()).collect();
    let mut samples: Vec<Sample> = base.iter().map(|&v| Sample::good(START_MS, v)).collect();
    let mut order: Vec<usize> = (0..POINTS).collect();
    // Shuffled order: samples of a batch arrive point by point across the whole index (cache misses).
    for i in (1..POINTS).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }

    println!(
        "# alarm engine, {POINTS} defined points (HH/H/L/LL + deadband, rate of change, bad quality, stale, frozen)"
    );
    let mut ts = START_MS;
    let refs: Vec<PointRef> =
        ids.iter().map(|p| engine.resolve(p).context("point not defined")).collect::<Result<_>>()?;
    for (name, shuffled, by_ref) in [
        ("by id, sequential point order", false, false),
        ("by id, shuffled point order", true, false),
        ("by PointRef, sequential point order", false, true),
        ("by PointRef, shuffled point order", true, true),
    ] {
        let mut ns = Vec::new();
        for _ in 0..ROUNDS {
            ts += 1000;
            let drift = (ts - START_MS) as f64 * 1e-5;
            for (s, b) in samples.iter_mut().zip(&base) {
                s.ts_ms = ts;
                s.value = Value::F64(b + drift);
            }
            let start = Instant::now();
            for (k, &o) in order.iter().enumerate() {
                let i = if shuffled { o } else { k };
                let r = if by_ref {
                    poll_once(engine.on_sample_at(&gws[i], refs[i], &samples[i], ts))
                } else {
                    poll_once(engine.on_sample(&gws[i], &ids[i], &samples[i], ts))
                };
                match r {
                    Some(r) => black_box(r)?,
                    None => bail!("on_sample awaited on a sample that changes nothing"),
                }
            }
            ns.push(start.elapsed().as_nanos() as f64 / POINTS as f64);
        }
        println!(
            "no-change sample, {name:<38} median {:>7.1} ns/sample (min {:.1}, max {:.1})",
            median(ns.clone()),
            ns.iter().copied().fold(f64::INFINITY, f64::min),
            ns.iter().copied().fold(0.0, f64::max)
        );
    }

    // Samples that raise and then clear an alarm: one SQLite transaction each (fsync, WAL).
    let mut lat = Vec::new();
    for k in 0..400usize {
        let i = order[k / 2];
        ts += 1000;
        let v = if k % 2 == 0 { 92.0 } else { 50.0 };
        let s = Sample::good(ts, v);
        let start = Instant::now();
        rt.block_on(engine.on_sample(&gws[i], &ids[i], &s, ts))?;
        lat.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "alarm-changing sample (durable before announced): median {:.0} us, p99 {:.0} us over {} transitions",
        median(lat),
        sorted[sorted.len() * 99 / 100],
        sorted.len()
    );
    Ok(())
}
