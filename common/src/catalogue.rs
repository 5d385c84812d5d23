//! A gateway's point catalogue on `up/catalogue`: the devices and points its running configuration
//! defines (units, valid ranges, poll intervals, where each value is read), derived by the gateway
//! from the configuration it validated and signed like everything else. Central imports it as the
//! park's point metadata, so units and ranges are never typed in twice; it is retained, so central
//! also learns it after its own restart.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
use crate::point::{GatewayId, PointId};

/// Most devices one catalogue may list.
pub const MAX_DEVICES: usize = 4_096;
/// Most points one catalogue may list.
pub const MAX_POINTS: usize = 20_000;
/// Longest text field (device name, unit, address, profile), bytes.
pub const MAX_TEXT: usize = 256;

/// How a device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceProtocol {
    /// Modbus TCP.
    ModbusTcp,
    /// Modbus RTU on a serial bus.
    ModbusRtu,
    /// OPC UA (client subscriptions).
    OpcUa,
    /// Computed on the gateway from other points (a levelling line's settlements and rates).
    Derived,
}

impl DeviceProtocol {
    /// The name used in JSON and on screens.
    pub fn name(self) -> &'static str {
        match self {
            DeviceProtocol::ModbusTcp => "modbus_tcp",
            DeviceProtocol::ModbusRtu => "modbus_rtu",
            DeviceProtocol::OpcUa => "opcua",
            DeviceProtocol::Derived => "derived",
        }
    }
}

/// One device of the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device's name in the configuration (unique per gateway).
    pub name: String,
    /// How it is reached.
    pub protocol: DeviceProtocol,
    /// Where: `host:port unit N`, `<bus> unit N`, the OPC UA endpoint, or the levelling line.
    pub address: String,
    /// The register-map profile it uses, if any.
    pub profile: Option<String>,
}

/// One point of the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointEntry {
    /// Gateway-unique point id (central's key is `gateway/id`).
    pub id: PointId,
    /// Index of its device in [`PointCatalogue::devices`].
    pub device: u32,
    /// Engineering unit (empty: none configured).
    pub unit: String,
    /// Valid range `[low, high]` in engineering units; values outside it arrive marked uncertain.
    pub range: Option<[f64; 2]>,
    /// Poll interval (or OPC UA sampling interval), ms; 0 for points computed on change.
    pub poll_ms: u64,
    /// Deadband in engineering units (0: every change is reported).
    pub deadband: f64,
    /// Where the value is read on its device: `holding 40001 f32 ABCD`, an OPC UA node id, or what it
    /// is derived from.
    pub address: String,
}

/// A gateway's devices and points as its running configuration defines them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointCatalogue {
    /// The gateway.
    pub gateway: GatewayId,
    /// When the gateway made it, UTC ms.
    pub ts_ms: i64,
    /// SHA-256 of the configuration file it was derived from (the state's `config.sha256`).
    pub config_sha256: [u8; 32],
    /// Devices.
    pub devices: Vec<DeviceEntry>,
    /// Points, each naming one of `devices`.
    pub points: Vec<PointEntry>,
}

/// Why a catalogue was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    /// The envelope failed a check.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The payload is malformed.
    #[error("payload: {0}")]
    Payload(String),
    /// It names another gateway than the topic.
    #[error("catalogue names gateway {inside}, but arrived as {outside}")]
    GatewayMismatch {
        /// The gateway in the payload.
        inside: String,
        /// The gateway of the topic.
        outside: String,
    },
    /// Decoded, but breaks a rule of the catalogue; the text names the entry.
    #[error("{0}")]
    Invalid(String),
}

