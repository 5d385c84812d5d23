//! Request planning: merging across small gaps, protocol limits, poll groups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vigil_edge::config::{self, Config, RegisterKind};

fn plant(points: &str, device_extra: &str) -> config::Plant {
    let text = format!(
        "[gateway]\nid = \"gw\"\nenterprise = \"e\"\nkey_file = \"/k\"\n[spool]\npath = \"/s\"\n\
         [[devices]]\nname = \"d\"\nprotocol = \"tcp\"\nhost = \"h\"\nmax_gap = 8\n{device_extra}\n{points}"
    );
    let c: Config = toml::from_str(&text).unwrap();
    config::resolve(c, Path::new("/virtual/gw.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn pt(id: &str, kind: &str, addr: u32, ty: &str, extra: &str) -> String {
    format!("[[devices.points]]\nid = \"{id}\"\nkind = \"{kind}\"\naddress = {addr}\ntype = \"{ty}\"\n{extra}")
}

fn reqs(p: &config::Plant) -> Vec<(RegisterKind, u16, u16, usize)> {
    p.devices[0].requests.iter().map(|r| (r.kind, r.start, r.count, r.points.len())).collect()
}

#[test]
fn near_points_merge_far_points_split() {
    let p = plant(
        &[pt("a", "holding", 0, "u16", ""), pt("b", "holding", 9, "f32", ""), pt("c", "holding", 20, "u16", "")]
            .concat(),
        "",
    );
    // a (0) and b (9..11): hole of 8 = max_gap -> merged; c at 20: hole of 9 -> new request
    assert_eq!(reqs(&p), vec![(RegisterKind::Holding, 0, 11, 2), (RegisterKind::Holding, 20, 1, 1)]);
}

#[test]
fn areas_and_poll_groups_never_mix() {
    let p = plant(
        &[
            pt("a", "holding", 0, "u16", ""),
            pt("b", "input", 1, "u16", ""),
            pt("c", "holding", 1, "u16", "poll_ms = 5000\n"),
            pt("d", "coil", 0, "bool", ""),
            pt("e", "discrete_input", 0, "bool", ""),
        ]
        .concat(),
        "",
    );
    let r = reqs(&p);
    assert_eq!(r.len(), 5, "{r:?}");
    let slow: Vec<_> = p.devices[0].requests.iter().filter(|r| r.poll.as_millis() == 5000).collect();
    assert_eq!(slow.len(), 1);
    assert_eq!((slow[0].start, slow[0].count), (1, 1));
}

#[test]
fn requests_respect_protocol_and_device_limits() {
    let regs: String = (0..130).map(|i| pt(&format!("r{i}"), "input", i, "u16", "")).collect();
    assert_eq!(reqs(&plant(&regs, "")), vec![(RegisterKind::Input, 0, 125, 125), (RegisterKind::Input, 125, 5, 5)]);
    // a device that takes at most 32 registers per read
    let r = reqs(&plant(&regs, "max_registers = 32\n"));
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|x| x.2 <= 32));
    // a 2-register value is never split across requests
    let f: String = (0..70).map(|i| pt(&format!("f{i}"), "holding", 2 * i, "f32", "")).collect();
    let r = reqs(&plant(&f, ""));
    assert_eq!(r, vec![(RegisterKind::Holding, 0, 124, 62), (RegisterKind::Holding, 124, 16, 8)]);
    let bits: String = (0..2001).map(|i| pt(&format!("c{i}"), "coil", i, "bool", "")).collect();
    assert_eq!(reqs(&plant(&bits, "")), vec![(RegisterKind::Coil, 0, 2000, 2000), (RegisterKind::Coil, 2000, 1, 1)]);
}
