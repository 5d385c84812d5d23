//! Compression of a point's samples into a bit stream: delta-of-delta timestamps, decimal-scaled
//! integer deltas or XOR-of-previous floats (Gorilla), run-length quality. Shared by the batch wire
//! format and the historian's chunks. Lossless: every sample decodes to the identical bits.
//!
//! The layout is specified bit by bit in `docs/PROTOCOL.md` ("Series codec").

use crate::point::{ClockQuality, MAX_TEXT_LEN, Quality, Sample, Value};

/// Why a series could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bit stream ended before the series did.
    #[error("series data truncated at bit {at}")]
    Truncated {
        /// Bit offset where more data was needed.
        at: usize,
    },
    /// A variable-length integer ran past 64 bits.
    #[error("variable-length integer longer than 64 bits")]
    VarintOverflow,
    /// The series declares more samples than allowed or than its bytes can hold.
    #[error("series declares {count} samples, at most {max} allowed here")]
    TooManySamples {
        /// Declared count.
        count: u64,
        /// The limit that applied.
        max: u64,
    },
    /// A series must hold at least one sample.
    #[error("series is empty")]
    Empty,
    /// Unknown value-kind tag.
    #[error("unknown value kind {0}")]
    UnknownValueKind(u8),
    /// The samples passed to the encoder do not share one value kind.
    #[error("samples of one series segment must share one value kind")]
    MixedValueKinds,
    /// A bit-packing width above 64.
    #[error("bit width {0} is above 64")]
    BadWidth(u8),
    /// A decimal-scale exponent outside 0..=9.
    #[error("decimal exponent {0} is above 9")]
    BadDecimals(u8),
    /// A text value longer than allowed.
    #[error("text value of {len} bytes, at most {MAX_TEXT_LEN} allowed")]
    TextTooLong {
        /// Its length.
        len: u64,
    },
    /// A text value that is not UTF-8.
    #[error("text value is not UTF-8")]
    InvalidUtf8,
    /// A clock-quality code that means nothing.
    #[error("unknown clock-quality code {0}")]
    BadClockCode(u8),
    /// A quality value larger than 32 bits.
    #[error("quality code {0:#x} does not fit 32 bits")]
    BadQuality(u64),
    /// Run lengths that do not add up to the sample count.
    #[error("{what} runs cover {covered} samples, the series has {count}")]
    RunsMismatch {
        /// Quality or clock.
        what: &'static str,
        /// Samples covered by the runs.
        covered: u64,
        /// Samples in the series.
        count: u64,
    },
}

/// Appends bits, most significant first, to a byte buffer.
#[derive(Debug, Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    pending: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the low `n` bits of `value` (`n` <= 64).
    pub fn write_bits(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        if n > 56 {
            self.write_bits(value >> 32, n - 32);
            self.write_bits(value & 0xFFFF_FFFF, 32);
            return;
        }
        if n == 0 {
            return;
        }
        let masked = value & ((1u64 << n) - 1);
        self.acc = (self.acc << n) | masked;
        self.pending += n;
        while self.pending >= 8 {
            self.pending -= 8;
            self.buf.push((self.acc >> self.pending) as u8);
        }
    }

    /// Appends one bit.
    pub fn write_bit(&mut self, bit: bool) {
        self.write_bits(u64::from(bit), 1);
    }

    /// Appends an unsigned integer as 7-bit groups, each preceded by a continuation bit.
    pub fn write_varint(&mut self, mut value: u64) {
        loop {
            let group = value & 0x7F;
            value >>= 7;
            if value == 0 {
                self.write_bits(group, 8);
                return;
            }
            self.write_bits(0x80 | group, 8);
        }
    }

    /// Bits written so far.
    pub fn bit_len(&self) -> usize {
        self.buf.len() * 8 + self.pending as usize
    }

    /// The bytes, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.pending > 0 {
            self.buf.push((self.acc << (8 - self.pending)) as u8);
        }
        self.buf
    }
}

