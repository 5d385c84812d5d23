//! Register decoding and encoding for every data type and byte order. Pure functions: the agent
//! decodes with them, the simulator encodes with them, and property tests check both directions.

use serde::Deserialize;

/// How a point's value is laid out in Modbus registers or bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One coil / discrete input, or one bit of a register (with `bit`).
    Bool,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
}

impl DataType {
    /// Registers this type occupies (1 for bool-in-register).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// Whether the type is an integer (reported as an integer when not scaled).
    pub fn is_integer(self) -> bool {
        !matches!(self, DataType::Bool | DataType::F32 | DataType::F64)
    }

    /// The lowercase name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
        }
    }
}

/// Byte and word order, in the usual integrator notation: letters name the bytes of the value from
/// most to least significant (`A` = most significant), in the order they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum ByteOrder {
    /// 16-bit big-endian (Modbus standard).
    AB,
    /// 16-bit with bytes swapped.
    BA,
    /// Big-endian, high word first (Modbus standard for multi-register values).
    ABCD,
    /// Low word first, bytes big-endian in each word ("word swap", common in PLCs).
    CDAB,
    /// High word first, bytes swapped in each word.
    BADC,
    /// Fully little-endian.
    DCBA,
}

impl ByteOrder {
    /// All four multi-register orders.
    pub const WIDE: [ByteOrder; 4] = [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA];

    /// Whether this order describes 16-bit values (AB/BA) rather than multi-register ones.
    pub fn is_16bit(self) -> bool {
        matches!(self, ByteOrder::AB | ByteOrder::BA)
    }

    fn word_swap(self) -> bool {
        matches!(self, ByteOrder::CDAB | ByteOrder::DCBA)
    }

    fn byte_swap(self) -> bool {
        matches!(self, ByteOrder::BA | ByteOrder::BADC | ByteOrder::DCBA)
    }

    /// The default order for a data type: AB for 16-bit, ABCD otherwise.
    pub fn default_for(t: DataType) -> ByteOrder {
        if t.registers() == 1 { ByteOrder::AB } else { ByteOrder::ABCD }
    }
}

/// A decoded raw value, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    /// A bit.
    Bool(bool),
    /// Any integer type (u64 fits in i128).
    Int(i128),
    /// A finite float.
    Float(f64),
}

impl Raw {
    /// The numeric value (bool as 0/1).
    pub fn as_f64(self) -> f64 {
        match self {
            Raw::Bool(b) => f64::from(u8::from(b)),
            Raw::Int(i) => i as f64,
            Raw::Float(f) => f,
        }
    }
}

/// Why registers could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer registers than the type needs.
    #[error("{dtype} needs {need} registers, got {got}")]
    Short {
        /// The type.
        dtype: &'static str,
        /// Registers needed.
        need: usize,
        /// Registers available.
        got: usize,
    },
    /// The float is NaN or infinite (devices use this to flag a sensor fault).
    #[error("{0} is not a finite number")]
    NotFinite(&'static str),
    /// A bit index above 15.
    #[error("bit {0} is outside a 16-bit register")]
    BadBit(u8),
}

/// Puts registers into big-endian byte order (most significant byte first) according to `order`.
fn to_be_bytes(regs: &[u16], order: ByteOrder, out: &mut [u8]) {
    let n = out.len() / 2;
    for i in 0..n {
        let word = if order.word_swap() { regs[n - 1 - i] } else { regs[i] };
        let [hi, lo] = word.to_be_bytes();
        let (a, b) = if order.byte_swap() { (lo, hi) } else { (hi, lo) };
        out[2 * i] = a;
        out[2 * i + 1] = b;
    }
}

/// Decodes one value from registers; `bit` selects a bit for `Bool` in a register.
pub fn decode_registers(regs: &[u16], dtype: DataType, order: ByteOrder, bit: Option<u8>) -> Result<Raw, DecodeError> {
    let need = usize::from(dtype.registers());
    if regs.len() < need {
        return Err(DecodeError::Short { dtype: dtype.name(), need, got: regs.len() });
    }
    let mut b = [0u8; 8];
    let bytes = &mut b[..need * 2];
    to_be_bytes(&regs[..need], order, bytes);
    Ok(match dtype {
        DataType::Bool => {
            let bit = bit.unwrap_or(0);
            if bit > 15 {
                return Err(DecodeError::BadBit(bit));
            }
            let word = u16::from_be_bytes([bytes[0], bytes[1]]);
            Raw::Bool(word >> bit & 1 == 1)
        }
        DataType::U16 => Raw::Int(u16::from_be_bytes([bytes[0], bytes[1]]).into()),
        DataType::I16 => Raw::Int(i16::from_be_bytes([bytes[0], bytes[1]]).into()),
        DataType::U32 => Raw::Int(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into()),
        DataType::I32 => Raw::Int(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into()),
        DataType::U64 => Raw::Int(u64::from_be_bytes(b).into()),
        DataType::I64 => Raw::Int(i64::from_be_bytes(b).into()),
        DataType::F32 => {
            let f = f32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if !f.is_finite() {
                return Err(DecodeError::NotFinite("f32"));
            }
            Raw::Float(f64::from(f))
        }
        DataType::F64 => {
            let f = f64::from_be_bytes(b);
            if !f.is_finite() {
                return Err(DecodeError::NotFinite("f64"));
            }
            Raw::Float(f)
        }
    })
}

