//! Egress from the mesh to the legacy network end to end: a pod selected by an `[[egress]]`
//! rule reaches a legacy host with the egress address as its source (TCP and UDP) and gets its
//! replies; a pod no rule selects is routed with its own address; an egress policy drops what it
//! does not allow, and the drop is counted.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::Duration;

use lab::{in_netns, poll, Lab, LineConn};

const EGRESS_IP: &str = "10.200.0.250";

/// Answers every line (TCP 9000 and 9001) and every datagram (UDP 9000) with the peer's
/// address as it arrived: what the legacy host sees of the pod.
const WHOAMI: &str = r#"
import socket, socketserver, threading
class T(socketserver.StreamRequestHandler):
    def handle(self):
        for _ in self.rfile:
            self.wfile.write(("%s:%d\n" % self.client_address).encode()); self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True; daemon_threads = True
for p in (9000, 9001):
    threading.Thread(target=S(("10.100.0.2", p), T).serve_forever, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.100.0.2", 9000))
while True:
    d, a = u.recvfrom(2048); u.sendto(("%s:%d" % a).encode(), a)
"#;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backup-to-hq}
spec:
  endpointSelector: {matchLabels: {app: backup}}
  egress:
  - toCIDR: ["10.100.0.0/24"]
    toPorts:
    - ports: [{port: 9000, protocol: TCP}, {port: 9000, protocol: UDP}]
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The legacy host's view of a TCP connection from namespace `ns` to port `port`.
fn seen_tcp(ns: &str, port: u16) -> Option<String> {
    let addr: SocketAddr = format!("10.100.0.2:{port}").parse().unwrap();
    let mut c = LineConn::connect_in(ns, addr).ok()?;
    c.ping().ok()
}

fn seen_udp(ns: &str) -> Option<String> {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.send_to(b"who", "10.100.0.2:9000").ok()?;
        let mut buf = [0u8; 256];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// "ip:port" -> (ip, port).
fn split(s: &str) -> (String, u16) {
    let (ip, port) = s.rsplit_once(':').unwrap();
    (ip.to_string(), port.parse().unwrap())
}

#[test]
fn selected_pod_leaves_with_the_egress_address_and_policy_drops_the_rest() {
    let mut lab = Lab::up("egress");
    let script = lab.dir.join("whoami.py");
    std::fs::write(&script, WHOAMI).unwrap();
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &lab.legacy(), "python3"])
            .arg(&script)
            .spawn()
            .unwrap(),
    );
    let policy = lab.dir.join("egress.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy_s = policy.display().to_string();
    lab.write_config(|doc| {
        let backends = doc["service"][0]["backend"]
            .as_array_of_tables_mut()
            .unwrap();
        for b in backends.iter_mut() {
            let app = if b["address"].as_str() == Some("10.244.1.10") {
                "backup"
            } else {
                "web"
            };
            let mut labels = toml_edit::InlineTable::new();
            labels.insert("app", app.into());
            b["labels"] = toml_edit::value(labels);
        }
        let mut rule = toml_edit::Table::new();
        rule["name"] = toml_edit::value("backup");
        let mut sel = toml_edit::InlineTable::new();
        sel.insert("app", "backup".into());
        rule["pod_labels"] = toml_edit::value(sel);
        rule["destination_cidrs"] =
            toml_edit::value(toml_edit::Array::from_iter(["10.100.0.0/24"]));
        rule["egress_ip"] = toml_edit::value(EGRESS_IP);
        let mut arr = toml_edit::ArrayOfTables::new();
        arr.push(rule);
        doc["egress"] = toml_edit::Item::ArrayOfTables(arr);
        lab::set_policy_files(doc, &[policy_s.as_str()]);
    });
    lab.start_gateway();
    let pod1 = lab.ns("pod1");
    let pod2 = lab.ns("pod2");

    // The selected pod: TCP and UDP leave with the egress address and a port of the SNAT range.
    let tcp = poll(Duration::from_secs(10), || seen_tcp(&pod1, 9000));
    let tcp = tcp.unwrap_or_else(|| panic!("pod-1 -> 10.100.0.2:9000; log:\n{}", lab.log_tail(30)));
    let (ip, port) = split(&tcp);
    assert_eq!(ip, EGRESS_IP, "the legacy host sees the egress address");
    assert!((61_000..=65_535).contains(&port), "SNAT port {port}");
    let udp = seen_udp(&pod1).expect("UDP answer");
    assert_eq!(split(&udp).0, EGRESS_IP);
    // A held connection keeps its translation over several exchanges.
    let mut held = LineConn::connect_in(&pod1, "10.100.0.2:9000".parse().unwrap()).unwrap();
    let first = held.ping().unwrap();
    for _ in 0..5 {
        assert_eq!(held.ping().unwrap(), first);
    }
    // The flow log shows the held connection with its translation, both directions counted
    // from the source-NAT table, and still active.
    let src = held.local.to_string();
    let flow = poll(Duration::from_secs(5), || {
        let out = Command::new(lab::MESHGW)
            .args(["flows", "--output", "json", "--config"])
            .arg(&lab.config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|f| {
                format!(
                    "{}:{}",
                    f["src"]["addr"].as_str().unwrap_or(""),
                    f["src"]["port"]
                ) == src
                    && f["packets"].as_u64() >= Some(6)
                    && f["reply_packets"].as_u64() >= Some(6)
            })
    });
    let flow = flow.unwrap_or_else(|| panic!("no egress flow from {src} with its packets"));
    assert_eq!(flow["snat"].as_str(), Some(first.as_str()), "{flow}");
    assert_eq!(flow["active"], true, "{flow}");
    assert_eq!(flow["verdict"], "forwarded", "{flow}");
    assert_eq!(flow["dst"]["addr"], "10.100.0.2", "{flow}");
    assert!(lab.counter("egress_created") >= 3, "{}", lab.status());
    assert!(lab.counter("egress_forwarded") >= 8);
    assert!(lab.counter("egress_replied") >= 8);
    // The kernel accepts the address as its own (the IPv4 VIP pool's AnyIP local route, on
    // the legacy interface, which answers ARP for it), as it does the VIPs.
    let route = lab::ip_json(&lab.gw(), &["route", "get", EGRESS_IP]);
    assert_eq!(route[0]["type"], "local", "{route}");

    // The status lists the rule with the one endpoint it selects, and the policy.
    let st = lab.status();
    assert_eq!(
        st["policy"]["egress"][0].as_str(),
        Some("backup 10.200.0.250 -> 10.100.0.0/24 (1 endpoints)"),
        "{st}"
    );
    assert!(st["policy"]["policies"][0]
        .as_str()
        .is_some_and(|p| p.starts_with("backup-to-hq (default) egress from")));

    // The policy allows the selected pod port 9000 only: 9001 is dropped and counted.
    let before = lab.counter("drop_policy_egress");
    assert_eq!(seen_tcp(&pod1, 9001), None, "9001 is not allowed");
    assert!(lab.counter("drop_policy_egress") > before);

    // A pod no rule (and no policy) selects is routed untranslated, any port.
    let seen = seen_tcp(&pod2, 9001).expect("pod-2 reaches the host");
    assert_eq!(split(&seen).0, "10.244.2.10");
}