/// Reads bits written by [`BitWriter`], never past the end of its input.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader at the first bit of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bits left to read (including final padding).
    pub fn remaining_bits(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// Reads `n` bits (`n` <= 64).
    pub fn read_bits(&mut self, n: u32) -> Result<u64, CodecError> {
        debug_assert!(n <= 64);
        if n as usize > self.remaining_bits() {
            return Err(CodecError::Truncated { at: self.pos });
        }
        let mut out = 0u64;
        let mut need = n;
        while need > 0 {
            let byte = u64::from(self.data[self.pos / 8]);
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(need);
            let bits = (byte >> (avail - take)) & ((1u64 << take) - 1);
            out = if take == 64 { bits } else { (out << take) | bits };
            need -= take;
            self.pos += take as usize;
        }
        Ok(out)
    }

    /// Reads one bit.
    pub fn read_bit(&mut self) -> Result<bool, CodecError> {
        Ok(self.read_bits(1)? == 1)
    }

    /// Reads an integer written by [`BitWriter::write_varint`].
    pub fn read_varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let group = self.read_bits(8)?;
            let payload = group & 0x7F;
            if shift == 63 && payload > 1 {
                return Err(CodecError::VarintOverflow);
            }
            value |= payload << shift;
            if group & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::VarintOverflow)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Exact powers of ten; every entry is representable, so `k / POW10[d]` is correctly rounded.
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Largest integer magnitude that an f64 holds exactly.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;
const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    FloatDecimal = 0,
    FloatXor = 1,
    Int = 2,
    Bool = 3,
    Text = 4,
}

impl ValueKind {
    fn from_tag(tag: u8) -> Result<Self, CodecError> {
        Ok(match tag {
            0 => ValueKind::FloatDecimal,
            1 => ValueKind::FloatXor,
            2 => ValueKind::Int,
            3 => ValueKind::Bool,
            4 => ValueKind::Text,
            other => return Err(CodecError::UnknownValueKind(other)),
        })
    }
}

/// True when two values can share one encoded segment.
pub fn same_value_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The smallest number of decimals `d` (0..=9) such that every value is exactly `k / 10^d` for an
/// integer `k` of at most 53 bits, with those integers.
fn decimal_scale(values: &[f64]) -> Option<(u8, Vec<i64>)> {
    'scale: for (d, &scale) in POW10.iter().enumerate() {
        let mut ints = Vec::with_capacity(values.len());
        for &v in values {
            let k = (v * scale).round();
            // Check through the integer the decoder will see: -0.0 must not pass as 0.
            let exact = k.abs() <= MAX_EXACT_INT; // false for NaN and infinities
            if !exact || ((k as i64) as f64 / scale).to_bits() != v.to_bits() {
                continue 'scale;
            }
            ints.push(k as i64);
        }
        return Some((d as u8, ints));
    }
    None
}

/// Appends one series segment: `samples` (non-empty, all of one value kind) with timestamps relative
/// to `base_ts`.
pub fn encode_series(samples: &[Sample], base_ts: i64, w: &mut BitWriter) -> Result<(), CodecError> {
    let first = samples.first().ok_or(CodecError::Empty)?;
    if samples.iter().any(|s| !same_value_kind(&s.value, &first.value)) {
        return Err(CodecError::MixedValueKinds);
    }
    let floats: Vec<f64>;
    let kind = match &first.value {
        Value::F64(_) => {
            floats = samples.iter().map(|s| if let Value::F64(v) = s.value { v } else { 0.0 }).collect();
            match decimal_scale(&floats) {
                Some(_) => ValueKind::FloatDecimal,
                None => ValueKind::FloatXor,
            }
        }
        Value::I64(_) => {
            floats = Vec::new();
            ValueKind::Int
        }
        Value::Bool(_) => {
            floats = Vec::new();
            ValueKind::Bool
        }
        Value::Text(_) => {
            floats = Vec::new();
            ValueKind::Text
        }
    };
    w.write_bits(kind as u64, 3);
    w.write_varint(samples.len() as u64);
    encode_timestamps(samples, base_ts, w);
    match kind {
        ValueKind::FloatDecimal => {
            let (d, ints) = decimal_scale(&floats).ok_or(CodecError::MixedValueKinds)?;
            w.write_bits(u64::from(d), 4);
            encode_ints(&ints, w);
        }
        ValueKind::FloatXor => encode_xor(&floats, w),
        ValueKind::Int => {
            let ints: Vec<i64> = samples.iter().map(|s| if let Value::I64(v) = s.value { v } else { 0 }).collect();
            encode_ints(&ints, w);
        }
        ValueKind::Bool => {
            for s in samples {
                w.write_bit(matches!(s.value, Value::Bool(true)));
            }
        }
        ValueKind::Text => {
            for s in samples {
                let text = if let Value::Text(t) = &s.value { t.as_str() } else { "" };
                if text.len() > MAX_TEXT_LEN {
                    return Err(CodecError::TextTooLong { len: text.len() as u64 });
                }
                w.write_varint(text.len() as u64);
                for b in text.bytes() {
                    w.write_bits(u64::from(b), 8);
                }
            }
        }
    }
    encode_qualities(samples, w);
    encode_clocks(samples, w);
    Ok(())
}

