//! OPC UA values to Vigil readings: variant to raw value, status code to quality, and the timestamp
//! the configuration asks for.

use opcua::types::{DataValue, DateTime, StatusCode, Variant};
use vigil_common::Quality;

use super::config::TimestampName;
use crate::sources::modbus::codec::{DataType, Raw};

/// `BadTypeMismatch`: the node's value is not a number or boolean Vigil can carry.
pub const BAD_TYPE_MISMATCH: Quality = Quality(0x8074_0000);

/// The quality of an OPC UA status code: its code and severity (the info bits, such as overflow and
/// limit flags, are dropped because Vigil's quality is the code alone).
pub fn quality_of(status: StatusCode) -> Quality {
    Quality(status.bits() & 0xFFFF_0000)
}

/// The raw value of a scalar numeric or boolean variant.
pub fn raw_of(v: &Variant) -> Option<Raw> {
    Some(match v {
        Variant::Boolean(b) => Raw::Bool(*b),
        Variant::SByte(x) => Raw::Int(i128::from(*x)),
        Variant::Byte(x) => Raw::Int(i128::from(*x)),
        Variant::Int16(x) => Raw::Int(i128::from(*x)),
        Variant::UInt16(x) => Raw::Int(i128::from(*x)),
        Variant::Int32(x) => Raw::Int(i128::from(*x)),
        Variant::UInt32(x) => Raw::Int(i128::from(*x)),
        Variant::Int64(x) => Raw::Int(i128::from(*x)),
        Variant::UInt64(x) => Raw::Int(i128::from(*x)),
        Variant::Float(x) if x.is_finite() => Raw::Float(f64::from(*x)),
        Variant::Double(x) if x.is_finite() => Raw::Float(*x),
        _ => return None,
    })
}

/// The raw value and quality of a data value for a point of type `dtype`.
pub fn value_of(dv: &DataValue, dtype: DataType) -> (Option<Raw>, Quality) {
    let q = quality_of(dv.status.unwrap_or(StatusCode::Good));
    if q.0 & 0x8000_0000 != 0 {
        return (None, q);
    }
    match dv.value.as_ref() {
        None | Some(Variant::Empty) => (None, if q.is_good() { Quality::BAD } else { q }),
        Some(v) => match raw_of(v) {
            None => (None, BAD_TYPE_MISMATCH),
            // A bool point takes 0/1 numbers as well; a numeric point takes a bool as 0/1.
            Some(Raw::Int(i)) if dtype == DataType::Bool => (Some(Raw::Bool(i != 0)), q),
            Some(r) => (Some(r), q),
        },
    }
}

fn ms(t: &DateTime) -> Option<i64> {
    if t.is_null() { None } else { Some(t.as_chrono().timestamp_millis()) }
}

/// The timestamp of `dv` as configured, falling back to the server's and then to `now`.
pub fn timestamp_of(dv: &DataValue, choice: TimestampName, now: i64) -> i64 {
    let source = dv.source_timestamp.as_ref().and_then(ms);
    let server = dv.server_timestamp.as_ref().and_then(ms);
    match choice {
        TimestampName::Source => source.or(server).unwrap_or(now),
        TimestampName::Server => server.unwrap_or(now),
        TimestampName::Gateway => now,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_to_quality() {
        assert_eq!(quality_of(StatusCode::Good), Quality::GOOD);
        assert_eq!(quality_of(StatusCode::BadNodeIdUnknown), Quality(0x8034_0000));
        assert_eq!(quality_of(StatusCode::UncertainLastUsableValue), Quality::UNCERTAIN_LAST_USABLE);
        assert_eq!(quality_of(StatusCode::BadCommunicationError), Quality::BAD_COMMUNICATION_ERROR);
    }

    #[test]
    fn values() {
        let dv = |v: Variant, s: StatusCode| DataValue { value: Some(v), status: Some(s), ..Default::default() };
        assert_eq!(
            value_of(&dv(Variant::Double(2.5), StatusCode::Good), DataType::F64),
            (Some(Raw::Float(2.5)), Quality::GOOD)
        );
        assert_eq!(
            value_of(&dv(Variant::Int32(-3), StatusCode::Good), DataType::I64),
            (Some(Raw::Int(-3)), Quality::GOOD)
        );
        assert_eq!(
            value_of(&dv(Variant::Int32(1), StatusCode::Good), DataType::Bool),
            (Some(Raw::Bool(true)), Quality::GOOD)
        );
        assert_eq!(
            value_of(&dv(Variant::Double(1.0), StatusCode::UncertainLastUsableValue), DataType::F64),
            (Some(Raw::Float(1.0)), Quality::UNCERTAIN_LAST_USABLE)
        );
        assert_eq!(value_of(&dv(Variant::Double(1.0), StatusCode::BadSensorFailure), DataType::F64).0, None);
        assert_eq!(value_of(&dv(Variant::from("text"), StatusCode::Good), DataType::F64), (None, BAD_TYPE_MISMATCH));
        assert_eq!(
            value_of(&dv(Variant::Double(f64::NAN), StatusCode::Good), DataType::F64),
            (None, BAD_TYPE_MISMATCH)
        );
    }

    #[test]
    fn timestamps() {
        let t = DateTime::from(chrono_ms(1_700_000_000_123));
        let dv = DataValue { source_timestamp: Some(t), ..Default::default() };
        assert_eq!(timestamp_of(&dv, TimestampName::Source, 5), 1_700_000_000_123);
        assert_eq!(timestamp_of(&dv, TimestampName::Server, 5), 5);
        assert_eq!(timestamp_of(&dv, TimestampName::Gateway, 5), 5);
    }

    fn chrono_ms(ms: i64) -> opcua::types::DateTimeUtc {
        opcua::types::DateTimeUtc::from_timestamp_millis(ms).unwrap()
    }
}
