//! Observability end to end, in the namespace lab with the real daemon: per-service, per-backend
//! and per-peer counters equal to what the client sent (counted independently by nftables on
//! the client), the flow log showing the known connections and a policy drop, `/metrics` passing
//! `promtool check metrics`, IPFIX records read back by a decoder written here from RFC 7011,
//! and `meshgw top` driven in tmux; then, with the daemon stopped, the clients say so.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lab::{poll, Lab, MESHGW};
use serde_json::Value;

const L3_RULE: &str = include_str!("../../config/policies/l3-rule.yaml");
const GOOD: &str = "10.100.0.2";
const BAD: &str = "10.100.0.3";
const TCP_CONNS: usize = 4;
const UDP_QUERIES: usize = 6;
const IPFIX_PORT: u16 = 4739;
const PINGS4: u64 = 7;
const PINGS6: u64 = 4;

fn meshgw(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(MESHGW)
        .args(args)
        .arg("--config")
        .arg(&lab.config)
        .output()
        .unwrap()
}

fn status_json(lab: &Lab) -> Value {
    let out = meshgw(lab, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// nftables counters on the legacy host: (packets, bytes) per rule comment.
fn nft_counters(lab: &Lab) -> HashMap<String, (u64, u64)> {
    let out = lab::run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.legacy(),
        "nft",
        "-j",
        "list",
        "table",
        "inet",
        "obs",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut m = HashMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let comment = rule["comment"].as_str().unwrap_or_default().to_string();
        for e in rule["expr"].as_array().unwrap() {
            if let Some(c) = e.get("counter") {
                m.insert(
                    comment.clone(),
                    (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap()),
                );
            }
        }
    }
    m
}

fn nft_setup(lab: &Lab) {
    let vip = lab::VIP4;
    let vip6 = lab::VIP6;
    let rules = format!(
        "table inet obs {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip saddr {GOOD} ip daddr {vip} icmp type echo-request counter comment \"ping\"\n  ip6 daddr {vip6} icmpv6 type echo-request counter comment \"ping6\"\n  ip saddr {GOOD} ip daddr {vip} tcp dport 80 counter comment \"tcp\"\n  ip saddr {GOOD} ip daddr {vip} udp dport 53 counter comment \"udp\"\n  ip saddr {BAD} ip daddr {vip} tcp dport 80 counter comment \"bad\"\n }}\n chain in {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {vip} ip daddr {GOOD} tcp sport 80 counter comment \"tcp_back\"\n  ip saddr {vip} ip daddr {GOOD} udp sport 53 counter comment \"udp_back\"\n }}\n}}\n"
    );
    let path = lab.dir.join("obs.nft");
    std::fs::write(&path, rules).unwrap();
    lab::run(
        Command::new("ip")
            .args(["netns", "exec", &lab.legacy(), "nft", "-f"])
            .arg(&path),
    );
}

/// `count` pings from the legacy host (from `GOOD` for IPv4), every one answered.
fn ping(lab: &Lab, vip: std::net::IpAddr, count: u64) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.legacy(), "ping", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.2", "-W", "2"]);
    if vip.is_ipv4() {
        cmd.args(["-I", GOOD]);
    }
    let out = cmd.arg(vip.to_string()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping {vip}: {out:?}"
    );
}

/// The pings status reports for `vip`: (packets, bytes).
fn pings(st: &Value, vip: std::net::IpAddr) -> Option<(u64, u64)> {
    let v = st["vips"]
        .as_array()?
        .iter()
        .find(|v| v["vip"] == vip.to_string())?;
    Some((v["icmp_packets"].as_u64()?, v["icmp_bytes"].as_u64()?))
}

fn http_from(lab: &Lab, src: &str) -> bool {
    Command::new("ip")
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
        .unwrap()
        .status
        .success()
}

fn service(st: &Value, port: u64) -> &Value {
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["vip"] == lab::VIP4.to_string() && s["port"] == port)
        .unwrap_or_else(|| panic!("no frontend {}:{port} in {st}", lab::VIP4))
}

fn sum(v: &Value, field: &str) -> u64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_u64().unwrap())
        .sum()
}