/// Reads one series segment written by [`encode_series`], appending its samples to `out`.
/// At most `max_samples` are accepted; the count is checked before anything is allocated.
pub fn decode_series(
    r: &mut BitReader<'_>,
    base_ts: i64,
    max_samples: usize,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    let kind = ValueKind::from_tag(r.read_bits(3)? as u8)?;
    let count = r.read_varint()?;
    if count == 0 {
        return Err(CodecError::Empty);
    }
    // Every sample costs at least one bit (its timestamp), so the input bounds the count too.
    let max = (max_samples as u64).min(r.remaining_bits() as u64);
    if count > max {
        return Err(CodecError::TooManySamples { count, max });
    }
    let n = count as usize;
    let timestamps = decode_timestamps(r, base_ts, n)?;
    let values: Vec<Value> = match kind {
        ValueKind::FloatDecimal => {
            let d = r.read_bits(4)? as u8;
            let scale = *POW10.get(usize::from(d)).ok_or(CodecError::BadDecimals(d))?;
            decode_ints(r, n)?.into_iter().map(|k| Value::F64(k as f64 / scale)).collect()
        }
        ValueKind::FloatXor => decode_xor(r, n)?.into_iter().map(Value::F64).collect(),
        ValueKind::Int => decode_ints(r, n)?.into_iter().map(Value::I64).collect(),
        ValueKind::Bool => (0..n).map(|_| r.read_bit().map(Value::Bool)).collect::<Result<_, _>>()?,
        ValueKind::Text => (0..n).map(|_| decode_text(r).map(Value::Text)).collect::<Result<_, _>>()?,
    };
    let qualities = decode_qualities(r, n)?;
    let clocks = decode_clock_runs(r, n)?;
    out.reserve(n);
    for (((ts_ms, value), quality), clock) in timestamps.into_iter().zip(values).zip(qualities).zip(clocks) {
        out.push(Sample { ts_ms, value, quality, clock });
    }
    Ok(())
}

fn encode_timestamps(samples: &[Sample], base_ts: i64, w: &mut BitWriter) {
    let t0 = samples[0].ts_ms;
    w.write_varint(zigzag(t0.wrapping_sub(base_ts)));
    let mut prev = t0;
    let mut prev_delta = 0i64;
    for (i, s) in samples.iter().enumerate().skip(1) {
        let delta = s.ts_ms.wrapping_sub(prev);
        if i == 1 {
            w.write_varint(zigzag(delta));
        } else {
            let z = zigzag(delta.wrapping_sub(prev_delta));
            if z == 0 {
                w.write_bits(0b0, 1);
            } else if z < 1 << 7 {
                w.write_bits(0b10, 2);
                w.write_bits(z, 7);
            } else if z < 1 << 12 {
                w.write_bits(0b110, 3);
                w.write_bits(z, 12);
            } else if z < 1 << 20 {
                w.write_bits(0b1110, 4);
                w.write_bits(z, 20);
            } else {
                w.write_bits(0b1111, 4);
                w.write_bits(z, 64);
            }
        }
        prev_delta = delta;
        prev = s.ts_ms;
    }
}

