//! Configuration validation: every problem names the file, the key path and the problem, and the
//! shipped example and profiles are valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vigil_edge::config::{self, ConfigError};

const HEADER: &str = r#"
[gateway]
id = "gw-test"
enterprise = "ent-test"
key_file = "/tmp/k"

[spool]
path = "/tmp/s"

[acquisition]
profile_dir = "profiles"
"#;

fn write(dir: &Path, body: &str) -> PathBuf {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/profiles")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), profiles.join(e.file_name())).unwrap();
    }
    let f = dir.join("gw.toml");
    std::fs::write(&f, format!("{HEADER}\n{body}")).unwrap();
    f
}

fn errors(body: &str) -> (PathBuf, Vec<ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), body);
    let e = config::load(&f).expect_err("config must be rejected").0;
    (f, e)
}

/// Asserts that one of the errors is at `key` and mentions `problem`, and that it names the file.
fn assert_error(body: &str, key: &str, problem: &str) {
    let (_, errs) = errors(body);
    assert!(
        errs.iter().any(|e| e.key == key && e.problem.contains(problem) && e.file.ends_with(".toml")),
        "expected {key}: ...{problem}... in {errs:#?}"
    );
}

const DEV: &str = "[[devices]]\nname = \"d\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\n";

#[test]
fn shipped_example_and_profiles_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plant = config::load(&root.join("configs/examples/gateway-modbus.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plant.devices.len(), 5);
    assert_eq!(plant.levelling.len(), 1);
    // the 8-channel controller's 32 points (1-based in the profile) are read in one request from 0
    let gds = &plant.devices[0];
    assert_eq!(gds.points.len(), 32);
    assert_eq!(gds.requests.len(), 1);
    assert_eq!((gds.requests[0].start, gds.requests[0].count), (0, 24));
    // the inline point given 1-based (101) is protocol address 100
    let fw = plant.point_index("TK101.firmware").unwrap();
    assert_eq!(plant.points[fw].address, 100);
}

#[test]
fn duplicate_point_id() {
    assert_error(
        &format!(
            "{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 0\n[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 5\n"
        ),
        "devices[0].points[1].id",
        "duplicate point id \"d.a\"",
    );
}

#[test]
fn overlapping_points() {
    assert_error(
        &format!(
            "{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 0\ntype = \"f32\"\n[[devices.points]]\nid = \"b\"\nkind = \"holding\"\naddress = 1\n"
        ),
        "devices[0]",
        "overlap",
    );
}

#[test]
fn bits_of_one_register_may_share_it_but_not_a_bit() {
    let ok = format!(
        "{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 0\ntype = \"bool\"\nbit = 0\n[[devices.points]]\nid = \"b\"\nkind = \"holding\"\naddress = 0\ntype = \"bool\"\nbit = 1\n"
    );
    let dir = tempfile::tempdir().unwrap();
    config::load(&write(dir.path(), &ok)).unwrap();
    assert_error(&ok.replace("bit = 1", "bit = 0"), "devices[0]", "same bit");
}

#[test]
fn impossible_address_type_combinations() {
    assert_error(
        &format!("{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 65534\ntype = \"f64\"\n"),
        "devices[0].points[0].address",
        "runs past",
    );
    assert_error(
        &format!("{DEV}[[devices.points]]\nid = \"a\"\nkind = \"coil\"\naddress = 1\ntype = \"u16\"\n"),
        "devices[0].points[0].type",
        "single bits",
    );
    assert_error(
        &format!(
            "{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 1\ntype = \"u16\"\norder = \"CDAB\"\n"
        ),
        "devices[0].points[0].order",
        "does not fit u16",
    );
    assert_error(
        &format!(
            "{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 1\ntype = \"f32\"\norder = \"BA\"\n"
        ),
        "devices[0].points[0].order",
        "does not fit f32",
    );
    assert_error(
        &format!("{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 1\ntype = \"bool\"\n"),
        "devices[0].points[0].bit",
        "needs bit",
    );
    assert_error(
        &format!("{DEV}[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 1\ntype = \"bool\"\nbit = 16\n"),
        "devices[0].points[0].bit",
        "outside",
    );
    assert_error(
        &format!("{DEV}address_base = 1\n[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 0\n"),
        "devices[0].points[0].address",
        "address_base = 1",
    );
}

#[test]
fn unknown_profile_and_bad_point_id() {
    assert_error(
        &format!("{DEV}profile = \"no-such-device\"\n"),
        "devices[0].profile",
        "unknown profile \"no-such-device\"",
    );
    assert_error(
        &format!("{DEV}[[devices.points]]\nid = \"a b\"\nkind = \"holding\"\naddress = 0\n"),
        "devices[0].points[0].id",
        "' '",
    );
}

#[test]
fn unknown_keys_name_the_line() {
    let (f, errs) = errors(&format!("{DEV}adress = 5\n"));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].file, f.display().to_string());
    assert!(errs[0].key.starts_with("line "), "{errs:?}");
    assert!(errs[0].problem.contains("unknown field `adress`"), "{errs:?}");
}