fn config(lab: &Lab) {
    let policy = lab.dir.join("l3-rule.yaml");
    std::fs::write(&policy, L3_RULE).unwrap();
    let policy_s = policy.display().to_string();
    lab.write_config(|doc| {
        lab::label_backends(doc, "run", "nginx");
        lab::set_legacy_prefix(doc, &format!("{GOOD}/32"), "client", "good");
        lab::set_policy_files(doc, &[policy_s.as_str()]);
        let mut ipfix = toml_edit::Table::new();
        ipfix["collector"] = toml_edit::value(format!("127.0.0.1:{IPFIX_PORT}"));
        ipfix["interval_seconds"] = toml_edit::value(1);
        doc["ipfix"] = toml_edit::Item::Table(ipfix);
    });
}

/// An IPFIX data record: information element id -> value bytes.
type Rec = HashMap<u16, Vec<u8>>;

/// Decodes one IPFIX message (RFC 7011 §3): header, then sets; template sets (id 2) teach
/// `templates`, data sets (id ≥ 256) are read with them.
fn ipfix_decode(m: &[u8], templates: &mut HashMap<u16, Vec<(u16, usize)>>) -> Vec<Rec> {
    let u16at = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    assert_eq!(u16at(m, 0), 10, "IPFIX version");
    assert_eq!(usize::from(u16at(m, 2)), m.len(), "message length field");
    let mut out = Vec::new();
    let mut off = 16;
    while off + 4 <= m.len() {
        let (id, len) = (u16at(m, off), usize::from(u16at(m, off + 2)));
        assert!(
            len >= 4 && off + len <= m.len(),
            "set length {len} at {off}"
        );
        let body = &m[off + 4..off + len];
        if id == 2 {
            let mut p = 0;
            while p + 4 <= body.len() {
                let (tid, n) = (u16at(body, p), usize::from(u16at(body, p + 2)));
                p += 4;
                let fields = (0..n)
                    .map(|i| {
                        (
                            u16at(body, p + 4 * i),
                            usize::from(u16at(body, p + 4 * i + 2)),
                        )
                    })
                    .collect();
                p += 4 * n;
                templates.insert(tid, fields);
            }
        } else if id >= 256 {
            let t = &templates[&id];
            let rl: usize = t.iter().map(|(_, l)| l).sum();
            let mut p = 0;
            while p + rl <= body.len() {
                let mut r = Rec::new();
                for (ie, l) in t {
                    r.insert(*ie, body[p..p + l].to_vec());
                    p += l;
                }
                out.push(r);
            }
        }
        off += len;
    }
    out
}

fn num(b: &[u8]) -> u64 {
    b.iter().fold(0, |a, x| (a << 8) | u64::from(*x))
}