fn decode_timestamps(r: &mut BitReader<'_>, base_ts: i64, n: usize) -> Result<Vec<i64>, CodecError> {
    let mut out = Vec::with_capacity(n);
    let t0 = base_ts.wrapping_add(unzigzag(r.read_varint()?));
    out.push(t0);
    let mut prev = t0;
    let mut delta = 0i64;
    for i in 1..n {
        if i == 1 {
            delta = unzigzag(r.read_varint()?);
        } else {
            let z = if !r.read_bit()? {
                0
            } else if !r.read_bit()? {
                r.read_bits(7)?
            } else if !r.read_bit()? {
                r.read_bits(12)?
            } else if !r.read_bit()? {
                r.read_bits(20)?
            } else {
                r.read_bits(64)?
            };
            delta = delta.wrapping_add(unzigzag(z));
        }
        prev = prev.wrapping_add(delta);
        out.push(prev);
    }
    Ok(out)
}

/// First integer as a varint, then zigzag deltas bit-packed in blocks of 32 with a per-block width.
fn encode_ints(ints: &[i64], w: &mut BitWriter) {
    w.write_varint(zigzag(ints[0]));
    let deltas: Vec<u64> = ints.windows(2).map(|p| zigzag(p[1].wrapping_sub(p[0]))).collect();
    for block in deltas.chunks(BLOCK) {
        let width = block.iter().map(|&z| 64 - z.leading_zeros()).max().unwrap_or(0);
        w.write_bits(u64::from(width), 7);
        for &z in block {
            w.write_bits(z, width);
        }
    }
}

fn decode_ints(r: &mut BitReader<'_>, n: usize) -> Result<Vec<i64>, CodecError> {
    let mut out = Vec::with_capacity(n);
    let mut prev = unzigzag(r.read_varint()?);
    out.push(prev);
    let mut left = n - 1;
    while left > 0 {
        let width = r.read_bits(7)? as u8;
        if width > 64 {
            return Err(CodecError::BadWidth(width));
        }
        let take = left.min(BLOCK);
        for _ in 0..take {
            prev = prev.wrapping_add(unzigzag(r.read_bits(u32::from(width))?));
            out.push(prev);
        }
        left -= take;
    }
    Ok(out)
}

/// Gorilla XOR-of-previous: identical values cost one bit, values reusing the previous window of
/// meaningful bits cost two bits plus that window.
fn encode_xor(values: &[f64], w: &mut BitWriter) {
    let mut prev = values[0].to_bits();
    w.write_bits(prev, 64);
    let mut window: Option<(u32, u32)> = None;
    for v in &values[1..] {
        let bits = v.to_bits();
        let xor = bits ^ prev;
        prev = bits;
        if xor == 0 {
            w.write_bit(false);
            continue;
        }
        w.write_bit(true);
        let lead = xor.leading_zeros();
        let trail = xor.trailing_zeros();
        match window {
            Some((pl, pt)) if lead >= pl && trail >= pt => {
                w.write_bit(false);
                w.write_bits(xor >> pt, 64 - pl - pt);
            }
            _ => {
                let len = 64 - lead - trail;
                w.write_bit(true);
                w.write_bits(u64::from(lead), 6);
                w.write_bits(u64::from(len - 1), 6);
                w.write_bits(xor >> trail, len);
                window = Some((lead, trail));
            }
        }
    }
}