impl PointCatalogue {
    /// Checks the rules a decoder cannot: sizes, device references, unique names and ids, finite
    /// ranges with low <= high. Run by the sender before sealing and by every receiver.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let bad = |s: String| Err(CatalogueError::Invalid(s));
        if self.devices.len() > MAX_DEVICES {
            return bad(format!("{} devices, more than the {MAX_DEVICES} a catalogue may list", self.devices.len()));
        }
        if self.points.len() > MAX_POINTS {
            return bad(format!("{} points, more than the {MAX_POINTS} a catalogue may list", self.points.len()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.name.is_empty() || !names.insert(d.name.as_str()) {
                return bad(format!("devices[{i}]: name {:?} is empty or not unique", d.name));
            }
            for (field, text) in [
                ("name", d.name.as_str()),
                ("address", d.address.as_str()),
                ("profile", d.profile.as_deref().unwrap_or("")),
            ] {
                if text.len() > MAX_TEXT {
                    return bad(format!("devices[{i}].{field}: longer than {MAX_TEXT} bytes"));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, p) in self.points.iter().enumerate() {
            if !ids.insert(p.id.as_str()) {
                return bad(format!("points[{i}]: id {:?} listed twice", p.id.as_str()));
            }
            if p.device as usize >= self.devices.len() {
                return bad(format!("points[{i}] ({}): device {} does not exist", p.id.as_str(), p.device));
            }
            for (field, text) in [("unit", p.unit.as_str()), ("address", p.address.as_str())] {
                if text.len() > MAX_TEXT {
                    return bad(format!("points[{i}].{field} ({}): longer than {MAX_TEXT} bytes", p.id.as_str()));
                }
            }
            if let Some([lo, hi]) = p.range
                && !(lo.is_finite() && hi.is_finite() && lo <= hi)
            {
                return bad(format!("points[{i}].range ({}): [{lo}, {hi}] is not a finite low <= high", p.id.as_str()));
            }
            if !p.deadband.is_finite() || p.deadband < 0.0 {
                return bad(format!(
                    "points[{i}].deadband ({}): {} is not a finite value >= 0",
                    p.id.as_str(),
                    p.deadband
                ));
            }
        }
        Ok(())
    }

    /// Validates, encodes and signs with the gateway's key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, CatalogueError> {
        self.validate()?;
        let sealed = envelope::seal_message(Kind::Catalogue, self, key).map_err(CatalogueError::Payload)?;
        if sealed.len() > Kind::Catalogue.max_envelope_len() {
            return Err(CatalogueError::Invalid(format!(
                "the catalogue takes {} bytes sealed, more than the {} allowed",
                sealed.len(),
                Kind::Catalogue.max_envelope_len()
            )));
        }
        Ok(sealed)
    }

    /// Verifies with the gateway's key(s), decodes, checks it names `gateway`, and validates.
    pub fn open(
        bytes: &[u8],
        gateway: &GatewayId,
        key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
    ) -> Result<PointCatalogue, CatalogueError> {
        let verified = envelope::open(bytes, Kind::Catalogue, key_for)?;
        let catalogue: PointCatalogue = envelope::decode_exact(verified.payload).map_err(CatalogueError::Payload)?;
        if &catalogue.gateway != gateway {
            return Err(CatalogueError::GatewayMismatch {
                inside: catalogue.gateway.to_string(),
                outside: gateway.to_string(),
            });
        }
        catalogue.validate()?;
        Ok(catalogue)
    }
}

/// The catalogue as a document for people and files (JSON): what `vigil-edge catalogue` prints
/// and central's import takes. Points name their device; the hash is hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueDocument {
    /// The gateway.
    pub gateway: String,
    /// When it was made, UTC ms.
    pub ts_ms: i64,
    /// SHA-256 of the configuration file, 64 hex digits.
    pub config_sha256: String,
    /// Devices.
    pub devices: Vec<DocumentDevice>,
    /// Points.
    pub points: Vec<DocumentPoint>,
}

/// A device in a [`CatalogueDocument`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentDevice {
    /// Name.
    pub name: String,
    /// `modbus_tcp`, `modbus_rtu`, `opcua` or `derived`.
    pub protocol: String,
    /// Where it is reached.
    pub address: String,
    /// Register-map profile.
    #[serde(default)]
    pub profile: Option<String>,
}

/// A point in a [`CatalogueDocument`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentPoint {
    /// Point id.
    pub id: String,
    /// Its device's name.
    pub device: String,
    /// Engineering unit.
    #[serde(default)]
    pub unit: String,
    /// Valid range.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Poll interval, ms.
    #[serde(default)]
    pub poll_ms: u64,
    /// Deadband.
    #[serde(default)]
    pub deadband: f64,
    /// Where it is read.
    #[serde(default)]
    pub address: String,
}