fn tmux(sock: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-L")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `meshgw top` in a detached 80x24 tmux session; its exit code lands in `rc`.
fn top_session(lab: &Lab, sock: &str, rc: &std::path::Path) {
    let _ = std::fs::remove_file(rc);
    let cmd = format!(
        "{MESHGW} top --config {}; echo $? > {}",
        lab.config.display(),
        rc.display()
    );
    let out = Command::new("tmux")
        .args([
            "-L",
            sock,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "80",
            "-y",
            "24",
            &cmd,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "tmux: {out:?}");
}

fn top_quits(sock: &str, rc: &std::path::Path) {
    tmux(sock, &["send-keys", "-t", "top", "q"]);
    let code = poll(Duration::from_secs(5), || std::fs::read_to_string(rc).ok());
    let _ = Command::new("tmux")
        .args(["-L", sock, "kill-server"])
        .output();
    assert_eq!(
        code.as_deref().map(str::trim),
        Some("0"),
        "meshgw top exits 0 on q"
    );
}

#[test]
fn counters_flows_metrics_ipfix_and_dashboard() {
    let mut lab = Lab::up("observability");
    lab::run(Command::new("ip").args([
        "-n",
        &lab.legacy(),
        "addr",
        "add",
        &format!("{BAD}/24"),
        "dev",
        "eth0",
    ]));
    config(&lab);
    nft_setup(&lab);
    let collector = lab::in_netns(&lab.gw(), || {
        UdpSocket::bind(("127.0.0.1", IPFIX_PORT)).unwrap()
    });
    collector
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    lab.start_gateway();

    // Known traffic: TCP connections and UDP queries from the admitted client, and a denied one.
    let ok = poll(Duration::from_secs(10), || {
        http_from(&lab, GOOD).then_some(())
    });
    assert!(
        ok.is_some(),
        "the admitted client reaches the VIP; log:\n{}",
        lab.log_tail(30)
    );
    let tcp = lab::tcp_many(&lab.legacy(), lab::vip4_http(), TCP_CONNS);
    assert!(tcp.iter().all(Result::is_ok), "{tcp:?}");
    let udp = lab::udp_many(&lab.legacy(), lab::vip4_dns(), UDP_QUERIES);
    assert!(udp.iter().all(Result::is_ok), "{udp:?}");
    assert!(!http_from(&lab, BAD), "the unlabelled client is dropped");

    // Counters: what the daemon reports equals what nftables counted leaving the client.
    let sent = nft_counters(&lab);
    let (tcp_p, tcp_b) = sent["tcp"];
    let (udp_p, udp_b) = sent["udp"];
    let (bad_p, _) = sent["bad"];
    assert_eq!(udp_p, UDP_QUERIES as u64, "one datagram a query: {sent:?}");
    assert!(
        tcp_p >= 3 * (TCP_CONNS as u64 + 1) && bad_p >= 1,
        "{sent:?}"
    );
    let st = poll(Duration::from_secs(10), || {
        let st = status_json(&lab);
        let done = st["services"].is_array()
            && service(&st, 80)["packets"] == tcp_p
            && service(&st, 53)["packets"] == udp_p;
        done.then_some(st)
    })
    .unwrap_or_else(|| panic!("counters never matched {sent:?}: {}", status_json(&lab)));
    let web = service(&st, 80);
    assert_eq!(web["bytes"], tcp_b, "bytes (IP) of the TCP frontend");
    assert_eq!(
        sum(&web["backends"], "packets"),
        tcp_p,
        "backends add up: {web}"
    );
    assert_eq!(sum(&web["backends"], "bytes"), tcp_b);
    let dns = service(&st, 53);
    assert_eq!(dns["bytes"], udp_b);
    assert_eq!(sum(&dns["backends"], "packets"), udp_p);
    assert_eq!(
        sum(&st["nodes"], "packets"),
        tcp_p + udp_p,
        "tunnel peers: {}",
        st["nodes"]
    );
    assert_eq!(sum(&st["nodes"], "bytes"), tcp_b + udp_b);
    assert_eq!(
        st["counters"]["drop_policy"].as_u64().unwrap(),
        bad_p,
        "every denied packet counted"
    );

    // Pings: each echo request to a VIP is counted on its way to the kernel, which answers it.
    let (v4, v6) = (lab::VIP4.into(), lab::VIP6.into());
    ping(&lab, v4, PINGS4);
    ping(&lab, v6, PINGS6);
    let sent = nft_counters(&lab);
    assert_eq!(sent["ping"].0, PINGS4, "{sent:?}");
    assert_eq!(sent["ping6"].0, PINGS6, "{sent:?}");
    let st = poll(Duration::from_secs(10), || {
        let st = status_json(&lab);
        (pings(&st, v4) == Some(sent["ping"]) && pings(&st, v6) == Some(sent["ping6"]))
            .then_some(st)
    })
    .unwrap_or_else(|| panic!("ping counts never matched {sent:?}: {}", status_json(&lab)));
    assert_eq!(
        (
            service(&st, 80)["packets"].as_u64(),
            service(&st, 53)["packets"].as_u64()
        ),
        (Some(tcp_p), Some(udp_p)),
        "pings are not counted as service traffic"
    );

    let text = String::from_utf8_lossy(&meshgw(&lab, &["status"]).stdout).into_owned();
    let ping_row = format!(
        "pings to {:<24} {PINGS4} pkts {} B",
        lab::VIP4,
        sent["ping"].1
    );
    assert!(text.contains(&ping_row), "{ping_row:?} in\n{text}");
    let row = format!("{}:80/tcp  {tcp_p} pkts {tcp_b} B", lab::VIP4);
    assert!(
        text.contains("(running, pid") && text.contains(&row),
        "{row:?} in\n{text}"
    );

    // The flow log: the known connections (one flow each) and the drop, with identities. The
    // daemon reads flow events off the ring on its own schedule: wait for the last of them.
    let read_flows = || -> Vec<Value> {
        let out = meshgw(&lab, &["flows", "--output", "json"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let count = |flows: &[Value], ip: &str, port: u64, verdict: &str| {
        flows
            .iter()
            .filter(|f| {
                f["src"]["addr"] == ip && f["dst"]["port"] == port && f["verdict"] == verdict
            })
            .count()
    };
    let flows = poll(Duration::from_secs(10), || {
        let flows = read_flows();
        (count(&flows, GOOD, 80, "forwarded") > TCP_CONNS
            && count(&flows, GOOD, 53, "forwarded") >= UDP_QUERIES)
            .then_some(flows)
    })
    .unwrap_or_else(read_flows);
    let from = |ip: &str, port: u64, verdict: &str| count(&flows, ip, port, verdict);
    // The curl that proved reachability is one more TCP connection.
    assert_eq!(from(GOOD, 80, "forwarded"), TCP_CONNS + 1, "{flows:#?}");
    assert_eq!(from(GOOD, 53, "forwarded"), UDP_QUERIES);
    let drops: Vec<&Value> = flows.iter().filter(|f| f["verdict"] == "dropped").collect();
    assert_eq!(
        drops.len(),
        1,
        "one denied flow (its SYN retries aggregate): {drops:#?}"
    );
    let d = drops[0];
    assert_eq!(d["src"]["addr"], BAD);
    assert_eq!(d["reason"], "drop_policy");
    assert_eq!(d["packets"], bad_p);
    assert_eq!(d["service"], "default/echo");
    let good = flows
        .iter()
        .find(|f| f["src"]["addr"] == GOOD && f["dst"]["port"] == 80)
        .unwrap();
    assert!(
        good["src"]["labels"].to_string().contains("client=good"),
        "{good}"
    );
    assert!(
        good["dst"]["labels"].to_string().contains("run=nginx") || good["dst"]["identity"] != 0,
        "{good}"
    );
    // The reply direction: what the backends sent back through the gateway, per flow, equals what
    // the client received (counted by nftables on its input).
    let flows_json = |lab: &Lab| -> Vec<Value> {
        String::from_utf8_lossy(&meshgw(lab, &["flows", "--output", "json"]).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let replies = |flows: &[Value], port: u64, field: &str| -> u64 {
        flows
            .iter()
            .filter(|f| {
                f["src"]["addr"] == GOOD && f["dst"]["port"] == port && f["verdict"] == "forwarded"
            })
            .map(|f| f[field].as_u64().unwrap())
            .sum()
    };
    let back = nft_counters(&lab);
    let want = [back["tcp_back"], back["udp_back"]];
    let got = poll(Duration::from_secs(5), || {
        let f = flows_json(&lab);
        let got = [
            (
                replies(&f, 80, "reply_packets"),
                replies(&f, 80, "reply_bytes"),
            ),
            (
                replies(&f, 53, "reply_packets"),
                replies(&f, 53, "reply_bytes"),
            ),
        ];
        (got == want).then_some(got)
    });
    assert!(
        got.is_some(),
        "replies counted by the client {want:?}; flows: {:#?}",
        flows_json(&lab)
    );
    assert_eq!(want[1].0, UDP_QUERIES as u64, "one answer a query");
    let text = String::from_utf8_lossy(&meshgw(&lab, &["flows", "--verdict", "dropped"]).stdout)
        .into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&format!("{BAD}:")) && text.contains("DROPPED (drop_policy)"),
        "{text}"
    );
    let by_vip = meshgw(&lab, &["flows", "--vip", "10.200.0.99"]);
    assert!(
        by_vip.status.success() && by_vip.stdout.is_empty(),
        "{by_vip:?}"
    );

    // /metrics from inside the gateway's namespace, checked by promtool.
    let body = lab::run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.gw(),
        "curl",
        "-sf",
        "http://127.0.0.1:9963/metrics",
    ]));
    let path = lab.dir.join("metrics.txt");
    std::fs::write(&path, &body).unwrap();
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool: {check:?}\n{body}");
    let want = format!("meshgw_service_packets_total{{service=\"default/echo\",vip=\"{}\",port=\"80\",protocol=\"tcp\"}} {tcp_p}", lab::VIP4);
    assert!(body.contains(&want), "missing {want}\n{body}");
    assert!(
        body.contains(&format!(
            "meshgw_datapath_drops_total{{name=\"policy\"}} {bad_p}"
        )),
        "{body}"
    );
    let want = format!(
        "meshgw_vip_icmp_echo_packets_total{{vip=\"{}\"}} {PINGS4}",
        lab::VIP4
    );
    assert!(body.contains(&want), "missing {want}\n{body}");

    // IPFIX: records for the known flows, including the drop, decoded from the wire.
    let mut templates = HashMap::new();
    let mut records: Vec<Rec> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let bad_ip: std::net::Ipv4Addr = BAD.parse().unwrap();
    let good_ip: std::net::Ipv4Addr = GOOD.parse().unwrap();
    let exported = |records: &[Rec], ip: std::net::Ipv4Addr, proto: u64, ie: u16| -> u64 {
        records
            .iter()
            .filter(|r| r[&8] == ip.octets() && num(&r[&4]) == proto)
            .map(|r| num(&r[&ie]))
            .sum()
    };
    // Deltas arrive interval by interval: read until everything sent is accounted for (a
    // datagram that never comes fails the read with its timeout).
    while exported(&records, bad_ip, 6, 2) < bad_p
        || exported(&records, good_ip, 17, 2) < udp_p
        || exported(&records, good_ip, 6, 2) < tcp_p
    {
        let (n, _) = collector
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("IPFIX datagram: {e}; {} records so far", records.len()));
        records.extend(ipfix_decode(&buf[..n], &mut templates));
    }
    assert_eq!(
        exported(&records, bad_ip, 6, 2),
        bad_p,
        "denied packets exported once"
    );
    assert_eq!(
        exported(&records, good_ip, 6, 2),
        tcp_p,
        "TCP packets exported once"
    );
    assert_eq!(
        exported(&records, good_ip, 6, 1),
        tcp_b,
        "TCP octets exported once"
    );
    let bad_recs: Vec<&Rec> = records
        .iter()
        .filter(|r| r[&8] == bad_ip.octets())
        .collect();
    assert!(
        bad_recs.iter().all(|r| num(&r[&89]) == 129),
        "dropped: ACL deny"
    );
    let udp_recs: Vec<&Rec> = records
        .iter()
        .filter(|r| r[&8] == good_ip.octets() && num(&r[&4]) == 17)
        .collect();
    assert_eq!(
        udp_recs.iter().map(|r| num(&r[&2])).sum::<u64>(),
        udp_p,
        "UDP packets exported"
    );
    assert_eq!(
        udp_recs.iter().map(|r| num(&r[&1])).sum::<u64>(),
        udp_b,
        "UDP octets exported"
    );
    assert!(udp_recs.iter().all(|r| r[&12] == lab::VIP4.octets()
        && num(&r[&11]) == 53
        && num(&r[&152]) <= num(&r[&153])));

    // Passive backend health: pod1 stops answering new connections (its SYNs are dropped in its
    // namespace); the connections Maglev gives it go unanswered and it turns failing while pod2
    // stays up; once it answers again, it is up again.
    let pod1 = lab.ns("pod1");
    lab::run(Command::new("ip").args([
        "netns", "exec", &pod1, "nft", "add table inet blackhole; add chain inet blackhole in { type filter hook input priority 0; }; add rule inet blackhole in tcp flags & (syn | ack) == syn drop",
    ]));
    let pod1_addr = lab::addresses(&pod1, "eth0")
        .into_iter()
        .find(|a| !a.contains(':'))
        .unwrap();
    let pod1_addr = pod1_addr.split('/').next().unwrap().to_string();
    let health_of = |st: &Value, mine: bool| -> Vec<String> {
        service(st, 80)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["backend"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{pod1_addr}:"))
                    == mine
            })
            .map(|b| b["health"].as_str().unwrap().to_string())
            .collect()
    };
    let attempts = |n: usize| {
        lab::in_netns(&lab.legacy(), || {
            (0..n)
                .filter(|_| {
                    std::net::TcpStream::connect_timeout(
                        &lab::vip4_http(),
                        Duration::from_millis(300),
                    )
                    .is_ok()
                })
                .count()
        })
    };
    let failing = poll(Duration::from_secs(20), || {
        attempts(6);
        let st = status_json(&lab);
        (health_of(&st, true) == ["failing"]).then_some(st)
    });
    let st = failing
        .unwrap_or_else(|| panic!("pod1 ({pod1_addr}) never failing: {}", status_json(&lab)));
    assert_eq!(health_of(&st, false), ["up"], "pod2 answers: {st}");
    let text = String::from_utf8_lossy(&meshgw(&lab, &["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("backend {pod1_addr}:")) && text.contains("health failing ("),
        "{text}"
    );
    lab::run(Command::new("ip").args([
        "netns",
        "exec",
        &pod1,
        "nft",
        "delete table inet blackhole",
    ]));
    let up = poll(Duration::from_secs(20), || {
        attempts(4);
        (health_of(&status_json(&lab), true) == ["up"]).then_some(())
    });
    assert!(up.is_some(), "pod1 up again: {}", status_json(&lab));

    // Following: the listing first, then a new drop as it happens.
    let mut follow = Command::new(MESHGW)
        .args([
            "flows",
            "--follow",
            "--verdict",
            "dropped",
            "--output",
            "json",
            "--config",
        ])
        .arg(&lab.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the listing");
    assert_eq!(first["src"]["port"], d["src"]["port"]);
    // Another denied connection (a new source port): a new flow on the stream.
    assert!(!http_from(&lab, BAD));
    let next = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the new drop, followed");
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(next["src"]["addr"], BAD);
    assert_ne!(next["src"]["port"], d["src"]["port"]);
    assert_eq!(next["verdict"], "dropped");

    // The dashboard, with traffic flowing so that the rate is not zero.
    let stop = AtomicBool::new(false);
    let sock = format!("obs{}", std::process::id());
    let rc = lab.dir.join("top.rc");
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = lab::tcp_many(&lab.legacy(), lab::vip4_http(), 1);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        top_session(&lab, &sock, &rc);
        let vip_col = format!("{}:80/tcp", lab::VIP4);
        let screen = poll(Duration::from_secs(15), || {
            let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
            let row = s.lines().find(|l| l.contains(&vip_col))?.to_string();
            let rate = row
                .split_whitespace()
                .find(|w| w.ends_with("/s") && !w.ends_with("b/s"))?;
            (rate != "0/s" && s.contains("default/echo")).then_some(s)
        });
        stop.store(true, Ordering::Relaxed);
        let screen = screen.unwrap_or_else(|| {
            panic!(
                "no service row with a rate: \n{}",
                tmux(&sock, &["capture-pane", "-p", "-t", "top"])
            )
        });
        assert!(
            screen.lines().count() <= 24 && screen.contains("Flows"),
            "{screen}"
        );
        let flow_lines = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.contains(" -> "))
                .map(String::from)
                .collect()
        };
        assert!(
            flow_lines(&screen)
                .iter()
                .any(|l| l.contains(&format!("{GOOD}:"))),
            "{screen}"
        );
        // A resize redraws at the new size.
        tmux(
            &sock,
            &["resize-window", "-t", "top", "-x", "120", "-y", "40"],
        );
        let wide = poll(Duration::from_secs(5), || {
            let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
            (s.lines().count() == 40
                && s.lines()
                    .any(|l| l.trim_end().ends_with('┐') && l.chars().count() == 120))
            .then_some(s)
        });
        assert!(
            wide.is_some(),
            "redrawn at 120x40:\n{}",
            tmux(&sock, &["capture-pane", "-p", "-t", "top"])
        );
        tmux(
            &sock,
            &["resize-window", "-t", "top", "-x", "80", "-y", "24"],
        );
        let narrow = poll(Duration::from_secs(5), || {
            let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
            (s.lines().count() == 24
                && s.lines()
                    .any(|l| l.trim_end().ends_with('┐') && l.chars().count() == 80))
            .then_some(s)
        });
        assert!(narrow.is_some(), "redrawn at 80x24");
        // Enter on the services pane: the selected service's backends with their health (the
        // TCP frontend's: move down a row while the UDP one shows).
        let title = format!("Backends of default/echo {}:80/tcp", lab::VIP4);
        let mut detail = None;
        for _ in 0..3 {
            tmux(&sock, &["send-keys", "-t", "top", "Enter"]);
            detail = poll(Duration::from_secs(5), || {
                let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
                (s.contains("Backends of default/echo") && s.contains(&format!("{pod1_addr}:")))
                    .then_some(s)
            });
            if detail.as_ref().is_some_and(|s| s.contains(&title)) {
                break;
            }
            tmux(&sock, &["send-keys", "-t", "top", "x"]);
            tmux(&sock, &["send-keys", "-t", "top", "j"]);
        }
        let detail = detail.filter(|s| s.contains(&title)).unwrap_or_else(|| {
            panic!(
                "the backends overlay of {title}:\n{}",
                tmux(&sock, &["capture-pane", "-p", "-t", "top"])
            )
        });
        let row = detail
            .lines()
            .find(|l| l.contains(&format!("{pod1_addr}:")))
            .unwrap();
        assert!(row.contains(" up ") && row.contains("active"), "{detail}");
        tmux(&sock, &["send-keys", "-t", "top", "x"]);
        tmux(&sock, &["send-keys", "-t", "top", "/"]);
        tmux(&sock, &["send-keys", "-t", "top", "-l", BAD]);
        tmux(&sock, &["send-keys", "-t", "top", "Enter"]);
        let filtered = poll(Duration::from_secs(5), || {
            let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
            s.contains(&format!("matching \"{BAD}\"")).then_some(s)
        })
        .expect("the filter shows in the flow pane's title");
        eprintln!("[observability] dashboard:\n{screen}\nfiltered:\n{filtered}");
        let lines = flow_lines(&filtered);
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains(BAD)),
            "{filtered}"
        );
        tmux(&sock, &["send-keys", "-t", "top", "?"]);
        let help = poll(Duration::from_secs(5), || {
            let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
            s.contains("Help").then_some(s)
        });
        assert!(help.is_some(), "the help overlay opens");
        tmux(&sock, &["send-keys", "-t", "top", "Escape"]);
        top_quits(&sock, &rc);
    });

    // Daemon down: every client says so instead of failing obscurely.
    lab.stop_gateway();
    let out = meshgw(&lab, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("daemon is not running"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("daemon NOT running"),
        "{out:?}"
    );
    let out = meshgw(&lab, &["flows"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("daemon is not running"),
        "{out:?}"
    );
    let sock = format!("obsdown{}", std::process::id());
    top_session(&lab, &sock, &rc);
    let s = poll(Duration::from_secs(5), || {
        let s = tmux(&sock, &["capture-pane", "-p", "-t", "top"]);
        s.contains("meshgw daemon not running").then_some(s)
    });
    assert!(s.is_some(), "top says the daemon is not running");
    top_quits(&sock, &rc);
}

#[test]
fn a_busy_metrics_port_is_a_status_problem_not_a_failure() {
    let mut lab = Lab::up("observability-busy");
    let _squatter = lab::in_netns(&lab.gw(), || {
        std::net::TcpListener::bind(("127.0.0.1", 9963)).unwrap()
    });
    lab.start_gateway();
    let st = lab.status();
    let problems = st["problems"].to_string();
    assert!(problems.contains("[metrics].listen 127.0.0.1:9963"), "{st}");
    // Forwarding and the control API are unaffected.
    let tcp = lab::tcp_many(&lab.legacy(), lab::vip4_http(), 2);
    assert!(tcp.iter().all(Result::is_ok), "{tcp:?}");
    assert!(status_json(&lab)["services"].is_array());

    // The operator moves the endpoint by a reload: it listens there at once, the problem goes,
    // and an IPFIX collector added by the same reload starts receiving.
    let collector = lab::in_netns(&lab.gw(), || {
        UdpSocket::bind(("127.0.0.1", IPFIX_PORT)).unwrap()
    });
    collector
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    lab.write_config(|doc| {
        doc["metrics"] = toml_edit::table();
        doc["metrics"]["listen"] = toml_edit::value("127.0.0.1:9964");
        doc["ipfix"] = toml_edit::table();
        doc["ipfix"]["collector"] = toml_edit::value(format!("127.0.0.1:{IPFIX_PORT}"));
        doc["ipfix"]["interval_seconds"] = toml_edit::value(1);
    });
    lab.reload_gateway();
    let scrape = |port: u16| {
        Command::new("ip")
            .args(["netns", "exec", &lab.gw(), "curl", "-sf"])
            .arg(format!("http://127.0.0.1:{port}/metrics"))
            .output()
            .unwrap()
    };
    let served = poll(Duration::from_secs(10), || {
        let out = scrape(9964);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("meshgw_"))
            .then_some(())
    });
    assert!(
        served.is_some(),
        "metrics on the new port; log:\n{}",
        lab.log_tail(20)
    );
    let st = poll(Duration::from_secs(10), || {
        let st = lab.status();
        (!st["problems"].to_string().contains("[metrics]")).then_some(st)
    });
    assert!(st.is_some(), "the problem is gone: {}", lab.status());
    let tcp = lab::tcp_many(&lab.legacy(), lab::vip4_http(), 2);
    assert!(tcp.iter().all(Result::is_ok), "{tcp:?}");
    let mut buf = [0u8; 65_536];
    let (n, _) = collector
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no IPFIX after the reload: {e}; log:\n{}", lab.log_tail(20)));
    assert!(
        n >= 16 && buf[..2] == [0, 10],
        "an IPFIX message (version 10)"
    );
}
