//! Which (gateway, epoch, seq) central holds durably: deduplication, acknowledgement ranges, and the
//! gaps to ask re-sends for.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vigil_common::{GatewayId, SeqRange};

/// Most ranges listed in one ack's `acked` list (the highest ones: what a gateway still holds).
pub const ACK_RANGES: usize = 256;
/// Most ranges listed in one ack's `resend` list.
pub const RESEND_RANGES: usize = 64;
/// Epochs remembered per gateway; older ones are forgotten (a gateway never returns to an old epoch).
pub const EPOCHS_KEPT: usize = 4;
/// Most disjoint ranges one epoch may fragment into (bounds memory against sparse sequence numbers).
pub const MAX_RANGES_PER_EPOCH: usize = 100_000;

/// A set of u64 as disjoint, non-touching inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// True when `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.ranges.range(..=x).next_back().is_some_and(|(_, &last)| x <= last)
    }

    /// Adds `x`; returns false when it was already there.
    pub fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        let mut first = x;
        let mut last = x;
        if let Some((&f, &l)) = self.ranges.range(..x).next_back()
            && l.checked_add(1) == Some(x)
        {
            first = f;
        }
        if let Some(next) = x.checked_add(1)
            && let Some(&l) = self.ranges.get(&next)
        {
            self.ranges.remove(&next);
            last = l;
        }
        self.ranges.insert(first, last);
        true
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> impl DoubleEndedIterator<Item = SeqRange> + '_ {
        self.ranges.iter().map(|(&first, &last)| SeqRange { first, last })
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The gaps between ranges, ascending.
    pub fn gaps(&self) -> impl Iterator<Item = SeqRange> + '_ {
        self.ranges
            .iter()
            .zip(self.ranges.iter().skip(1))
            .map(|((_, &l), (&f, _))| SeqRange { first: l + 1, last: f - 1 })
    }
}

/// One epoch of one gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EpochState {
    /// Durable sequence numbers.
    pub seqs: RangeSet,
    /// When each gap (keyed by its first seq) was first noticed, or last asked for, central ms.
    #[serde(skip)]
    pub gap_noticed: HashMap<u64, i64>,
}

/// One gateway's epochs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewaySeen {
    /// Epochs below this were forgotten: batches of them are replays and are refused.
    pub floor: u64,
    /// Remembered epochs.
    pub epochs: BTreeMap<u64, EpochState>,
}

/// What central knows of every gateway's sequences.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    gateways: HashMap<GatewayId, GatewaySeen>,
}

impl Seen {
    /// True when (gateway, epoch, seq) is already durable.
    pub fn contains(&self, gateway: &GatewayId, epoch: u64, seq: u64) -> bool {
        self.gateways.get(gateway).and_then(|g| g.epochs.get(&epoch)).is_some_and(|s| s.seqs.contains(seq))
    }

    /// True when inserting `seq` would split (gateway, epoch) into more than [`MAX_RANGES_PER_EPOCH`] ranges.
    pub fn too_fragmented(&self, gateway: &GatewayId, epoch: u64) -> bool {
        self.gateways
            .get(gateway)
            .and_then(|g| g.epochs.get(&epoch))
            .is_some_and(|s| s.seqs.len() >= MAX_RANGES_PER_EPOCH)
    }

    /// True when `epoch` is older than every epoch still remembered for `gateway` after some were forgotten.
    pub fn is_stale_epoch(&self, gateway: &GatewayId, epoch: u64) -> bool {
        self.gateways.get(gateway).is_some_and(|g| epoch < g.floor)
    }

    /// True when some gap of (gateway, epoch) is due for a re-send request; notes new gaps.
    pub fn resend_due(&mut self, gateway: &GatewayId, epoch: u64, now_ms: i64, resend_after_ms: i64) -> bool {
        let Some(state) = self.gateways.get_mut(gateway).and_then(|g| g.epochs.get_mut(&epoch)) else {
            return false;
        };
        let mut due = false;
        let gaps: Vec<u64> = state.seqs.gaps().map(|g| g.first).collect();
        for first in gaps {
            let noticed = *state.gap_noticed.entry(first).or_insert(now_ms);
            due |= now_ms - noticed >= resend_after_ms;
        }
        due
    }

    /// Records (gateway, epoch, seq) as durable; false if it already was.
    pub fn insert(&mut self, gateway: &GatewayId, epoch: u64, seq: u64) -> bool {
        let g = self.gateways.entry(gateway.clone()).or_default();
        if epoch < g.floor {
            return false;
        }
        let fresh = g.epochs.entry(epoch).or_default().seqs.insert(seq);
        while g.epochs.len() > EPOCHS_KEPT {
            if let Some((old, _)) = g.epochs.pop_first() {
                g.floor = g.floor.max(old + 1);
            }
        }
        fresh
    }

