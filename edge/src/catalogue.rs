//! The gateway's point catalogue: every device and point of a validated configuration, with units,
//! ranges and where each value is read, as central imports it (`up/catalogue`) and as
//! `vigil-edge catalogue` prints it for a technician working offline.

use vigil_common::catalogue::{DeviceEntry, DeviceProtocol, PointCatalogue, PointEntry};

use crate::config::{Plant, PointSpec, Transport};
use crate::sources::system;

/// The catalogue of `plant`, whose configuration file hashes to `config_sha256`, made at `ts_ms`.
pub fn of(plant: &Plant, config_sha256: [u8; 32], ts_ms: i64) -> PointCatalogue {
    let mut devices: Vec<DeviceEntry> = plant
        .devices
        .iter()
        .map(|d| {
            let (protocol, address) = match &d.transport {
                Transport::Tcp { host, port } => (DeviceProtocol::ModbusTcp, format!("{host}:{port} unit {}", d.unit)),
                Transport::Rtu { bus } => {
                    let bus = plant.buses.get(*bus).map_or("?", |b| b.name.as_str());
                    (DeviceProtocol::ModbusRtu, format!("{bus} unit {}", d.unit))
                }
                Transport::Opcua { index } => {
                    (DeviceProtocol::OpcUa, plant.opcua.get(*index).map(|o| o.endpoint.clone()).unwrap_or_default())
                }
            };
            DeviceEntry { name: d.name.clone(), protocol, address, profile: d.profile.clone() }
        })
        .collect();
    let mut points: Vec<PointEntry> = plant.points.iter().enumerate().map(|(i, p)| read_point(plant, i, p)).collect();
    let own = devices.len() as u32;
    devices.push(DeviceEntry {
        name: unique_name(&devices, "gateway"),
        protocol: DeviceProtocol::Derived,
        address: "the gateway itself".to_owned(),
        profile: None,
    });
    for (id, unit) in system::POINTS.iter().zip(system::UNITS) {
        if let Ok(id) = vigil_common::PointId::new(*id) {
            points.push(PointEntry {
                id,
                device: own,
                unit: unit.to_owned(),
                range: None,
                poll_ms: plant.config.system.interval_ms,
                deadband: 0.0,
                address: "gateway health".to_owned(),
            });
        }
    }
    for line in &plant.levelling {
        let device = devices.len() as u32;
        devices.push(DeviceEntry {
            name: unique_name(&devices, &line.name),
            protocol: DeviceProtocol::Derived,
            address: format!("levelling line {}", line.name),
            profile: None,
        });
        let base = plant.points.get(line.base).map_or("?", |p| p.id.as_str());
        for m in &line.points {
            let reading = plant.points.get(m.point).map_or("?", |p| p.id.as_str());
            let derived = |id: &vigil_common::PointId, unit: &str, what: &str| PointEntry {
                id: id.clone(),
                device,
                unit: unit.to_owned(),
                range: None,
                poll_ms: 0,
                deadband: 0.0,
                address: format!("{what} of {reading} against base {base}"),
            };
            points.push(derived(&m.settlement_id, "mm", "settlement"));
            points.push(derived(&m.rate_id, "mm/d", "settlement rate"));
        }
    }
    PointCatalogue { gateway: plant.config.gateway.id.clone(), ts_ms, config_sha256, devices, points }
}

/// A levelling line may share its name with a device (so may `gateway`); catalogue names are unique.
fn unique_name(devices: &[DeviceEntry], name: &str) -> String {
    if devices.iter().any(|d| d.name == name) { format!("{name} (levelling)") } else { name.to_owned() }
}