fn decode_xor(r: &mut BitReader<'_>, n: usize) -> Result<Vec<f64>, CodecError> {
    let mut out = Vec::with_capacity(n);
    let mut prev = r.read_bits(64)?;
    out.push(f64::from_bits(prev));
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..n {
        if r.read_bit()? {
            let (lead, len) = match (r.read_bit()?, window) {
                (false, Some((lead, trail))) => (lead, 64 - lead - trail),
                // A reuse bit before any window was set cannot come from the encoder.
                (false, None) => return Err(CodecError::BadWidth(0)),
                (true, _) => {
                    let lead = r.read_bits(6)? as u32;
                    let len = r.read_bits(6)? as u32 + 1;
                    if lead + len > 64 {
                        return Err(CodecError::BadWidth((lead + len) as u8));
                    }
                    window = Some((lead, 64 - lead - len));
                    (lead, len)
                }
            };
            let trail = 64 - lead - len;
            prev ^= r.read_bits(len)? << trail;
        }
        out.push(f64::from_bits(prev));
    }
    Ok(out)
}

fn decode_text(r: &mut BitReader<'_>) -> Result<String, CodecError> {
    let len = r.read_varint()?;
    if len > MAX_TEXT_LEN as u64 {
        return Err(CodecError::TextTooLong { len });
    }
    let bytes = (0..len).map(|_| r.read_bits(8).map(|b| b as u8)).collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| CodecError::InvalidUtf8)
}

/// Runs of equal items: `(length, item)` in order.
fn runs<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Vec<(u64, T)> {
    let mut out: Vec<(u64, T)> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some((n, last)) if *last == item => *n += 1,
            _ => out.push((1, item)),
        }
    }
    out
}

/// `0` all good; `10` one other quality for all, as a varint; `11` runs.
fn encode_qualities(samples: &[Sample], w: &mut BitWriter) {
    let quality_runs = runs(samples.iter().map(|s| s.quality));
    match quality_runs.as_slice() {
        [(_, Quality::GOOD)] => w.write_bit(false),
        [(_, q)] => {
            w.write_bits(0b10, 2);
            w.write_varint(u64::from(q.0));
        }
        many => {
            w.write_bits(0b11, 2);
            w.write_varint(many.len() as u64);
            for (n, q) in many {
                w.write_varint(*n);
                w.write_varint(u64::from(q.0));
            }
        }
    }
}

/// `0` + code: one clock quality for all; `1` runs.
fn encode_clocks(samples: &[Sample], w: &mut BitWriter) {
    let clock_runs = runs(samples.iter().map(|s| s.clock.code()));
    if let [(_, code)] = clock_runs.as_slice() {
        w.write_bit(false);
        w.write_bits(u64::from(*code), 3);
        return;
    }
    w.write_bit(true);
    w.write_varint(clock_runs.len() as u64);
    for (n, code) in clock_runs {
        w.write_varint(n);
        w.write_bits(u64::from(code), 3);
    }
}

fn read_quality(r: &mut BitReader<'_>) -> Result<Quality, CodecError> {
    let code = r.read_varint()?;
    u32::try_from(code).map(Quality).map_err(|_| CodecError::BadQuality(code))
}

fn decode_qualities(r: &mut BitReader<'_>, n: usize) -> Result<Vec<Quality>, CodecError> {
    if !r.read_bit()? {
        return Ok(vec![Quality::GOOD; n]);
    }
    if !r.read_bit()? {
        let quality = read_quality(r)?;
        return Ok(vec![quality; n]);
    }
    expand_runs(r, n, "quality", read_quality)
}