/// Encodes a value into registers (the simulator's side). Integers saturate at the type's range,
/// floats are rounded to integers for integer types. For `Bool` the bit `bit` of `into[0]` is set or
/// cleared, leaving the other bits alone.
pub fn encode_registers(value: f64, dtype: DataType, order: ByteOrder, bit: Option<u8>, into: &mut [u16]) {
    let need = usize::from(dtype.registers());
    if into.len() < need {
        return;
    }
    let mut be = [0u8; 8];
    match dtype {
        DataType::Bool => {
            let mask = 1u16 << (bit.unwrap_or(0) & 15);
            if value != 0.0 {
                into[0] |= mask
            } else {
                into[0] &= !mask
            }
            return;
        }
        DataType::U16 => be[..2].copy_from_slice(&(value.round() as u16).to_be_bytes()),
        DataType::I16 => be[..2].copy_from_slice(&(value.round() as i16).to_be_bytes()),
        DataType::U32 => be[..4].copy_from_slice(&(value.round() as u32).to_be_bytes()),
        DataType::I32 => be[..4].copy_from_slice(&(value.round() as i32).to_be_bytes()),
        DataType::U64 => be.copy_from_slice(&(value.round() as u64).to_be_bytes()),
        DataType::I64 => be.copy_from_slice(&(value.round() as i64).to_be_bytes()),
        DataType::F32 => be[..4].copy_from_slice(&(value as f32).to_be_bytes()),
        DataType::F64 => be.copy_from_slice(&value.to_be_bytes()),
    }
    encode_be_bytes(&be[..need * 2], order, &mut into[..need]);
}

