//! Every data type and byte order, read from the simulator over a real TCP socket and over a real
//! serial pseudo-terminal, decodes to the value the simulator encoded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use vigil_common::{Quality, Value};
use vigil_edge::Record;
use vigil_edge::sources::{Metrics, read_once};
use vigil_tools::sim::Sim;
use vigil_tools::sim::rtu::RtuBus;

/// (id, kind, type, order, extra keys, simulated engineering value, expected value)
type Case = (String, &'static str, &'static str, Option<&'static str>, &'static str, f64, Value);

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for o in ["AB", "BA"] {
        v.push((format!("u16_{o}"), "holding", "u16", Some(o), "", 54321.0, Value::I64(54321)));
        v.push((format!("i16_{o}"), "input", "i16", Some(o), "", -1234.0, Value::I64(-1234)));
    }
    for o in ["ABCD", "CDAB", "BADC", "DCBA"] {
        v.push((format!("u32_{o}"), "holding", "u32", Some(o), "", 3_000_000_000.0, Value::I64(3_000_000_000)));
        v.push((format!("i32_{o}"), "input", "i32", Some(o), "", -123_456_789.0, Value::I64(-123_456_789)));
        v.push((format!("f32_{o}"), "holding", "f32", Some(o), "", 1234.5, Value::F64(1234.5)));
        v.push((
            format!("u64_{o}"),
            "input",
            "u64",
            Some(o),
            "",
            4_503_599_627_370_497.0,
            Value::I64(4_503_599_627_370_497),
        ));
        v.push((
            format!("i64_{o}"),
            "holding",
            "i64",
            Some(o),
            "",
            -4_503_599_627_370_497.0,
            Value::I64(-4_503_599_627_370_497),
        ));
        v.push((format!("f64_{o}"), "input", "f64", Some(o), "", -98765.4321, Value::F64(-98765.4321)));
    }
    v.push(("bit5".into(), "holding", "bool", None, "bit = 5\n", 1.0, Value::Bool(true)));
    v.push(("bit6".into(), "holding", "bool", None, "bit = 6\n", 0.0, Value::Bool(false)));
    v.push(("scaled".into(), "input", "i16", None, "scale = 0.1\noffset = -10.0\n", 12.3, Value::F64(12.3)));
    v.push(("coil".into(), "coil", "bool", None, "", 1.0, Value::Bool(true)));
    v.push(("di".into(), "discrete_input", "bool", None, "", 1.0, Value::Bool(true)));
    v
}

fn device_body(head: &str) -> String {
    let mut s = format!("[[devices]]\n{head}\nname = \"dut\"\nunit = 7\ntimeout_ms = 500\nmax_gap = 4\n");
    let mut next = std::collections::HashMap::new();
    for (id, kind, ty, order, extra, value, _) in cases() {
        let regs = match ty {
            "u16" | "i16" | "bool" => 1,
            "u32" | "i32" | "f32" => 2,
            _ => 4,
        };
        // the two bools share register 500
        let addr = if ty == "bool" && kind == "holding" {
            500
        } else {
            let a = next.entry(kind).or_insert(0u32);
            let at = *a;
            *a += regs;
            at
        };
        s += &format!(
            "[[devices.points]]\nid = \"{id}\"\nkind = \"{kind}\"\naddress = {addr}\ntype = \"{ty}\"\n{extra}sim = \"const {value}\"\n"
        );
        if let Some(o) = order {
            s += &format!("order = \"{o}\"\n");
        }
    }
    s
}

fn check(records: &[Record]) {
    let mut seen = 0;
    for (id, .., expected) in cases() {
        let full = format!("dut.{id}");
        let sample = records
            .iter()
            .find_map(|r| match r {
                Record::Sample { point, sample } if point.as_str() == full => Some(sample),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no sample for {full}"));
        assert_eq!(sample.quality, Quality::GOOD, "{full}");
        assert_eq!(sample.value, expected, "{full}");
        seen += 1;
    }
    assert_eq!(seen, cases().len());
}

#[tokio::test]
async fn every_type_and_order_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let plant =
        common::plant(dir.path(), &device_body(&format!("protocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}")));
    // several requests: holding, input, coil, discrete input, and the bit register beyond max_gap
    assert!(plant.devices[0].requests.len() >= 5, "{:?}", plant.devices[0].requests);
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0]);
    let _stop = common::serve_tcp(l, sim);
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    check(&records);
}

#[tokio::test]
async fn every_type_and_order_over_rtu_pty() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new();
    let bus = RtuBus::spawn(sim.clone()).unwrap();
    let body = format!(
        "[[buses]]\nname = \"b1\"\npath = {:?}\nbaud = 19200\n\n{}",
        bus.path.display().to_string(),
        device_body("protocol = \"rtu\"\nbus = \"b1\"")
    );
    let plant = common::plant(dir.path(), &body);
    common::fill(&sim, &plant, &[0]);
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    check(&records);
    assert_eq!(bus.bad_frames.load(std::sync::atomic::Ordering::Relaxed), 0, "the agent sent only valid frames");
}