    /// The ack for (gateway, epoch) at `now_ms`: the highest [`ACK_RANGES`] durable ranges, and gaps
    /// noticed at least `resend_after_ms` ago (each then asked for again only after another period).
    pub fn ack_ranges(
        &mut self,
        gateway: &GatewayId,
        epoch: u64,
        now_ms: i64,
        resend_after_ms: i64,
    ) -> (Vec<SeqRange>, Vec<SeqRange>) {
        let Some(state) = self.gateways.get_mut(gateway).and_then(|g| g.epochs.get_mut(&epoch)) else {
            return (Vec::new(), Vec::new());
        };
        let mut acked: Vec<SeqRange> = state.seqs.ranges().rev().take(ACK_RANGES).collect();
        acked.reverse();
        let gaps: Vec<SeqRange> = state.seqs.gaps().collect();
        state.gap_noticed.retain(|first, _| gaps.iter().any(|g| g.first == *first));
        let mut resend = Vec::new();
        for g in gaps {
            let noticed = state.gap_noticed.entry(g.first).or_insert(now_ms);
            if now_ms - *noticed >= resend_after_ms && resend.len() < RESEND_RANGES {
                resend.push(g);
                *noticed = now_ms;
            }
        }
        (acked, resend)
    }

    /// (gateway, epoch) pairs with gaps, for the periodic re-send requests.
    pub fn with_gaps(&self) -> Vec<(GatewayId, u64)> {
        let mut out = Vec::new();
        for (gw, g) in &self.gateways {
            for (&epoch, st) in &g.epochs {
                if st.seqs.len() > 1 {
                    out.push((gw.clone(), epoch));
                }
            }
        }
        out
    }

    /// Total ranges held (memory bound check and metric).
    pub fn range_count(&self) -> usize {
        self.gateways.values().flat_map(|g| g.epochs.values()).map(|s| s.seqs.len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn range_set_matches_a_plain_set(xs in proptest::collection::vec(0u64..200, 0..300)) {
            let mut rs = RangeSet::default();
            let mut plain = BTreeSet::new();
            for x in xs {
                prop_assert_eq!(rs.insert(x), plain.insert(x));
            }
            for x in 0..201 { prop_assert_eq!(rs.contains(x), plain.contains(&x)); }
            let ranges: Vec<SeqRange> = rs.ranges().collect();
            for w in ranges.windows(2) { prop_assert!(w[0].last + 1 < w[1].first, "merged, non-touching"); }
            let expanded: BTreeSet<u64> = ranges.iter().flat_map(|r| r.first..=r.last).collect();
            prop_assert_eq!(expanded, plain);
        }
    }

    #[test]
    fn fragmentation_is_bounded() {
        let gw = GatewayId::new("gw1").unwrap();
        let mut seen = Seen::default();
        for i in 0..MAX_RANGES_PER_EPOCH as u64 {
            seen.insert(&gw, 1, i * 2);
        }
        assert!(seen.too_fragmented(&gw, 1));
        assert!(!seen.too_fragmented(&gw, 2));
        seen.insert(&gw, 1, 1); // filling a gap merges two ranges
        assert!(!seen.too_fragmented(&gw, 1));
    }

    #[test]
    fn gaps_are_asked_for_only_after_the_timeout() {
        let gw = GatewayId::new("gw1").unwrap();
        let mut seen = Seen::default();
        for s in [0, 1, 2, 5, 6, 9] {
            assert!(seen.insert(&gw, 7, s));
        }
        assert!(!seen.insert(&gw, 7, 5), "duplicate");
        assert!(!seen.contains(&gw, 8, 5), "another epoch starts fresh");
        for e in 8..8 + EPOCHS_KEPT as u64 {
            seen.insert(&gw, e, 0);
        }
        assert!(seen.is_stale_epoch(&gw, 7), "forgotten epochs are replays");
        assert!(!seen.is_stale_epoch(&gw, 8));
        let mut seen = Seen::default();
        for s in [0, 1, 2, 5, 6, 9] {
            seen.insert(&gw, 7, s);
        }
        let (acked, resend) = seen.ack_ranges(&gw, 7, 1000, 500);
        assert_eq!(
            acked,
            vec![SeqRange { first: 0, last: 2 }, SeqRange { first: 5, last: 6 }, SeqRange { first: 9, last: 9 }]
        );
        assert!(resend.is_empty());
        let (_, resend) = seen.ack_ranges(&gw, 7, 1600, 500);
        assert_eq!(resend, vec![SeqRange { first: 3, last: 4 }, SeqRange { first: 7, last: 8 }]);
        let (_, resend) = seen.ack_ranges(&gw, 7, 1700, 500);
        assert!(resend.is_empty(), "not asked again before another period");
        seen.insert(&gw, 7, 3);
        seen.insert(&gw, 7, 4);
        let (_, resend) = seen.ack_ranges(&gw, 7, 2200, 500);
        assert_eq!(resend, vec![SeqRange { first: 7, last: 8 }]);
    }
}
