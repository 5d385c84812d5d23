//! The alarm engine's data model: keys, conditions, grades, alarm instances and the changes it announces.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an alarm is about: a point, a gateway, or a device behind a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlarmSource {
    /// A measured (or virtual: digital input, gas camera) point.
    Point(String),
    /// A gateway as a whole (offline, data loss).
    Gateway(String),
    /// A device reported by a gateway (gateway id, device name).
    Device(String, String),
}

impl fmt::Display for AlarmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmSource::Point(p) => write!(f, "point:{p}"),
            AlarmSource::Gateway(g) => write!(f, "gateway:{g}"),
            AlarmSource::Device(g, d) => write!(f, "device:{g}/{d}"),
        }
    }
}

/// The alarm condition (one alarm per source and condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Condition {
    /// Value at or above the high-high limit.
    HiHi,
    /// Value at or above the high limit.
    Hi,
    /// Value at or below the low limit.
    Lo,
    /// Value at or below the low-low limit.
    LoLo,
    /// Absolute rate of change above the limit.
    RateOfChange,
    /// Sample quality is Bad.
    BadQuality,
    /// No sample within the stale interval.
    Stale,
    /// Value unchanged for longer than allowed.
    Frozen,
    /// Digital input in its alarm state.
    Digital,
    /// Gas camera reports a leak.
    GasLeak,
    /// Gateway offline (death message or silence).
    GatewayOffline,
    /// Device offline as reported by its gateway.
    DeviceOffline,
    /// Source fault reported by a gateway (one-shot).
    SourceFault,
    /// Gateway dropped or lost spooled data (one-shot).
    DataLoss,
}

impl Condition {
    /// Number of point conditions (those with a per-point detector slot).
    pub const POINT_SLOTS: usize = 10;

    /// Detector slot of a point condition, if it is one.
    pub fn slot(self) -> Option<usize> {
        Some(match self {
            Condition::HiHi => 0,
            Condition::Hi => 1,
            Condition::Lo => 2,
            Condition::LoLo => 3,
            Condition::RateOfChange => 4,
            Condition::BadQuality => 5,
            Condition::Stale => 6,
            Condition::Frozen => 7,
            Condition::Digital => 8,
            Condition::GasLeak => 9,
            _ => return None,
        })
    }

    /// The point condition of a detector slot.
    pub fn from_slot(slot: usize) -> Condition {
        [
            Condition::HiHi,
            Condition::Hi,
            Condition::Lo,
            Condition::LoLo,
            Condition::RateOfChange,
            Condition::BadQuality,
            Condition::Stale,
            Condition::Frozen,
            Condition::Digital,
            Condition::GasLeak,
        ][slot.min(Self::POINT_SLOTS - 1)]
    }
}

/// One alarm identity: at most one instance per key is in alarm (not normal) at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlarmKey {
    /// What the alarm is about.
    pub source: AlarmSource,
    /// Which condition.
    pub condition: Condition,
}

impl fmt::Display for AlarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:?}", self.source, self.condition)
    }
}

/// Alarm grade (S most urgent .. D least).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum Grade {
    /// Most urgent.
    S,
    /// Urgent.
    A,
    /// Important.
    B,
    /// Normal.
    #[default]
    C,
    /// Informational.
    D,
}

/// Gas-leak alert level (blue lowest, red highest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GasLevel {
    /// Low.
    Blue,
    /// General.
    Yellow,
    /// Larger.
    Orange,
    /// Major.
    Red,
}

/// ISA-18.2 alarm state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlarmState {
    /// Active, not acknowledged.
    ActiveUnacked,
    /// Active, acknowledged.
    ActiveAcked,
    /// Returned to normal, not acknowledged.
    ReturnedUnacked,
    /// Normal (cleared and acknowledged).
    Normal,
}

/// Closed-loop handling stage of an alarm case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Raised, nobody picked it up yet.
    Raised,
    /// Acknowledged (picked up).
    Acknowledged,
    /// Verified real (video/trend).
    Verified,
    /// Marked as a false alarm, with a reason.
    FalseAlarm,
    /// Dispatched to the enterprise.
    Dispatched,
    /// The enterprise answered.
    Feedback,
    /// Reviewed by the park.
    Reviewed,
    /// Closed.
    Closed,
}

/// One alarm instance (an occurrence from first activation to closed case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Unique id.
    pub id: i64,
    /// Source and condition.
    pub key: AlarmKey,
    /// Enterprise the source belongs to, if known.
    pub enterprise: Option<String>,
    /// Grade.
    pub grade: Grade,
    /// Condition currently active.
    pub active: bool,
    /// Acknowledged since the last activation.
    pub acked: bool,
    /// Source time of the first activation.
    pub raised_ms: i64,
    /// Source time of the latest activation.
    pub last_active_ms: i64,
    /// Source time of the latest clear, if cleared.
    pub cleared_ms: Option<i64>,
    /// Receive time of the first activation.
    pub received_ms: i64,
    /// Value that triggered the latest activation.
    pub value: Option<f64>,
    /// Limit that was crossed, if any.
    pub limit: Option<f64>,
    /// Number of activations of this instance (re-activations before it returned to normal).
    pub activations: u32,
    /// Longest single activation so far, ms (source time).
    pub longest_active_ms: i64,
    /// Raised from late data and not seen live since: recorded, not announced.
    pub historical: bool,
    /// Record from out-of-order backfill (a past episode, never the live alarm).
    pub replay: bool,
    /// Suppressed by this maintenance window when raised.
    pub suppressed_by: Option<i64>,
    /// Case stage.
    pub stage: Stage,
    /// Gas-leak level (gas alarms only).
    pub gas_level: Option<GasLevel>,
    /// Reason given when marked false.
    pub false_alarm_reason: Option<String>,
    /// Investigation report reference.
    pub report: Option<String>,
    /// Deadline to pick the alarm up (acknowledge), receive time ms.
    pub pickup_deadline_ms: Option<i64>,
    /// Number of supervisions (deadline passes) so far.
    pub supervisions: u32,
}

