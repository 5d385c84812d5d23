//! Identities (enterprise, gateway, point) and the sample: a value at a source time, with its quality
//! and the quality of its clock.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier (enterprise, gateway or point key) in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest text value a sample may carry, in bytes.
pub const MAX_TEXT_LEN: usize = 256;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The identifier is longer than [`MAX_ID_LEN`].
    #[error("{what} {value:?} is {len} bytes long, at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// The start of the refused value.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The identifier holds a character outside its allowed set.
    #[error("{what} {value:?} contains {ch:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// Which kind of identifier.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// A description of the allowed set.
        allowed: &'static str,
    },
}

fn check_id(what: &'static str, s: &str, extra: &[char], allowed: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { what, value: s.chars().take(MAX_ID_LEN).collect(), len: s.len() });
    }
    if let Some((at, ch)) =
        s.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c)))
    {
        return Err(IdError::BadChar { what, value: s.to_owned(), ch, at, allowed });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal, $extra:expr, $allowed:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id($what, &s, $extra, $allowed)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// An enterprise (plant operator) in the park; a level of the MQTT topic.
    EnterpriseId, "enterprise id", &[], "ASCII letters, digits, '-' and '_'"
);
identifier!(
    /// A gateway; equals the common name of its client certificate and a level of the MQTT topic.
    GatewayId, "gateway id", &[], "ASCII letters, digits, '-' and '_'"
);
identifier!(
    /// A point's key, unique within its gateway (for example `TK101.LT` or `GDS03.CH07`).
    /// A point's full identity is (gateway, key).
    PointId, "point id", &['.', ':', '/'], "ASCII letters, digits, '-', '_', '.', ':' and '/'"
);

/// A point's value at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// An analog measurement in engineering units.
    F64(f64),
    /// A counter or integer register.
    I64(i64),
    /// A digital state.
    Bool(bool),
    /// A short text (at most [`MAX_TEXT_LEN`] bytes), for example a device state name.
    Text(String),
}

impl Value {
    /// The value as a float, where that is meaningful (booleans are 0 or 1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::I64(v) => Some(*v as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Text(_) => None,
        }
    }
}

/// Quality of a sample, as an OPC UA status code (Part 4, 7.39): the top two bits give the severity
/// (good 00, uncertain 01, bad 10), the next 14 bits the reason. Sources that are not OPC UA map their
/// faults onto the same codes so that every consumer reads one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quality(pub u32);

/// The severity part of a [`Quality`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The value can be used.
    Good,
    /// The value may be used with care.
    Uncertain,
    /// The value must not be used.
    Bad,
}

impl Quality {
    /// Good.
    pub const GOOD: Quality = Quality(0x0000_0000);
    /// Good, but the value was clamped to the instrument's range.
    pub const GOOD_CLAMPED: Quality = Quality(0x0030_0000);
    /// Uncertain, no specific reason.
    pub const UNCERTAIN: Quality = Quality(0x4000_0000);
    /// Uncertain: communication failed, this is the last usable value.
    pub const UNCERTAIN_NO_COMMUNICATION_LAST_USABLE: Quality = Quality(0x408F_0000);
    /// Uncertain: the last usable value, its source stopped updating it.
    pub const UNCERTAIN_LAST_USABLE: Quality = Quality(0x4090_0000);
    /// Uncertain: the sensor is known to be inaccurate (for example outside calibration).
    pub const UNCERTAIN_SENSOR_NOT_ACCURATE: Quality = Quality(0x4093_0000);
    /// Uncertain: the value is outside the configured engineering range.
    pub const UNCERTAIN_EU_EXCEEDED: Quality = Quality(0x4094_0000);
    /// Bad, no specific reason.
    pub const BAD: Quality = Quality(0x8000_0000);
    /// Bad: communication with the device failed.
    pub const BAD_COMMUNICATION_ERROR: Quality = Quality(0x8005_0000);
    /// Bad: the device did not answer in time.
    pub const BAD_TIMEOUT: Quality = Quality(0x800A_0000);
    /// Bad: the device's reply could not be decoded (exception, garbage, wrong length).
    pub const BAD_DECODING_ERROR: Quality = Quality(0x8007_0000);
    /// Bad: the point is configured in a way the device rejects.
    pub const BAD_CONFIGURATION_ERROR: Quality = Quality(0x8089_0000);
    /// Bad: no connection to the device.
    pub const BAD_NOT_CONNECTED: Quality = Quality(0x808A_0000);
    /// Bad: the device reports a failure.
    pub const BAD_DEVICE_FAILURE: Quality = Quality(0x808B_0000);
    /// Bad: the sensor reports a failure (open loop, short, out of range signal).
    pub const BAD_SENSOR_FAILURE: Quality = Quality(0x808C_0000);
    /// Bad: the point or device is out of service.
    pub const BAD_OUT_OF_SERVICE: Quality = Quality(0x808D_0000);
    /// Bad: the value is outside what the data type or the instrument can represent.
    pub const BAD_OUT_OF_RANGE: Quality = Quality(0x803C_0000);

    /// The severity encoded in the top two bits (11, reserved, reads as bad).
    pub fn severity(self) -> Severity {
        match self.0 >> 30 {
            0 => Severity::Good,
            1 => Severity::Uncertain,
            _ => Severity::Bad,
        }
    }

    /// True when the value can be used without reservation.
    pub fn is_good(self) -> bool {
        self.severity() == Severity::Good
    }