#[test]
fn buses_and_rtu_units() {
    let bus = "[[buses]]\nname = \"b\"\npath = \"/dev/ttyS9\"\nbaud = 9600\n";
    let pt = "[[devices.points]]\nid = \"a\"\nkind = \"input\"\naddress = 0\n";
    assert_error(
        &format!("{bus}[[devices]]\nname = \"x\"\nprotocol = \"rtu\"\nbus = \"nope\"\n{pt}"),
        "devices[0].bus",
        "unknown bus \"nope\"",
    );
    assert_error(
        &format!("{bus}[[devices]]\nname = \"x\"\nprotocol = \"rtu\"\nbus = \"b\"\nunit = 0\n{pt}"),
        "devices[0].unit",
        "1..=247",
    );
    assert_error(
        &format!(
            "{bus}[[devices]]\nname = \"x\"\nprotocol = \"rtu\"\nbus = \"b\"\nunit = 3\n{pt}[[devices]]\nname = \"y\"\nprotocol = \"rtu\"\nbus = \"b\"\nunit = 3\n{pt}"
        ),
        "devices[1].unit",
        "already used",
    );
    assert_error(
        &format!(
            "{}[[devices]]\nname = \"x\"\nprotocol = \"rtu\"\nbus = \"b\"\n{pt}",
            bus.replace("baud = 9600", "baud = 9600\nframe_gap_ms = 1.0")
        ),
        "buses[0].frame_gap_ms",
        "3.5 character times",
    );
}

#[test]
fn tcp_units_are_unique_per_endpoint() {
    let pt = "[[devices.points]]\nid = \"a\"\nkind = \"input\"\naddress = 0\n";
    let two = format!(
        "{DEV}unit = 2\n{pt}[[devices]]\nname = \"e\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nunit = 3\n{pt}"
    );
    let dir = tempfile::tempdir().unwrap();
    config::load(&write(dir.path(), &two)).unwrap();
    assert_error(&two.replace("unit = 3", "unit = 2"), "devices[1].unit", "already another device");
}

#[test]
fn levelling_lines_reference_known_points() {
    let body = format!(
        "{DEV}[[devices.points]]\nid = \"r\"\nkind = \"input\"\naddress = 0\ntype = \"i32\"\nscale = 0.01\n\
         [[levelling]]\nname = \"L\"\nbase = \"d.nope\"\nbase_initial_mm = 1.0\n[[levelling.points]]\npoint = \"d.r\"\ninitial_mm = 2.0\n"
    );
    assert_error(&body, "levelling[0].base", "unknown point \"d.nope\"");
    assert_error(&body.replace("d.nope", "d.r"), "levelling[0].points[0].point", "base point cannot also be");
}

#[test]
fn all_problems_are_reported_at_once() {
    let (_, errs) = errors(&format!(
        "{DEV}timeout_ms = 0\n[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 1\ntype = \"bool\"\n[[devices]]\nname = \"d\"\nprotocol = \"tcp\"\n"
    ));
    assert!(errs.len() >= 4, "{errs:#?}");
}

#[test]
fn check_command_prints_a_summary_or_refuses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["check", "--config"])
        .arg(root.join("configs/examples/gateway-modbus.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK: 5 device(s), 1 bus(es), 50 point(s)"), "{text}");
    assert!(text.contains("read holding 0+24 every 1000 ms: 32 point(s)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), &format!("{DEV}profile = \"missing\"\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["check", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&f.display().to_string())
            && err.contains("devices[0].profile")
            && err.contains("nothing was started"),
        "{err}"
    );
}

#[test]
fn read_command_prints_json_and_fails_when_a_device_fails() {
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        &format!(
            "[[devices]]\nname = \"d\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\ntimeout_ms = 300\n[[devices.points]]\nid = \"a\"\nkind = \"holding\"\naddress = 0\n"
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["read", "--json", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed_devices"], serde_json::json!(["d"]));
    assert_eq!(v["samples"][0]["point"], "d.a");
    assert_eq!(v["samples"][0]["quality"], "BadCommunicationError");
    assert!(v["samples"][0]["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    // an unknown device is refused before anything is read
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["read", "--device", "nope", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device named \"nope\""));
}

#[test]
fn an_https_central_url_needs_the_park_ca_of_the_uplink() {
    // No [uplink.tls]: nothing to check central's certificate by.
    assert_error("[update]\ncentral_url = \"https://central:8443\"\n", "update.central_url", "[uplink.tls] ca_file");
    assert_error("[update]\ncentral_url = \"https://central:8443/api\"\n", "update.central_url", "without a path");
    // Plain HTTP (a lab or a loopback central) still needs nothing more.
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "[update]\ncentral_url = \"http://central:8080\"\n");
    config::load(&f).unwrap();
}
