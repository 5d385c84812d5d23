//! Property tests: every batch survives encode/decode and seal/open unchanged, any single flipped
//! bit of a sealed batch is refused, and no byte string makes decoding panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use vigil_common::codec::{BitReader, BitWriter, decode_series, encode_series};
use vigil_common::{
    Batch, ClassDrops, ClockQuality, DropCounters, Event, EventKind, GatewayId, PointId, Priority, Quality, Sample,
    Series, SigningKey, TimeSource, Value,
};

fn clock() -> impl Strategy<Value = ClockQuality> {
    (any::<bool>(), prop_oneof![Just(TimeSource::Device), Just(TimeSource::Gateway), Just(TimeSource::Ntp)])
        .prop_map(|(synchronised, source)| ClockQuality { synchronised, source })
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![4 => Just(Quality::GOOD), 1 => Just(Quality::BAD_TIMEOUT), 1 => any::<u32>().prop_map(Quality)]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(k, d)| k as f64 / 10f64.powi(d as i32)),
        any::<f64>(),
        Just(f64::NAN),
        Just(-0.0),
        Just(f64::NEG_INFINITY),
    ]
}

fn value_of_kind(kind: u8) -> BoxedStrategy<Value> {
    match kind {
        0 => float().prop_map(Value::F64).boxed(),
        1 => any::<i64>().prop_map(Value::I64).boxed(),
        2 => any::<bool>().prop_map(Value::Bool).boxed(),
        _ => "[a-zA-Z0-9 ]{0,12}|\\PC{0,4}".prop_map(Value::Text).boxed(),
    }
}

fn timestamps(n: usize) -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        // Regular polling with jitter.
        (1_700_000_000_000i64..1_900_000_000_000, 1i64..60_000, proptest::collection::vec(-50i64..50, n)).prop_map(
            |(t0, period, jitter)| jitter.iter().enumerate().map(|(i, j)| t0 + i as i64 * period + j).collect()
        ),
        // Anything at all, including out of order and extreme values.
        proptest::collection::vec(any::<i64>(), n),
    ]
}

fn samples() -> impl Strategy<Value = Vec<Sample>> {
    (1usize..40).prop_flat_map(|n| {
        (
            timestamps(n),
            proptest::collection::vec((0u8..4).prop_flat_map(value_of_kind), n),
            // Mostly one kind per series, as real points; sometimes mixed.
            (0u8..4, any::<bool>()),
            proptest::collection::vec((quality(), clock()), n),
        )
            .prop_flat_map(|(ts, mixed, (kind, use_mixed), qc)| {
                let n = ts.len();
                let values: BoxedStrategy<Vec<Value>> = if use_mixed {
                    Just(mixed).boxed()
                } else {
                    proptest::collection::vec(value_of_kind(kind), n).boxed()
                };
                (Just(ts), values, Just(qc))
            })
            .prop_map(|(ts, values, qc)| {
                ts.into_iter()
                    .zip(values)
                    .zip(qc)
                    .map(|((ts_ms, value), (quality, clock))| Sample { ts_ms, value, quality, clock })
                    .collect()
            })
    })
}

fn event() -> impl Strategy<Value = Event> {
    (any::<i64>(), clock(), "[a-z0-9-]{1,10}", any::<bool>()).prop_map(|(ts_ms, clock, name, state)| Event {
        ts_ms,
        clock,
        kind: if state {
            EventKind::DigitalInput { input: name, state }
        } else {
            EventKind::DeviceOffline { device: name, reason: "timeout".into() }
        },
    })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        proptest::collection::btree_map("[A-Z]{2,4}[0-9]{1,3}\\.[A-Z]{2}[0-9]?", samples(), 0..12),
        proptest::collection::vec(event(), 0..4),
        any::<(u64, u64, i64)>(),
        prop_oneof![Just(Priority::AlarmEvent), Just(Priority::Live), Just(Priority::Backfill)],
        any::<u64>(),
    )
        .prop_map(|(series, events, (epoch, seq, created_ms), class, dropped)| Batch {
            gateway: GatewayId::new("gw-prop").unwrap(),
            epoch,
            seq,
            class,
            created_ms,
            series: series
                .into_iter()
                .map(|(p, samples)| Series { point: PointId::new(p).unwrap(), samples })
                .collect(),
            events,
            dropped: DropCounters {
                live: ClassDrops { batches: dropped, samples: dropped / 3, events: 1 },
                ..Default::default()
            },
        })
}