fn read_point(plant: &Plant, index: usize, p: &PointSpec) -> PointEntry {
    let opcua_node = plant.devices.get(p.device).and_then(|d| match d.transport {
        Transport::Opcua { index: o } => plant.opcua.get(o)?.items.iter().find(|it| it.point == index),
        _ => None,
    });
    let address = match opcua_node {
        Some(item) => item.node.to_string(),
        None => {
            let mut a = format!("{} {} {}", p.kind.name(), p.address, p.dtype.name());
            if p.width() > 1 {
                a.push_str(&format!(" {:?}", p.order));
            }
            if let Some(bit) = p.bit {
                a.push_str(&format!(" bit {bit}"));
            }
            a
        }
    };
    PointEntry {
        id: p.id.clone(),
        device: p.device as u32,
        unit: p.unit.clone(),
        range: p.range,
        poll_ms: u64::try_from(p.poll.as_millis()).unwrap_or(u64::MAX),
        deadband: p.deadband,
        address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[gateway]
id = "gw-cat"
enterprise = "ent-a"
key_file = "/tmp/gw-cat.key"

[spool]
path = "/tmp/vigil-catalogue-test-spool"

[system]
interval_ms = 5000

[[buses]]
name = "rs485-1"
path = "/dev/null"

[[devices]]
name = "tanks"
protocol = "tcp"
host = "127.0.0.1"
port = 1502
unit = 1
point_prefix = "TK101."
points = [
  { id = "LT", kind = "holding", address = 0, type = "f32", unit = "m", range = [0.0, 20.0], deadband = 0.01 },
  { id = "HS", kind = "coil", address = 3 },
]

[[devices]]
name = "level-sensors"
protocol = "rtu"
bus = "rs485-1"
unit = 7
point_prefix = "JC1."
points = [
  { id = "base", kind = "input", address = 0, type = "i32", scale = 0.01, unit = "mm" },
  { id = "p1", kind = "input", address = 2, type = "i32", scale = 0.01, unit = "mm" },
]

[[levelling]]
name = "gallery-a"
base = "JC1.base"
base_initial_mm = 100.0
points = [ { point = "JC1.p1", initial_mm = 80.0 } ]
"#;

    #[test]
    fn lists_every_device_and_point_with_units_ranges_and_addresses() {
        let plant = match crate::config::load_text(CONFIG, Path::new("/tmp/gw-cat.toml")) {
            Ok(p) => p,
            Err(e) => panic!("test config invalid: {e}"),
        };
        let c = of(&plant, [1; 32], 42);
        c.validate().unwrap();
        assert_eq!(c.gateway.as_str(), "gw-cat");
        let names: Vec<_> = c.devices.iter().map(|d| (d.name.as_str(), d.protocol, d.address.as_str())).collect();
        assert_eq!(
            names,
            [
                ("tanks", DeviceProtocol::ModbusTcp, "127.0.0.1:1502 unit 1"),
                ("level-sensors", DeviceProtocol::ModbusRtu, "rs485-1 unit 7"),
                ("gateway", DeviceProtocol::Derived, "the gateway itself"),
                ("gallery-a", DeviceProtocol::Derived, "levelling line gallery-a"),
            ]
        );
        let lt = c.points.iter().find(|p| p.id.as_str() == "TK101.LT").unwrap();
        assert_eq!((lt.unit.as_str(), lt.range, lt.deadband, lt.device), ("m", Some([0.0, 20.0]), 0.01, 0));
        assert!(lt.address.starts_with("holding 0 f32"), "{}", lt.address);
        let ids: Vec<_> = c.points.iter().map(|p| p.id.as_str()).collect();
        assert!(ids.contains(&"JC1.p1:settlement") && ids.contains(&"JC1.p1:rate"), "{ids:?}");
        let rate = c.points.iter().find(|p| p.id.as_str() == "JC1.p1:rate").unwrap();
        assert_eq!((rate.unit.as_str(), rate.device), ("mm/d", 3));
        let uptime = c.points.iter().find(|p| p.id.as_str() == "gateway.uptime_s").unwrap();
        assert_eq!((uptime.unit.as_str(), uptime.device, uptime.poll_ms), ("s", 2, 5000));
        assert!(rate.address.contains("JC1.p1") && rate.address.contains("JC1.base"), "{}", rate.address);
    }
}
