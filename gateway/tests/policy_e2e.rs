//! Identity-based policy end to end: the l3-rule example (only `client=good` may reach
//! `run=nginx`) enforced by the XDP datapath on real connections from the legacy host, and a
//! policy reload that keeps an established allowed connection.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab;

use std::process::Command;
use std::time::Duration;

use lab::{poll, Lab, LineConn};

const L3_RULE: &str = include_str!("../../config/policies/l3-rule.yaml");

/// An HTTP request from `src` on the legacy host to the VIP; Some(body) when answered.
fn http_from(lab: &Lab, src: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.legacy(),
            "curl",
            "-s",
            "--max-time",
            "2",
        ])
        .args(["--interface", src, &format!("http://{}/", lab::vip4_http())])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A second, unlabelled source on the legacy host: 10.100.0.3.
fn second_legacy_source(lab: &Lab) {
    lab::run(Command::new("ip").args([
        "-n",
        &lab.legacy(),
        "addr",
        "add",
        "10.100.0.3/24",
        "dev",
        "eth0",
    ]));
}

#[test]
fn l3_rule_admits_the_good_client_and_drops_the_other() {
    let mut lab = Lab::up("policy");
    second_legacy_source(&lab);
    let policy = lab.dir.join("l3-rule.yaml");
    std::fs::write(&policy, L3_RULE).unwrap();
    let policy_s = policy.display().to_string();
    lab.write_config(|doc| {
        lab::label_backends(doc, "run", "nginx");
        lab::set_legacy_prefix(doc, "10.100.0.2/32", "client", "good");
        lab::set_policy_files(doc, &[policy_s.as_str()]);
    });
    lab.start_gateway();

    let good = poll(Duration::from_secs(10), || http_from(&lab, "10.100.0.2"));
    assert!(
        good.is_some(),
        "client=good reaches run=nginx; log:\n{}",
        lab.log_tail(30)
    );
    let before = lab.counter("drop_policy");
    assert_eq!(
        http_from(&lab, "10.100.0.3"),
        None,
        "the unlabelled host is dropped"
    );
    let after = lab.counter("drop_policy");
    assert!(after > before, "the drop is counted ({before} -> {after})");

    // A held allowed connection survives a reload that removes the permission; new ones from
    // that host are then dropped, and a broken policy file is rejected while the last good one
    // keeps serving.
    let mut held = LineConn::connect_in(&lab.legacy(), lab::vip4_http()).unwrap();
    held.ping().unwrap();
    std::fs::write(&policy, L3_RULE.replace("client: good", "client: nobody")).unwrap();
    lab.reload_gateway();
    let dropped = poll(Duration::from_secs(10), || {
        http_from(&lab, "10.100.0.2").is_none().then_some(())
    });
    assert!(
        dropped.is_some(),
        "after the reload the good client is no longer admitted"
    );
    held.ping()
        .expect("the established connection keeps working");

    std::fs::write(
        &policy,
        "spec:\n  endpointSelector:\n    matchExpressions: []\n",
    )
    .unwrap();
    lab.reload_gateway();
    std::thread::sleep(Duration::from_millis(500));
    lab.assert_gateway_running();
    let st = lab.status();
    let err = st["reload_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("matchExpressions"),
        "reload error names the field: {st}"
    );
    held.ping()
        .expect("still serving after the rejected reload");
}

/// How a TCP connection from `src` on the legacy host to the VIP's `port` ends: "open",
/// "refused" (a RST came back: the packet reached the pod) or "timeout" (dropped on the way).
fn tcp_outcome(lab: &Lab, src: &str, port: u16) -> &'static str {
    let script = format!(
        "import socket\ns=socket.socket()\ns.settimeout(2)\ns.bind(('{src}',0))\n\
         try:\n s.connect(('{}',{port})); print('open')\n\
         except ConnectionRefusedError: print('refused')\n\
         except OSError: print('timeout')\n",
        lab::vip4_http().ip()
    );
    let out = lab::run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.legacy(),
        "python3",
        "-c",
        &script,
    ]));
    match out.trim() {
        "open" => "open",
        "refused" => "refused",
        _ => "timeout",
    }
}

#[test]
fn port_and_cidr_rules_allow_http_and_drop_ssh_to_the_same_vip() {
    let mut lab = Lab::up("policy-ports");
    second_legacy_source(&lab);
    let policy = lab.dir.join("ports.yaml");
    // Backend ports, as Cilium's toPorts are: the VIP's 80 is the pods' 8080; 22 stays 22.
    std::fs::write(
        &policy,
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-hq}
spec:
  endpointSelector: {matchLabels: {run: nginx}}
  ingress:
  - fromCIDR: ["10.100.0.2/32"]
    toPorts:
    - ports: [{port: 8080, protocol: TCP}]
"#,
    )
    .unwrap();
    let policy_s = policy.display().to_string();
    let base = |doc: &mut toml_edit::DocumentMut| {
        let svc = &mut doc["service"][0];
        let ports = svc["ports"].as_array_mut().unwrap();
        let mut ssh = toml_edit::InlineTable::new();
        ssh.insert("name", "ssh".into());
        ssh.insert("port", 22.into());
        ssh.insert("protocol", "tcp".into());
        ports.push(ssh);
        lab::label_backends(doc, "run", "nginx");
    };
    lab.write_config(base);
    lab.start_gateway();
    // Without policy, 22 reaches a pod (nothing listens there: refused) and 80 is open.
    let open = poll(Duration::from_secs(10), || {
        (tcp_outcome(&lab, "10.100.0.2", 80) == "open").then_some(())
    });
    assert!(open.is_some(), "log:\n{}", lab.log_tail(30));
    assert_eq!(tcp_outcome(&lab, "10.100.0.2", 22), "refused");

    lab.write_config(|doc| {
        base(doc);
        lab::set_policy_files(doc, &[policy_s.as_str()]);
    });
    lab.reload_gateway();
    let enforced = poll(Duration::from_secs(10), || {
        (tcp_outcome(&lab, "10.100.0.2", 22) == "timeout").then_some(())
    });
    assert!(
        enforced.is_some(),
        "22/TCP is dropped once the policy selects the service"
    );
    let before = lab.counter("drop_policy");
    assert_eq!(
        tcp_outcome(&lab, "10.100.0.2", 80),
        "open",
        "80 -> 8080 is allowed"
    );
    assert_eq!(
        tcp_outcome(&lab, "10.100.0.3", 80),
        "timeout",
        "a source outside the CIDR is dropped"
    );
    assert!(lab.counter("drop_policy") > before);
}
