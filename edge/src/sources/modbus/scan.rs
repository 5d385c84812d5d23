//! `vigil-edge scan modbus`: raw registers with every plausible interpretation, so a technician can
//! find the data type and byte order of a device on site.

use std::fmt::Write;

use super::codec::{ByteOrder, DataType, DecodeError, Raw, decode_registers};

fn fmt_raw(r: Result<Raw, DecodeError>) -> String {
    match r {
        Ok(Raw::Int(i)) => i.to_string(),
        Ok(Raw::Float(f)) => format!("{f:.6e}"),
        Ok(Raw::Bool(b)) => b.to_string(),
        Err(_) => "-".into(),
    }
}

/// Renders registers read from `start`: per register its address (0-based, and 1-based in
/// parentheses), hex, u16 and i16, and the u32 / i32 / f32 starting there in all four orders.
pub fn render(start: u16, regs: &[u16]) -> String {
    let mut out = String::from(
        "addr(0-based)  hex     u16     i16    | 32-bit from this register: u32 / i32 / f32 in ABCD CDAB BADC DCBA\n",
    );
    for (i, r) in regs.iter().enumerate() {
        let addr = usize::from(start) + i;
        let u = decode_registers(&regs[i..], DataType::U16, ByteOrder::AB, None);
        let s = decode_registers(&regs[i..], DataType::I16, ByteOrder::AB, None);
        let _ = write!(out, "{addr:>5} ({:>5})  {r:04X}  {:>6}  {:>6}", addr + 1, fmt_raw(u), fmt_raw(s));
        if i + 1 < regs.len() {
            for o in ByteOrder::WIDE {
                let w = &regs[i..];
                let _ = write!(
                    out,
                    "  | {o:?} {} / {} / {}",
                    fmt_raw(decode_registers(w, DataType::U32, o, None)),
                    fmt_raw(decode_registers(w, DataType::I32, o, None)),
                    fmt_raw(decode_registers(w, DataType::F32, o, None))
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_each_interpretation() {
        // 8.5f32 = 0x41080000, stored word-swapped (CDAB) at address 10; then -2 as i16.
        let text = render(10, &[0x0000, 0x4108, 0xFFFE]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("   10 (   11)  0000"), "{}", lines[1]);
        assert!(lines[1].contains("CDAB 1091043328 / 1091043328 / 8.500000e0"), "{}", lines[1]);
        assert!(lines[3].contains("FFFE   65534      -2"), "{}", lines[3]);
        assert!(!lines[3].contains('|'), "no 32-bit value from the last register");
    }
}
