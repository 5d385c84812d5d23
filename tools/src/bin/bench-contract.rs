//! Measures the wire contract: bytes per sample of realistic batches, and seal / open throughput.
//! Run with `cargo run --release -p vigil-tools --bin bench-contract`.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use vigil_common::{Batch, GatewayId, SigningKey};
use vigil_tools::workload::{Rng, live_batch, plant};

const START_MS: i64 = 1_795_000_000_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs `f` (which handles `samples` samples) repeatedly for about 200 ms per round, 11 rounds;
/// returns the median rate in samples per second.
fn rate(samples: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..11 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_millis() < 200 {
            f()?;
            n += 1;
        }
        rates.push(n as f64 * samples as f64 / start.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

fn main() -> Result<()> {
    let key = SigningKey::from_seed(&[42; 32]);
    let gateway = GatewayId::new("gw-bench")?;
    let mut rng = Rng::new(7);

    println!("# wire size: 500 points polled at 1 s, 10 s per batch (5,000 samples)");
    println!("{:<44} {:>10} {:>10} {:>12}", "batch", "payload B", "sealed B", "B/sample");
    let points = plant(500, &mut rng);
    for (label, quantised) in
        [("instrument resolution (realistic)", true), ("unquantised f64 noise (worst case)", false)]
    {
        let mut sizes = Vec::new();
        let mut sealed_sizes = Vec::new();
        for round in 0..10 {
            let batch = live_batch(&points, 10, 1000, START_MS + round * 10_000, &mut rng, quantised);
            ensure!(batch.sample_count() == 5000, "workload changed");
            sizes.push(batch.encode()?.len() as f64);
            sealed_sizes.push(batch.seal(&key)?.len() as f64);
        }
        let (p, s) = (median(sizes), median(sealed_sizes));
        println!("{label:<44} {p:>10.0} {s:>10.0} {:>12.3}", s / 5000.0);
    }

    println!();
    println!("# throughput on one core: 1,000-sample batches (100 points x 10 polls), median of 11 rounds");
    let small = plant(100, &mut rng);
    let batch = live_batch(&small, 10, 1000, START_MS, &mut rng, true);
    ensure!(batch.sample_count() == 1000, "workload changed");
    let sealed = batch.seal(&key)?;
    let public = key.public_key();
    let opened = Batch::open(&sealed, &gateway, |_| Some(public.clone())).context("open")?;
    ensure!(opened == batch, "round trip changed the batch");

    let open_rate = rate(1000, || {
        black_box(Batch::open(black_box(&sealed), &gateway, |_| Some(public.clone()))?);
        Ok(())
    })?;
    let payload = batch.encode()?;
    let decode_rate = rate(1000, || {
        black_box(Batch::decode(black_box(&payload))?);
        Ok(())
    })?;
    let seal_rate = rate(1000, || {
        black_box(batch.seal(&key)?);
        Ok(())
    })?;
    println!("{:<44} {:>14.0} samples/s", "verify + decode (Batch::open)", open_rate);
    println!("{:<44} {:>14.0} samples/s", "decode only (no signature check)", decode_rate);
    println!("{:<44} {:>14.0} samples/s", "encode + sign (Batch::seal)", seal_rate);
    Ok(())
}