/// Lays out big-endian value bytes as registers in `order` (inverse of the decoder's reordering).
pub fn encode_be_bytes(be: &[u8], order: ByteOrder, into: &mut [u16]) {
    let n = be.len() / 2;
    for i in 0..n.min(into.len()) {
        let (a, b) = (be[2 * i], be[2 * i + 1]);
        let word = if order.byte_swap() { u16::from_be_bytes([b, a]) } else { u16::from_be_bytes([a, b]) };
        let slot = if order.word_swap() { n - 1 - i } else { i };
        into[slot] = word;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const T32: [DataType; 3] = [DataType::U32, DataType::I32, DataType::F32];

    #[test]
    fn known_vectors() {
        // 123456789 = 0x075BCD15
        let abcd = [0x075B, 0xCD15];
        assert_eq!(decode_registers(&abcd, DataType::U32, ByteOrder::ABCD, None), Ok(Raw::Int(123_456_789)));
        assert_eq!(
            decode_registers(&[0xCD15, 0x075B], DataType::U32, ByteOrder::CDAB, None),
            Ok(Raw::Int(123_456_789))
        );
        assert_eq!(
            decode_registers(&[0x5B07, 0x15CD], DataType::U32, ByteOrder::BADC, None),
            Ok(Raw::Int(123_456_789))
        );
        assert_eq!(
            decode_registers(&[0x15CD, 0x5B07], DataType::U32, ByteOrder::DCBA, None),
            Ok(Raw::Int(123_456_789))
        );
        // 1.0f32 = 0x3F800000
        assert_eq!(decode_registers(&[0x3F80, 0], DataType::F32, ByteOrder::ABCD, None), Ok(Raw::Float(1.0)));
        assert_eq!(decode_registers(&[0, 0x3F80], DataType::F32, ByteOrder::CDAB, None), Ok(Raw::Float(1.0)));
        assert_eq!(decode_registers(&[0xFFFF], DataType::I16, ByteOrder::AB, None), Ok(Raw::Int(-1)));
        assert_eq!(decode_registers(&[0x0100], DataType::U16, ByteOrder::BA, None), Ok(Raw::Int(1)));
        assert_eq!(decode_registers(&[0b1000], DataType::Bool, ByteOrder::AB, Some(3)), Ok(Raw::Bool(true)));
        assert!(matches!(decode_registers(&[1], DataType::U32, ByteOrder::ABCD, None), Err(DecodeError::Short { .. })));
        assert_eq!(
            decode_registers(&[0x7FC0, 0], DataType::F32, ByteOrder::ABCD, None),
            Err(DecodeError::NotFinite("f32"))
        );
    }

    proptest! {
        #[test]
        fn u16_i16_round_trip(v in any::<u16>(), swap in any::<bool>()) {
            let order = if swap { ByteOrder::BA } else { ByteOrder::AB };
            let mut r = [0u16; 1];
            encode_registers(f64::from(v), DataType::U16, order, None, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::U16, order, None), Ok(Raw::Int(v.into())));
            let s = v as i16;
            encode_registers(f64::from(s), DataType::I16, order, None, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::I16, order, None), Ok(Raw::Int(s.into())));
            // BA is AB with the bytes swapped
            let other = decode_registers(&[v.swap_bytes()], DataType::U16, ByteOrder::BA, None).unwrap();
            prop_assert_eq!(other, Raw::Int(v.into()));
        }

        #[test]
        fn wide_integers_round_trip(u in any::<u32>(), i in any::<i32>(), oi in 0usize..4) {
            let order = ByteOrder::WIDE[oi];
            let mut r = [0u16; 2];
            encode_registers(f64::from(u), DataType::U32, order, None, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::U32, order, None), Ok(Raw::Int(u.into())));
            encode_registers(f64::from(i), DataType::I32, order, None, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::I32, order, None), Ok(Raw::Int(i.into())));
        }

        #[test]
        fn sixty_four_bit_round_trip(u in any::<u64>(), i in any::<i64>(), f in any::<f64>(), oi in 0usize..4) {
            let order = ByteOrder::WIDE[oi];
            // f64 cannot carry every u64/i64, so lay the bytes out directly.
            let mut r = [0u16; 4];
            encode_be_bytes(&u.to_be_bytes(), order, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::U64, order, None), Ok(Raw::Int(u.into())));
            encode_be_bytes(&i.to_be_bytes(), order, &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::I64, order, None), Ok(Raw::Int(i.into())));
            encode_registers(f, DataType::F64, order, None, &mut r);
            let d = decode_registers(&r, DataType::F64, order, None);
            if f.is_finite() { prop_assert_eq!(d, Ok(Raw::Float(f))); } else { prop_assert!(d.is_err()); }
        }

        #[test]
        fn f32_round_trip(f in any::<f32>(), oi in 0usize..4) {
            let order = ByteOrder::WIDE[oi];
            let mut r = [0u16; 2];
            encode_registers(f64::from(f), DataType::F32, order, None, &mut r);
            let d = decode_registers(&r, DataType::F32, order, None);
            if f.is_finite() { prop_assert_eq!(d, Ok(Raw::Float(f64::from(f)))); } else { prop_assert!(d.is_err()); }
        }

        #[test]
        fn orders_are_distinct_permutations(regs in any::<[u16; 2]>(), ti in 0usize..3) {
            // Decoding with order X what was laid out with order X gives the same value as ABCD of the
            // explicitly permuted words: checks the permutation itself, not only the round trip.
            let [w0, w1] = regs;
            let t = T32[ti];
            let abcd = decode_registers(&[w0, w1], t, ByteOrder::ABCD, None);
            prop_assert_eq!(decode_registers(&[w1, w0], t, ByteOrder::CDAB, None), abcd.clone());
            prop_assert_eq!(decode_registers(&[w0.swap_bytes(), w1.swap_bytes()], t, ByteOrder::BADC, None), abcd.clone());
            prop_assert_eq!(decode_registers(&[w1.swap_bytes(), w0.swap_bytes()], t, ByteOrder::DCBA, None), abcd);
        }

        #[test]
        fn bits_round_trip(base in any::<u16>(), bit in 0u8..16, on in any::<bool>()) {
            let mut r = [base];
            encode_registers(if on { 1.0 } else { 0.0 }, DataType::Bool, ByteOrder::AB, Some(bit), &mut r);
            prop_assert_eq!(decode_registers(&r, DataType::Bool, ByteOrder::AB, Some(bit)), Ok(Raw::Bool(on)));
            prop_assert_eq!(r[0] & !(1 << bit), base & !(1 << bit));
        }

        #[test]
        fn decoding_arbitrary_registers_never_panics(regs in proptest::collection::vec(any::<u16>(), 0..6), ti in 0usize..9, oi in 0usize..6, bit in 0u8..20) {
            let types = [DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64, DataType::I64, DataType::F32, DataType::F64];
            let orders = [ByteOrder::AB, ByteOrder::BA, ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA];
            let _ = decode_registers(&regs, types[ti], orders[oi], Some(bit));
        }
    }
}