impl From<&PointCatalogue> for CatalogueDocument {
    fn from(c: &PointCatalogue) -> CatalogueDocument {
        CatalogueDocument {
            gateway: c.gateway.to_string(),
            ts_ms: c.ts_ms,
            config_sha256: hex::encode(c.config_sha256),
            devices: c
                .devices
                .iter()
                .map(|d| DocumentDevice {
                    name: d.name.clone(),
                    protocol: d.protocol.name().to_owned(),
                    address: d.address.clone(),
                    profile: d.profile.clone(),
                })
                .collect(),
            points: c
                .points
                .iter()
                .map(|p| DocumentPoint {
                    id: p.id.to_string(),
                    device: c.devices.get(p.device as usize).map(|d| d.name.clone()).unwrap_or_default(),
                    unit: p.unit.clone(),
                    range: p.range,
                    poll_ms: p.poll_ms,
                    deadband: p.deadband,
                    address: p.address.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<CatalogueDocument> for PointCatalogue {
    type Error = CatalogueError;

    /// Resolves device names and checks every rule of [`PointCatalogue::validate`]; errors name the entry.
    fn try_from(d: CatalogueDocument) -> Result<PointCatalogue, CatalogueError> {
        let bad = |s: String| CatalogueError::Invalid(s);
        let gateway = GatewayId::new(&d.gateway).map_err(|e| bad(format!("gateway: {e}")))?;
        let sha = hex::decode(&d.config_sha256)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| bad(format!("config_sha256: {:?} is not 64 hex digits", d.config_sha256)))?;
        let mut devices = Vec::with_capacity(d.devices.len().min(MAX_DEVICES));
        for (i, dev) in d.devices.into_iter().enumerate() {
            let protocol = match dev.protocol.as_str() {
                "modbus_tcp" => DeviceProtocol::ModbusTcp,
                "modbus_rtu" => DeviceProtocol::ModbusRtu,
                "opcua" => DeviceProtocol::OpcUa,
                "derived" => DeviceProtocol::Derived,
                other => {
                    return Err(bad(format!(
                        "devices[{i}].protocol: {other:?} is not modbus_tcp, modbus_rtu, opcua or derived"
                    )));
                }
            };
            devices.push(DeviceEntry { name: dev.name, protocol, address: dev.address, profile: dev.profile });
        }
        let index: std::collections::HashMap<&str, u32> =
            devices.iter().enumerate().map(|(i, dev)| (dev.name.as_str(), i as u32)).collect();
        let mut points = Vec::with_capacity(d.points.len().min(MAX_POINTS));
        for (i, p) in d.points.into_iter().enumerate() {
            let id = PointId::new(&p.id).map_err(|e| bad(format!("points[{i}].id: {e}")))?;
            let device = *index
                .get(p.device.as_str())
                .ok_or_else(|| bad(format!("points[{i}] ({}): device {:?} is not listed", p.id, p.device)))?;
            points.push(PointEntry {
                id,
                device,
                unit: p.unit,
                range: p.range,
                poll_ms: p.poll_ms,
                deadband: p.deadband,
                address: p.address,
            });
        }
        let c = PointCatalogue { gateway, ts_ms: d.ts_ms, config_sha256: sha, devices, points };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(points: usize) -> PointCatalogue {
        PointCatalogue {
            gateway: GatewayId::new("gw-1").unwrap(),
            ts_ms: 1_700_000_000_000,
            config_sha256: [7; 32],
            devices: vec![
                DeviceEntry {
                    name: "tank-gauges".into(),
                    protocol: DeviceProtocol::ModbusTcp,
                    address: "10.0.0.5:502 unit 1".into(),
                    profile: Some("radar-gauge".into()),
                },
                DeviceEntry {
                    name: "line-a".into(),
                    protocol: DeviceProtocol::Derived,
                    address: "levelling line-a".into(),
                    profile: None,
                },
            ],
            points: (0..points)
                .map(|i| PointEntry {
                    id: PointId::new(format!("TK{i}.LT")).unwrap(),
                    device: (i % 2) as u32,
                    unit: "m".into(),
                    range: Some([0.0, 20.0]),
                    poll_ms: 1000,
                    deadband: 0.01,
                    address: format!("holding {} f32 ABCD", 40001 + 2 * i),
                })
                .collect(),
        }
    }

    #[test]
    fn seals_and_opens_with_the_gateway_key_only() {
        let key = SigningKey::from_seed(&[1; 32]);
        let other = SigningKey::from_seed(&[2; 32]);
        let c = sample(3);
        let sealed = c.seal(&key).unwrap();
        let gw = GatewayId::new("gw-1").unwrap();
        assert_eq!(PointCatalogue::open(&sealed, &gw, |_| Some(key.public_key())).unwrap(), c);
        assert!(matches!(
            PointCatalogue::open(&sealed, &gw, |_| Some(other.public_key())),
            Err(CatalogueError::Envelope(_))
        ));
        let elsewhere = GatewayId::new("gw-2").unwrap();
        assert!(matches!(
            PointCatalogue::open(&sealed, &elsewhere, |_| Some(key.public_key())),
            Err(CatalogueError::GatewayMismatch { .. })
        ));
        // A state envelope is not a catalogue, whatever it carries.
        let as_state = envelope::seal_message(Kind::State, &c, &key).unwrap();
        assert!(matches!(
            PointCatalogue::open(&as_state, &gw, |_| Some(key.public_key())),
            Err(CatalogueError::Envelope(EnvelopeError::WrongKind { .. }))
        ));
    }

    #[test]
    fn refuses_dangling_devices_duplicates_and_bad_ranges() {
        let key = SigningKey::from_seed(&[1; 32]);
        let mut c = sample(2);
        c.points[1].device = 9;
        let e = c.seal(&key).unwrap_err().to_string();
        assert!(e.contains("points[1]") && e.contains("device 9"), "{e}");

        let mut c = sample(2);
        c.points[1].id = c.points[0].id.clone();
        assert!(c.validate().unwrap_err().to_string().contains("listed twice"));

        let mut c = sample(2);
        c.devices[1].name = c.devices[0].name.clone();
        assert!(c.validate().unwrap_err().to_string().contains("not unique"));

        for range in [[5.0, 1.0], [f64::NAN, 1.0], [0.0, f64::INFINITY]] {
            let mut c = sample(1);
            c.points[0].range = Some(range);
            assert!(c.validate().unwrap_err().to_string().contains("points[0].range"), "{range:?}");
        }

        // A signed but invalid catalogue is refused by the receiver too.
        let mut c = sample(2);
        c.points[0].deadband = -1.0;
        let sealed = envelope::seal_message(Kind::Catalogue, &c, &key).unwrap();
        let gw = GatewayId::new("gw-1").unwrap();
        assert!(matches!(
            PointCatalogue::open(&sealed, &gw, |_| Some(key.public_key())),
            Err(CatalogueError::Invalid(_))
        ));
    }

    #[test]
    fn a_large_gateway_fits_and_an_oversized_one_is_refused_before_sending() {
        let key = SigningKey::from_seed(&[1; 32]);
        let c = sample(MAX_POINTS);
        let sealed = c.seal(&key).unwrap();
        assert!(sealed.len() <= Kind::Catalogue.max_envelope_len());
        let c = sample(MAX_POINTS + 1);
        assert!(c.seal(&key).unwrap_err().to_string().contains("more than the 20000"));
    }

    #[test]
    fn the_document_form_round_trips_and_names_bad_entries() {
        let c = sample(5);
        let doc = CatalogueDocument::from(&c);
        assert_eq!(doc.points[1].device, "line-a");
        assert_eq!(PointCatalogue::try_from(doc.clone()).unwrap(), c);

        let mut d = doc.clone();
        d.points[3].device = "nowhere".into();
        let e = PointCatalogue::try_from(d).unwrap_err().to_string();
        assert!(e.contains("points[3]") && e.contains("\"nowhere\""), "{e}");

        let mut d = doc.clone();
        d.devices[0].protocol = "bacnet".into();
        assert!(PointCatalogue::try_from(d).unwrap_err().to_string().contains("devices[0].protocol"));

        let mut d = doc;
        d.config_sha256 = "abc".into();
        assert!(PointCatalogue::try_from(d).unwrap_err().to_string().contains("config_sha256"));
    }

    proptest! {
        #[test]
        fn arbitrary_signed_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let key = SigningKey::from_seed(&[3; 32]);
            let sealed = envelope::seal(Kind::Catalogue, &payload, &key);
            let gw = GatewayId::new("gw-1").unwrap();
            let _ = PointCatalogue::open(&sealed, &gw, |_| Some(key.public_key()));
        }

        #[test]
        fn round_trips(n in 0usize..40, unit in "[a-zA-Z/%°·³]{0,12}", lo in -1e6f64..1e6, span in 0f64..1e6) {
            let key = SigningKey::from_seed(&[4; 32]);
            let mut c = sample(n);
            for p in &mut c.points {
                p.unit = unit.clone();
                p.range = Some([lo, lo + span]);
            }
            let sealed = c.seal(&key).unwrap();
            let gw = GatewayId::new("gw-1").unwrap();
            prop_assert_eq!(PointCatalogue::open(&sealed, &gw, |_| Some(key.public_key())).unwrap(), c);
        }
    }
}