impl Alarm {
    /// The ISA-18.2 state.
    pub fn state(&self) -> AlarmState {
        match (self.active, self.acked) {
            (true, false) => AlarmState::ActiveUnacked,
            (true, true) => AlarmState::ActiveAcked,
            (false, false) => AlarmState::ReturnedUnacked,
            (false, true) => AlarmState::Normal,
        }
    }

    /// Whether the case is finished.
    pub fn is_closed(&self) -> bool {
        self.stage == Stage::Closed
    }
}

/// What happened to an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A new instance became active.
    Raised,
    /// An instance not yet normal became active again.
    Reactivated,
    /// The condition cleared.
    Cleared,
    /// An alarm raised from late data is still active in live data: now announced.
    Promoted,
    /// Announced again after shelving, suppression or out-of-service ended.
    Reannunciated,
    /// The pick-up deadline passed: supervision up the chain.
    Supervision,
    /// The gas-leak level went up.
    GasLevelRaised,
    /// An operator or system action (name).
    Action(String),
}

/// A change of an alarm, published after it is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmChange {
    /// What happened.
    pub kind: ChangeKind,
    /// The alarm after the change.
    pub alarm: Alarm,
    /// Time of the change (source time for detection, action time for actions).
    pub ts_ms: i64,
    /// Whether the console and notifiers should ring (false: shelved, suppressed, out of service, late data).
    pub annunciate: bool,
}

/// One entry of an alarm's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Alarm id.
    pub alarm_id: i64,
    /// When (source time for detection, action time for actions).
    pub ts_ms: i64,
    /// What (e.g. "raised", "cleared", "acknowledge").
    pub what: String,
    /// Who ("system" for detection).
    pub actor: String,
    /// Free detail (JSON or text).
    pub detail: String,
    /// Recorded from late data.
    pub historical: bool,
}

/// Shelving of one alarm key until a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shelve {
    /// Expiry (ms); the alarm re-annunciates then if still active.
    pub until_ms: i64,
    /// Who shelved it.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// Out-of-service mark of one alarm key (change control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutOfService {
    /// Who.
    pub by: String,
    /// Why (change ticket).
    pub reason: String,
    /// Since when.
    pub since_ms: i64,
}

/// Status of a maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowStatus {
    /// Requested by the enterprise.
    Requested,
    /// Approved by the park: suppresses while in its time range.
    Approved,
    /// Rejected.
    Rejected,
    /// Its end passed.
    Expired,
}

/// A maintenance window ("fault-point application"): suppresses alarms of listed points/devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Id.
    pub id: i64,
    /// Requesting enterprise.
    pub enterprise: String,
    /// Point ids covered.
    pub points: Vec<String>,
    /// Gateways covered (all their points, devices and the gateway itself).
    pub gateways: Vec<String>,
    /// Start (ms).
    pub from_ms: i64,
    /// End (ms), exclusive.
    pub to_ms: i64,
    /// Why.
    pub reason: String,
    /// Who requested.
    pub requested_by: String,
    /// Who approved or rejected.
    pub decided_by: Option<String>,
    /// Status.
    pub status: WindowStatus,
}

impl MaintenanceWindow {
    /// Whether the window suppresses this source at this time.
    pub fn covers(&self, source: &AlarmSource, gateway: Option<&str>, ts_ms: i64) -> bool {
        if self.status != WindowStatus::Approved || ts_ms < self.from_ms || ts_ms >= self.to_ms {
            return false;
        }
        let by_gateway = |g: &str| self.gateways.iter().any(|x| x == g);
        match source {
            AlarmSource::Point(p) => self.points.iter().any(|x| x == p) || gateway.is_some_and(by_gateway),
            AlarmSource::Gateway(g) | AlarmSource::Device(g, _) => by_gateway(g),
        }
    }
}

/// Alarm limits of an analog point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Limits {
    /// High-high.
    pub hh: Option<f64>,
    /// High.
    pub h: Option<f64>,
    /// Low.
    pub l: Option<f64>,
    /// Low-low.
    pub ll: Option<f64>,
    /// Hysteresis: a limit alarm clears only this far back inside the limit.
    pub deadband: f64,
}

/// Status of a threshold change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    /// Waiting for approval.
    Requested,
    /// Approved and applied.
    Approved,
    /// Rejected.
    Rejected,
}

/// A threshold change request (before/after values go into the audit chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRequest {
    /// Id.
    pub id: i64,
    /// Point.
    pub point: String,
    /// Limits when requested.
    pub before: Limits,
    /// Requested limits.
    pub after: Limits,
    /// Who requested.
    pub requested_by: String,
    /// Why.
    pub reason: String,
    /// When requested.
    pub requested_ms: i64,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Status.
    pub status: RequestStatus,
}
