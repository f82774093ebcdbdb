//! `meshgw check` as an operator runs it: the real binary on real files.

use std::process::Command;

const MESHGW: &str = env!("CARGO_BIN_EXE_meshgw");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn check(files: &[&str]) -> (bool, String, String) {
    let out = Command::new(MESHGW)
        .arg("check")
        .args(files)
        .output()
        .expect("run meshgw");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_configs_pass() {
    let demo = format!("{REPO}/config/demo.toml");
    let default = format!("{REPO}/config/default.toml");
    let (ok, out, err) = check(&[&demo, &default]);
    assert!(ok, "{err}");
    assert!(
        out.contains("demo.toml: ok (1 services, 2 nodes, 0 policies)"),
        "{out}"
    );
    assert!(
        out.contains("default.toml: ok (0 services, 0 nodes, 0 policies)"),
        "{out}"
    );
}

#[test]
fn every_problem_is_printed_with_file_line_and_key() {
    let demo = std::fs::read_to_string(format!("{REPO}/config/demo.toml")).expect("demo");
    let bad = demo
        .replacen("node = \"node-2\"", "node = \"node-9\"", 1)
        .replace("vxlan_port = 8472", "vxlan_port = 0")
        .replace("protocol = \"udp\"", "protocol = \"sctp\"");
    let dir = std::env::temp_dir().join(format!("meshgw-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("bad.toml");
    std::fs::write(&path, &bad).expect("write");
    let (ok, _, err) = check(&[path.to_str().expect("utf-8")]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(!ok, "a bad file must fail");
    let line = |needle: &str| {
        bad.lines()
            .position(|l| l.contains(needle))
            .expect("needle")
            + 1
    };
    for (key, needle) in [
        ("mesh.vxlan_port", "vxlan_port = 0"),
        ("service[0].ports[1].protocol", "sctp"),
        ("service[0].backend[1].node", "node-9"),
    ] {
        let want = format!("bad.toml:{}:", line(needle));
        assert!(
            err.lines().any(|l| l.contains(&want) && l.contains(key)),
            "expected a line with {want} and {key} in:\n{err}"
        );
    }
}

#[test]
fn unknown_key_is_rejected() {
    let demo = std::fs::read_to_string(format!("{REPO}/config/demo.toml")).expect("demo");
    let bad = demo.replace("[interfaces]", "[interfaces]\nlegacy_vlan = 100");
    let path = std::env::temp_dir().join(format!("meshgw-unknown-{}.toml", std::process::id()));
    std::fs::write(&path, &bad).expect("write");
    let (ok, _, err) = check(&[path.to_str().expect("utf-8")]);
    std::fs::remove_file(&path).expect("cleanup");
    assert!(!ok);
    assert!(
        err.contains("interfaces.legacy_vlan") && err.contains("unknown field"),
        "{err}"
    );
}
