//! Request planning: merges the points of a device into as few read requests as the protocol and the
//! device allow.

use std::time::Duration;

use crate::config::{PointSpec, RegisterKind};

/// Most registers one read may ask for (Modbus application protocol, functions 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may ask for (functions 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// One planned read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Register area (selects the function code).
    pub kind: RegisterKind,
    /// First address (0-based).
    pub start: u16,
    /// Registers or bits to read.
    pub count: u16,
    /// Poll interval of the group this request belongs to.
    pub poll: Duration,
    /// Points served, as indices into the plant's point list.
    pub points: Vec<usize>,
}

/// Plans the requests of one device's points (`mine`, indices into `points`): points are grouped by
/// poll interval and area, sorted by address, and merged while the hole between them is at most
/// `max_gap` and the request stays within `max_regs` registers / `max_bits` bits.
pub fn plan(points: &[PointSpec], mine: &[usize], max_gap: u16, max_regs: u16, max_bits: u16) -> Vec<Request> {
    let mut order: Vec<usize> = mine.to_vec();
    order.sort_by_key(|&i| (points[i].poll, points[i].kind, points[i].address));
    let mut out: Vec<Request> = Vec::new();
    for i in order {
        let p = &points[i];
        let limit = u32::from(if p.kind.is_bits() { max_bits } else { max_regs });
        let p_end = u32::from(p.address) + u32::from(p.width());
        if let Some(last) = out.last_mut()
            && last.kind == p.kind
            && last.poll == p.poll
        {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let gap = u32::from(p.address).saturating_sub(last_end);
            let new_end = last_end.max(p_end);
            if gap <= u32::from(max_gap) && new_end - u32::from(last.start) <= limit {
                last.count = (new_end - u32::from(last.start)) as u16;
                last.points.push(i);
                continue;
            }
        }
        out.push(Request { kind: p.kind, start: p.address, count: p.width(), poll: p.poll, points: vec![i] });
    }
    out
}