    /// The OPC UA symbolic name of well-known codes.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Quality::GOOD => "Good",
            Quality::GOOD_CLAMPED => "GoodClamped",
            Quality::UNCERTAIN => "Uncertain",
            Quality::UNCERTAIN_NO_COMMUNICATION_LAST_USABLE => "UncertainNoCommunicationLastUsableValue",
            Quality::UNCERTAIN_LAST_USABLE => "UncertainLastUsableValue",
            Quality::UNCERTAIN_SENSOR_NOT_ACCURATE => "UncertainSensorNotAccurate",
            Quality::UNCERTAIN_EU_EXCEEDED => "UncertainEngineeringUnitsExceeded",
            Quality::BAD => "Bad",
            Quality::BAD_COMMUNICATION_ERROR => "BadCommunicationError",
            Quality::BAD_TIMEOUT => "BadTimeout",
            Quality::BAD_DECODING_ERROR => "BadDecodingError",
            Quality::BAD_CONFIGURATION_ERROR => "BadConfigurationError",
            Quality::BAD_NOT_CONNECTED => "BadNotConnected",
            Quality::BAD_DEVICE_FAILURE => "BadDeviceFailure",
            Quality::BAD_SENSOR_FAILURE => "BadSensorFailure",
            Quality::BAD_OUT_OF_SERVICE => "BadOutOfService",
            Quality::BAD_OUT_OF_RANGE => "BadOutOfRange",
            _ => return None,
        })
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:?}(0x{:08X})", self.severity(), self.0),
        }
    }
}

/// Where a timestamp came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeSource {
    /// The device stamped the value itself (OPC UA source timestamp, camera event time).
    Device,
    /// The gateway stamped the value when the reply arrived.
    Gateway,
    /// The gateway stamped it with a clock disciplined by NTP.
    Ntp,
}

/// How far a timestamp can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClockQuality {
    /// True when the stamping clock was known to be synchronised to the park's network time.
    pub synchronised: bool,
    /// Who stamped it.
    pub source: TimeSource,
}

impl ClockQuality {
    /// Stamped by the gateway with an NTP-synchronised clock: the common case.
    pub const NTP_SYNCED: ClockQuality = ClockQuality { synchronised: true, source: TimeSource::Ntp };

    /// A compact 3-bit code: bit 2 synchronised, bits 0..2 the source (0 device, 1 gateway, 2 NTP).
    pub fn code(self) -> u8 {
        let source = match self.source {
            TimeSource::Device => 0,
            TimeSource::Gateway => 1,
            TimeSource::Ntp => 2,
        };
        (u8::from(self.synchronised) << 2) | source
    }

    /// The inverse of [`ClockQuality::code`]; `None` for codes that mean nothing.
    pub fn from_code(code: u8) -> Option<ClockQuality> {
        let source = match code & 0b11 {
            0 => TimeSource::Device,
            1 => TimeSource::Gateway,
            2 => TimeSource::Ntp,
            _ => return None,
        };
        if code > 0b111 {
            return None;
        }
        Some(ClockQuality { synchronised: code & 0b100 != 0, source })
    }
}

/// One reading of one point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Source timestamp, UTC milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value.
    pub value: Value,
    /// Quality of the value.
    pub quality: Quality,
    /// Quality of the timestamp.
    pub clock: ClockQuality,
}

impl Sample {
    /// A good analog reading stamped by an NTP-synchronised gateway.
    pub fn good(ts_ms: i64, value: f64) -> Sample {
        Sample { ts_ms, value: Value::F64(value), quality: Quality::GOOD, clock: ClockQuality::NTP_SYNCED }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_with_a_clear_reason() {
        assert!(GatewayId::new("gw-01_a").is_ok());
        assert_eq!(GatewayId::new(""), Err(IdError::Empty { what: "gateway id" }));
        let e = GatewayId::new("gw/01").unwrap_err();
        assert!(e.to_string().contains("'/' at byte 2"), "{e}");
        assert!(PointId::new("TK101.LT/pv:1").is_ok());
        assert!(PointId::new("TK 101").is_err());
        assert!(matches!(EnterpriseId::new("x".repeat(65)), Err(IdError::TooLong { len: 65, .. })));
    }

    #[test]
    fn deserialising_an_identifier_validates_it() {
        let bytes = postcard::to_allocvec(&"bad id").unwrap();
        assert!(postcard::from_bytes::<PointId>(&bytes).is_err());
    }

    #[test]
    fn quality_severity_follows_the_top_bits() {
        assert_eq!(Quality::GOOD.severity(), Severity::Good);
        assert_eq!(Quality::UNCERTAIN_LAST_USABLE.severity(), Severity::Uncertain);
        assert_eq!(Quality::BAD_TIMEOUT.severity(), Severity::Bad);
        assert_eq!(Quality(0xC000_0000).severity(), Severity::Bad);
        assert_eq!(Quality::BAD_TIMEOUT.to_string(), "BadTimeout");
        assert_eq!(Quality(0x8123_0000).to_string(), "Bad(0x81230000)");
    }

    #[test]
    fn clock_quality_codes_round_trip() {
        for code in 0u8..=255 {
            if let Some(c) = ClockQuality::from_code(code) {
                assert_eq!(c.code(), code);
            }
        }
        assert_eq!(ClockQuality::from_code(ClockQuality::NTP_SYNCED.code()), Some(ClockQuality::NTP_SYNCED));
    }
}