fn expand_runs<T: Copy>(
    r: &mut BitReader<'_>,
    n: usize,
    what: &'static str,
    mut item: impl FnMut(&mut BitReader<'_>) -> Result<T, CodecError>,
) -> Result<Vec<T>, CodecError> {
    let count = n as u64;
    let nruns = r.read_varint()?;
    if nruns == 0 || nruns > count {
        return Err(CodecError::RunsMismatch { what, covered: 0, count });
    }
    let mut out = Vec::with_capacity(n);
    let mut covered = 0u64;
    for _ in 0..nruns {
        let len = r.read_varint()?;
        let value = item(r)?;
        covered = covered.saturating_add(len);
        if len == 0 || covered > count {
            return Err(CodecError::RunsMismatch { what, covered, count });
        }
        out.extend(std::iter::repeat_n(value, len as usize));
    }
    if covered != count {
        return Err(CodecError::RunsMismatch { what, covered, count });
    }
    Ok(out)
}

fn read_clock(r: &mut BitReader<'_>) -> Result<ClockQuality, CodecError> {
    let code = r.read_bits(3)? as u8;
    ClockQuality::from_code(code).ok_or(CodecError::BadClockCode(code))
}

fn decode_clock_runs(r: &mut BitReader<'_>, n: usize) -> Result<Vec<ClockQuality>, CodecError> {
    if !r.read_bit()? {
        let clock = read_clock(r)?;
        return Ok(vec![clock; n]);
    }
    expand_runs(r, n, "clock", read_clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::TimeSource;

    fn round_trip(samples: &[Sample]) -> (Vec<Sample>, usize) {
        let mut w = BitWriter::new();
        encode_series(samples, 1_700_000_000_000, &mut w).unwrap();
        let bytes = w.finish();
        let mut out = Vec::new();
        decode_series(&mut BitReader::new(&bytes), 1_700_000_000_000, usize::MAX, &mut out).unwrap();
        (out, bytes.len())
    }

    #[test]
    fn bits_and_varints_round_trip_at_every_alignment() {
        let mut w = BitWriter::new();
        let items: Vec<(u64, u32)> =
            (0..=64).map(|n| (u64::MAX.wrapping_mul(0x9E37_79B9) >> (64 - n.max(1)), n)).collect();
        for &(v, n) in &items {
            w.write_bits(v, n);
            w.write_varint(v);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, n) in &items {
            let masked = if n == 64 { v } else { v & ((1u64 << n) - 1) };
            assert_eq!(r.read_bits(n).unwrap(), masked, "width {n}");
            assert_eq!(r.read_varint().unwrap(), v);
        }
        assert!(r.remaining_bits() < 8);
    }

    #[test]
    fn decimal_values_take_the_integer_path() {
        let samples: Vec<Sample> = (0..100)
            .map(|i| Sample::good(1_700_000_000_000 + i * 1000, f64::from(1234 + (i % 7) as i32) / 100.0))
            .collect();
        let (out, bytes) = round_trip(&samples);
        assert_eq!(out, samples);
        assert!(bytes < 100, "{bytes} bytes for 100 regular decimal samples");
    }

    #[test]
    fn awkward_floats_survive_bit_exact() {
        let values = [0.1 + 0.2, -0.0, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE, 1e300, -7.25];
        let samples: Vec<Sample> = values.iter().enumerate().map(|(i, &v)| Sample::good(i as i64, v)).collect();
        let (out, _) = round_trip(&samples);
        for (a, b) in out.iter().zip(&samples) {
            let (Value::F64(x), Value::F64(y)) = (&a.value, &b.value) else { panic!("kind changed") };
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    #[test]
    fn quality_and_clock_runs_are_kept() {
        let mut samples: Vec<Sample> = (0..10).map(|i| Sample::good(i * 1000, 1.0)).collect();
        samples[3].quality = Quality::BAD_TIMEOUT;
        samples[4].quality = Quality::BAD_TIMEOUT;
        samples[9].clock = ClockQuality { synchronised: false, source: TimeSource::Gateway };
        assert_eq!(round_trip(&samples).0, samples);
    }

    #[test]
    fn mixed_kinds_are_refused() {
        let samples = vec![Sample::good(0, 1.0), Sample { value: Value::I64(1), ..Sample::good(1, 0.0) }];
        assert_eq!(encode_series(&samples, 0, &mut BitWriter::new()), Err(CodecError::MixedValueKinds));
    }

    #[test]
    fn a_huge_declared_count_is_refused_before_allocation() {
        let mut w = BitWriter::new();
        w.write_bits(0, 3);
        w.write_varint(u64::MAX);
        let bytes = w.finish();
        let err = decode_series(&mut BitReader::new(&bytes), 0, 1_000_000, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CodecError::TooManySamples { count: u64::MAX, .. }), "{err}");
    }
}