/// Equality that treats floats by their bits, so NaN and -0.0 must survive exactly.
fn same_samples(a: &[Sample], b: &[Sample]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let values_equal = match (&x.value, &y.value) {
                (Value::F64(p), Value::F64(q)) => p.to_bits() == q.to_bits(),
                (p, q) => p == q,
            };
            values_equal && x.ts_ms == y.ts_ms && x.quality == y.quality && x.clock == y.clock
        })
}

fn same_batch(a: &Batch, b: &Batch) -> bool {
    a.gateway == b.gateway
        && (a.epoch, a.seq, a.class, a.created_ms) == (b.epoch, b.seq, b.class, b.created_ms)
        && a.events == b.events
        && a.dropped == b.dropped
        && a.series.len() == b.series.len()
        && a.series.iter().zip(&b.series).all(|(x, y)| x.point == y.point && same_samples(&x.samples, &y.samples))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn series_segments_round_trip(samples in samples(), base in any::<i64>()) {
        for segment in samples.chunk_by(|a, b| vigil_common::codec::same_value_kind(&a.value, &b.value)) {
            let mut w = BitWriter::new();
            encode_series(segment, base, &mut w).unwrap();
            let bytes = w.finish();
            let mut out = Vec::new();
            decode_series(&mut BitReader::new(&bytes), base, usize::MAX, &mut out).unwrap();
            prop_assert!(same_samples(segment, &out));
        }
    }

    #[test]
    fn batches_round_trip_through_seal_and_open(batch in batch()) {
        let key = SigningKey::from_seed(&[3; 32]);
        let sealed = batch.seal(&key).unwrap();
        let opened = Batch::open(&sealed, &batch.gateway, |_| Some(key.public_key())).unwrap();
        prop_assert!(same_batch(&batch, &opened), "{batch:?}\n{opened:?}");
        // The encoding is canonical: re-encoding the decoded batch gives the same bytes.
        prop_assert_eq!(opened.encode().unwrap(), batch.encode().unwrap());
    }

    #[test]
    fn any_single_bit_flip_fails_verification(batch in batch(), bit in any::<prop::sample::Index>()) {
        let key = SigningKey::from_seed(&[3; 32]);
        let mut sealed = batch.seal(&key).unwrap();
        let i = bit.index(sealed.len() * 8);
        sealed[i / 8] ^= 1 << (i % 8);
        prop_assert!(Batch::open(&sealed, &batch.gateway, |_| Some(key.public_key())).is_err());
    }

    #[test]
    fn truncated_batches_are_refused(batch in batch(), cut in any::<prop::sample::Index>()) {
        let key = SigningKey::from_seed(&[3; 32]);
        let sealed = batch.seal(&key).unwrap();
        let n = cut.index(sealed.len());
        prop_assert!(Batch::open(&sealed[..n], &batch.gateway, |_| Some(key.public_key())).is_err());
        let payload = batch.encode().unwrap();
        let n = cut.index(payload.len());
        prop_assert!(Batch::decode(&payload[..n]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Batch::decode(&bytes);
        let _ = decode_series(&mut BitReader::new(&bytes), 0, 100_000, &mut Vec::new());
        let key = SigningKey::from_seed(&[3; 32]);
        let _ = Batch::open(&bytes, &GatewayId::new("g").unwrap(), |_| Some(key.public_key()));
    }

    #[test]
    fn mutated_payloads_never_panic_the_decoder(batch in batch(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut payload = batch.encode().unwrap();
        for (at, byte) in edits {
            let i = at.index(payload.len());
            payload[i] = byte;
        }
        let _ = Batch::decode(&payload);
    }
}
