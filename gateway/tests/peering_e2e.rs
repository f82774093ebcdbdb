//! Three gateways in a line, A - B - C, each the real daemon in its own namespace with its XDP
//! datapath, joined by WireGuard (boringtun: this machine has no kernel module) and peering over
//! QUIC. A legacy host behind A reaches a host behind C through B; B is killed and restarted.
//!
//! ```text
//!  ha --legacy-- A ==ua/wa== B ==uc/wc== C --legacy-- hc
//!  10.1.0.2   10.1.0.1    (underlay 192.168.{10,20}.0/24)   10.3.0.1   10.3.0.2
//! ```
//! Each test has its own namespace prefix and directories. Needs root; never passes silently.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod lab;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use lab::{poll, require_root, run, MESHGW};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const HOLD: u64 = 4;

struct Gw {
    id: &'static str,
    ns: String,
    dir: PathBuf,
    state: PathBuf,
    pins: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

struct Line {
    prefix: String,
    gws: Vec<Gw>,
    hosts: [String; 2],
}

impl Drop for Line {
    fn drop(&mut self) {
        for g in &mut self.gws {
            if let Some(mut c) = g.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if std::thread::panicking() {
                let log = fs::read_to_string(g.dir.join("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("---- {} log ----", g.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &g.ns]).output();
            let _ = fs::remove_dir_all(&g.pins);
            let _ = fs::remove_dir_all(&g.state);
            let _ = fs::remove_dir_all(&g.dir);
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", h]).output();
        }
        eprintln!("line {} down", self.prefix);
    }
}

fn ip(ns: &str, args: &str) {
    let mut full = vec!["-n", ns];
    full.extend(args.split_whitespace());
    run(Command::new("ip").args(&full));
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A veth pair between two namespaces, with addresses.
fn wire(a: (&str, &str, &str), b: (&str, &str, &str)) {
    run(Command::new("ip").args([
        "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ]));
    for (ns, dev, addr) in [a, b] {
        if !addr.is_empty() {
            ip(ns, &format!("addr add {addr} dev {dev}"));
        }
        ip(ns, &format!("link set {dev} up"));
        // Senders on veth need checksums filled in (see the brief's machine facts).
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
            .output();
    }
}

impl Line {
    fn up(tag: &str) -> Line {
        require_root();
        run(Command::new("bash").args([
            "-c",
            "mkdir -p /run/meshgw/bpffs && (mountpoint -q /run/meshgw/bpffs || mount -t bpf bpf /run/meshgw/bpffs)",
        ]));
        let prefix = format!("pe{tag}{}", std::process::id());
        let ns = |r: &str| format!("{prefix}-{r}");
        let hosts = [ns("ha"), ns("hc")];
        let mut gws = Vec::new();
        for id in ["gw-a", "gw-b", "gw-c"] {
            let name = format!("{prefix}{}", &id[3..]);
            let dir = PathBuf::from(format!("/run/meshgw-e2e/{name}"));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            gws.push(Gw {
                id,
                ns: ns(&id[3..]),
                config: dir.join("gateway.toml"),
                state: PathBuf::from(format!("/run/meshgw/{name}")),
                pins: PathBuf::from(format!("/run/meshgw/bpffs/{name}")),
                dir,
                child: None,
            });
        }
        for n in gws
            .iter()
            .map(|g| g.ns.clone())
            .chain(hosts.iter().cloned())
        {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
            run(Command::new("ip").args(["netns", "add", &n]));
            ip(&n, "link set lo up");
        }
        let line = Line { prefix, gws, hosts };
        let (a, b, c) = (&line.gws[0].ns, &line.gws[1].ns, &line.gws[2].ns);
        let (ha, hc) = (&line.hosts[0], &line.hosts[1]);
        // Edges: 1,500-byte MTU legacy networks.
        wire((ha, "eth0", "10.1.0.2/24"), (a, "legacy", "10.1.0.1/24"));
        wire((hc, "eth0", "10.3.0.2/24"), (c, "legacy", "10.3.0.1/24"));
        ip(ha, "route add default via 10.1.0.1");
        ip(hc, "route add default via 10.3.0.1");
        // B's legacy side has no hosts in this test.
        wire((b, "legacy", "10.2.0.1/24"), (b, "legacy-peer", ""));
        // Mesh interfaces (no Cilium nodes here): a veth pair inside each gateway.
        for g in [a, b, c] {
            wire((g, "mesh", "172.18.0.1/24"), (g, "mesh-peer", ""));
        }
        // The underlay between gateways.
        wire((a, "wb", "192.168.10.1/24"), (b, "wa", "192.168.10.2/24"));
        wire((b, "wc", "192.168.20.1/24"), (c, "wb", "192.168.20.2/24"));
        line
    }

    fn start(&mut self, i: usize) {
        let ok = self.try_start(i);
        assert!(ok.is_ok(), "{} not ready: {ok:?}", self.gws[i].id);
    }

    /// Starts gateway `i`; `Err` with its exit status if it exits before it is ready.
    fn try_start(&mut self, i: usize) -> Result<(), String> {
        let g = &mut self.gws[i];
        let ready = g.state.join("ready");
        let _ = fs::remove_file(&ready);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(g.dir.join("log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &g.ns, MESHGW, "run", "--config"])
            .arg(&g.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        g.child = Some(child);
        let outcome = poll(Duration::from_secs(30), || {
            if ready.exists() {
                return Some(Ok(()));
            }
            match g.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status.to_string())),
                _ => None,
            }
        });
        match outcome {
            Some(Err(e)) => {
                g.child = None;
                Err(e)
            }
            Some(Ok(())) => Ok(()),
            None => Err("not ready within 30 s".into()),
        }
    }

    /// SIGHUP: reload the config file.
    fn hup(&self, i: usize) {
        let pid = self.gws[i].child.as_ref().unwrap().id();
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
    }

    fn log(&self, i: usize) -> String {
        fs::read_to_string(self.gws[i].dir.join("log")).unwrap_or_default()
    }

    /// SIGKILL: no goodbye on the peering channel, the TUN device vanishes with the process.
    fn kill(&mut self, i: usize) {
        let mut c = self.gws[i].child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn tunnel_routes(&self, i: usize) -> Vec<String> {
        let out = run(Command::new("ip").args([
            "-n",
            &self.gws[i].ns,
            "route",
            "show",
            "proto",
            // RTPROT_MESHGW (iproute2 has no name for it).
            "217",
        ]));
        let mut v: Vec<String> = out
            .lines()
            .filter(|l| l.contains("meshgw-wg"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        v.sort();
        v
    }

    fn wait_routes(&self, i: usize, want: &[&str], what: &str) -> Duration {
        let start = Instant::now();
        let got = poll(Duration::from_secs(60), || {
            (self.tunnel_routes(i) == want).then_some(())
        });
        assert!(
            got.is_some(),
            "{what}: {} has tunnel routes {:?}, want {want:?}",
            self.gws[i].id,
            self.tunnel_routes(i)
        );
        start.elapsed()
    }

    /// Gateway `i`'s status once it contains `want` (the status file is written apart from the
    /// loop, so it may lag the kernel's routes by a pass); panics with the last one after 30 s.
    fn wait_status(&self, i: usize, want: &str) -> String {
        poll(Duration::from_secs(30), || {
            let st = self.status(i);
            st.contains(want).then_some(st)
        })
        .unwrap_or_else(|| panic!("no {want:?} in the status: {}", self.status(i)))
    }

    fn status(&self, i: usize) -> String {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.gws[i].ns,
            MESHGW,
            "status",
            "--config",
            self.gws[i].config.to_str().unwrap(),
        ]))
    }
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let pem = p.self_signed(&key).unwrap().pem();
    (Issuer::new(p, key), pem)
}

/// Writes keys, certificates and the config of each gateway; with `foreign_b`, B's peering
/// certificate comes from a CA the others do not trust.
fn configure(line: &Line, foreign_b: bool) {
    let (issuer, ca_pem) = ca("peering-ca");
    let (other, _) = ca("another-ca");
    let mut wg_keys = Vec::new();
    for (n, g) in line.gws.iter().enumerate() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ (n as u8 * 71 + 5) ^ (std::process::id() as u8);
        }
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        write(&g.dir.join("wg.key"), &B64.encode(k), 0o600);
        wg_keys.push(B64.encode(meshgw_tunnel::wireguard::keys::public_key_of(&k)));
        let key = KeyPair::generate().unwrap();
        let signer = if foreign_b && g.id == "gw-b" {
            &other
        } else {
            &issuer
        };
        let cert = CertificateParams::new(vec![g.id.to_owned()])
            .unwrap()
            .signed_by(&key, signer)
            .unwrap();
        write(&g.dir.join("peer.crt"), &cert.pem(), 0o644);
        write(&g.dir.join("peer.key"), &key.serialize_pem(), 0o600);
        write(&g.dir.join("ca.crt"), &ca_pem, 0o644);
    }
    // (peer index, WireGuard endpoint, QUIC endpoint) per gateway.
    let peers: [Vec<(usize, &str, Option<&str>)>; 3] = [
        vec![(1, "192.168.10.2:51820", Some("192.168.10.2:4433"))],
        vec![
            (0, "192.168.10.1:51820", None),
            (2, "192.168.20.2:51820", Some("192.168.20.2:4433")),
        ],
        vec![(1, "192.168.20.1:51820", None)],
    ];
    let announce = [r#"["10.1.0.0/24"]"#, "[]", r#"["10.3.0.0/24"]"#];
    for (n, g) in line.gws.iter().enumerate() {
        let name = g.state.file_name().unwrap().to_str().unwrap();
        let d = g.dir.display();
        let mut text = format!(
            r#"[gateway]
name = "{name}"
state_dir = "{}"
bpf_pin_dir = "{}"

[interfaces]
legacy = "legacy"
mesh = "mesh"
xdp_mode = "native"

[mesh]
address = "172.18.0.1"

[vips]
pool = ["10.20{n}.0.0/24"]
announce = false

[wireguard]
private_key_file = "{d}/wg.key"
backend = "userspace"

[peering]
gateway_id = "{}"
cert_file = "{d}/peer.crt"
key_file = "{d}/peer.key"
ca_files = ["{d}/ca.crt"]
hold_time_seconds = {HOLD}
announce = {}
"#,
            g.state.display(),
            g.pins.display(),
            g.id,
            announce[n],
        );
        for (p, ep, quic) in &peers[n] {
            text.push_str(&format!(
                "\n[[peer]]\nid = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{ep}\"\npersistent_keepalive = 5\n",
                line.gws[*p].id, wg_keys[*p]
            ));
            if let Some(q) = quic {
                text.push_str(&format!("quic_endpoint = \"{q}\"\n"));
            }
        }
        write(&g.config, &text, 0o644);
    }
}

fn ping(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn legacy_host_reaches_across_two_tunnels_and_routes_follow_the_middle_gateway() {
    let mut line = Line::up("l");
    configure(&line, false);
    for i in 0..3 {
        line.start(i);
    }
    let (ha, hc) = (line.hosts[0].clone(), line.hosts[1].clone());

    // Routes learned along the line, with B as transit.
    line.wait_routes(0, &["10.3.0.0/24"], "A learns C's prefix through B");
    line.wait_routes(2, &["10.1.0.0/24"], "C learns A's prefix through B");
    line.wait_routes(1, &["10.1.0.0/24", "10.3.0.0/24"], "B learns both");

    let (ok, out) = ping(&ha, &["-c", "3", "-i", "0.3", "-W", "5", "10.3.0.2"]);
    assert!(ok, "ping across A-B-C failed:\n{out}");

    // MTU: the tunnel is 1,440 (1,500 underlay minus 60); a 1,500-byte packet with DF set gets
    // "fragmentation needed" back from A instead of vanishing.
    let (_, out) = ping(
        &ha,
        &["-c", "1", "-W", "3", "-M", "do", "-s", "1472", "10.3.0.2"],
    );
    assert!(
        out.contains("mtu = 1440") || out.contains("mtu=1440"),
        "no fragmentation-needed with the tunnel MTU: {out}"
    );

    // TCP with 1,500-byte writes and 1,500-byte frames at both edges: iperf3 across.
    let server = Command::new("ip")
        .args(["netns", "exec", &hc, "iperf3", "-s", "-1", "-B", "10.3.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = scopeguard(server);
    std::thread::sleep(Duration::from_millis(500));
    let out = run(Command::new("ip").args([
        "netns", "exec", &ha, "iperf3", "-c", "10.3.0.2", "-n", "20M", "-l", "1500", "-J",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sent = v["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    // -n rounds up to whole 1,500-byte writes.
    assert!(sent >= 20 << 20, "iperf3 did not send everything: {out}");
    // The server's total stops at its last report; the content check below is exact.
    assert!(received > 0, "iperf3 received nothing: {out}");
    let mss = v["start"]["tcp_mss_default"].as_u64().unwrap_or(0);
    eprintln!(
        "iperf3 across A-B-C: {:.0} Mbit/s received, sender MSS {mss}",
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    );
    let _ = server.0.wait();
    server.1 = false;
    // 1,500-byte writes, every byte checked, through both tunnels.
    transfer_1500(&ha, &hc);
    // The SYNs went through A's clamp.
    let nft = run(Command::new("ip").args([
        "netns",
        "exec",
        &line.gws[0].ns,
        "nft",
        "list",
        "table",
        "inet",
        "meshgw_transit",
    ]));
    assert!(
        nft.lines()
            .any(|l| l.contains("oifname") && !l.contains("packets 0 ")),
        "MSS clamp saw no SYN: {nft}"
    );

    // Status lists the peers, their state, handshakes, bytes and what was learned (the
    // transit part is rewritten every second).
    std::thread::sleep(Duration::from_millis(2500));
    let st = line.status(0);
    assert!(
        st.contains("peer gw-b") && st.contains("established"),
        "{st}"
    );
    assert!(
        st.contains("prefixes learned: 10.2.0.0/24")
            || st.contains("prefixes learned: 10.3.0.0/24"),
        "{st}"
    );
    assert!(st.contains("10.3.0.0/24"), "{st}");
    assert!(!st.contains("handshake never"), "{st}");

    // Kill B: A and C withdraw what they learned through it, and do not bounce each other's
    // prefixes (their tables hold nothing of the other side while B is down).
    line.kill(1);
    let t_a = line.wait_routes(0, &[], "A withdraws after B dies");
    let t_c = line.wait_routes(2, &[], "C withdraws after B dies");
    eprintln!("withdrawn after B was killed: A {t_a:?}, C {t_c:?} (hold time {HOLD} s)");
    std::thread::sleep(Duration::from_secs(HOLD));
    assert_eq!(
        line.tunnel_routes(0),
        Vec::<String>::new(),
        "A re-learned something while B is down"
    );
    assert_eq!(
        line.tunnel_routes(2),
        Vec::<String>::new(),
        "C re-learned something while B is down"
    );
    let (ok, _) = ping(&ha, &["-c", "1", "-W", "1", "10.3.0.2"]);
    assert!(!ok, "10.3.0.2 still reachable with B down");

    // B restarts: routes come back and traffic flows again.
    line.start(1);
    let t = line.wait_routes(0, &["10.3.0.0/24"], "A relearns after B restarts");
    line.wait_routes(2, &["10.1.0.0/24"], "C relearns after B restarts");
    eprintln!("restored {t:?} after B was ready again");
    let (ok, out) = poll(Duration::from_secs(20), || {
        let r = ping(&ha, &["-c", "1", "-W", "2", "10.3.0.2"]);
        r.0.then_some(r)
    })
    .unwrap_or_else(|| (false, String::new()));
    assert!(ok, "no traffic after B restarted: {out}");
    let st = line.status(0);
    assert!(st.contains("peer gw-b"), "{st}");

    // Key rotation by reload: C gets a new key, B's config the new public key. B's session
    // with A is not renegotiated (its handshake age keeps growing) and traffic to C resumes.
    std::thread::sleep(Duration::from_millis(1500));
    let wg_peer = |line: &Line, gw: usize, id: &str| -> serde_json::Value {
        let text = fs::read_to_string(line.gws[gw].state.join("status.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["transit"]["wireguard"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no peer {id} in {text}"))
    };
    let before = wg_peer(&line, 1, "gw-a")["last_handshake_secs"]
        .as_u64()
        .unwrap();
    let mut k = [0x5au8; 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    let new_pub = B64.encode(meshgw_tunnel::wireguard::keys::public_key_of(&k));
    let old_pub = wg_peer(&line, 1, "gw-c")["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    write(&line.gws[2].dir.join("wg.key"), &B64.encode(k), 0o600);
    let b_cfg = fs::read_to_string(&line.gws[1].config).unwrap();
    write(
        &line.gws[1].config,
        &b_cfg.replace(&old_pub, &new_pub),
        0o644,
    );
    line.hup(1);
    line.hup(2);
    let rotated = poll(Duration::from_secs(20), || {
        (wg_peer(&line, 1, "gw-c")["public_key"] == new_pub.as_str()).then_some(())
    });
    assert!(rotated.is_some(), "B did not take C's new key");
    let (ok, out) = poll(Duration::from_secs(20), || {
        let r = ping(&ha, &["-c", "1", "-W", "2", "10.3.0.2"]);
        r.0.then_some(r)
    })
    .unwrap_or_else(|| (false, String::new()));
    assert!(ok, "no traffic after C's key rotation: {out}");
    let after = wg_peer(&line, 1, "gw-a")["last_handshake_secs"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before,
        "B's session with A was renegotiated by C's rotation ({before} s -> {after} s)"
    );
    // A changed announce list is announced and withdrawn on the running sessions.
    let a_cfg = fs::read_to_string(&line.gws[0].config).unwrap();
    let more = a_cfg.replace(
        r#"announce = ["10.1.0.0/24"]"#,
        r#"announce = ["10.1.0.0/24", "10.1.9.0/24"]"#,
    );
    assert_ne!(more, a_cfg);
    write(&line.gws[0].config, &more, 0o644);
    line.hup(0);
    line.wait_routes(
        2,
        &["10.1.0.0/24", "10.1.9.0/24"],
        "C learns A's new prefix",
    );
    write(&line.gws[0].config, &a_cfg, 0o644);
    line.hup(0);
    line.wait_routes(2, &["10.1.0.0/24"], "C withdraws A's removed prefix");
    let sessions = |line: &Line| -> u64 {
        let text = fs::read_to_string(line.gws[1].state.join("status.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["transit"]["peering"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "gw-a")
            .and_then(|p| p["sessions"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(
        sessions(&line),
        1,
        "the announce change reopened B's session with A"
    );

    // C completed a handshake with its new key (its status is rewritten every second).
    let c_side = poll(Duration::from_secs(10), || {
        let p = wg_peer(&line, 2, "gw-b");
        p["last_handshake_secs"].as_u64().map(|_| p)
    });
    assert!(c_side.is_some(), "{}", wg_peer(&line, 2, "gw-b"));
}

/// Kills a child process on drop unless disarmed.
struct Guard(Child, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.1 {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn scopeguard(c: Child) -> Guard {
    Guard(c, true)
}

#[test]
fn a_readable_private_key_stops_the_start_and_a_foreign_ca_is_refused() {
    let mut line = Line::up("f");
    configure(&line, true);
    // A private key group and others can read: the gateway refuses to start and says why.
    let key = line.gws[0].dir.join("wg.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let r = line.try_start(0);
    assert!(r.is_err(), "started with a 0644 private key");
    let log = line.log(0);
    assert!(
        log.contains("mode 0644") && log.contains(&key.display().to_string()),
        "the refusal names the file and its mode: {log}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    line.start(0);

    // B presents a certificate from another CA: A (which dials B) refuses it and says why.
    line.start(1);
    let refused = poll(Duration::from_secs(30), || {
        let st = line.status(0);
        st.contains("refused:").then_some(st)
    })
    .unwrap_or_else(|| panic!("no refusal in A's status: {}", line.status(0)));
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let log = line.log(0);
    assert!(
        log.contains("peering connection refused") && log.contains("UnknownIssuer"),
        "the refusal is logged with its reason: {log}"
    );
    // Nothing was learned: no session, no routes.
    assert!(!refused.contains("established"), "{refused}");
    assert_eq!(line.tunnel_routes(0), Vec::<String>::new());
    assert_eq!(line.tunnel_routes(1), Vec::<String>::new());
}

/// Like [`configure`] for A and B of `line`, with C being the lab's gateway: A announces its
/// legacy prefix, C offers the lab's portal service (echo, VIP 10.200.0.10) to B, B to A.
fn configure_with_lab(line: &Line, lab: &lab::Lab) {
    let (issuer, ca_pem) = ca("peering-ca");
    let dirs = [
        line.gws[0].dir.clone(),
        line.gws[1].dir.clone(),
        lab.dir.clone(),
    ];
    let ids = ["gw-a", "gw-b", "gw-c"];
    let mut pubs = Vec::new();
    for (n, d) in dirs.iter().enumerate() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(17) ^ (n as u8 * 53 + 9) ^ (std::process::id() as u8);
        }
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        write(&d.join("wg.key"), &B64.encode(k), 0o600);
        pubs.push(B64.encode(meshgw_tunnel::wireguard::keys::public_key_of(&k)));
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![ids[n].to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        write(&d.join("peer.crt"), &cert.pem(), 0o644);
        write(&d.join("peer.key"), &key.serialize_pem(), 0o600);
        write(&d.join("ca.crt"), &ca_pem, 0o644);
    }
    let transit = |n: usize, announce: &str, peers: &[(usize, &str, Option<&str>)]| {
        let d = dirs[n].display();
        let mut t = format!(
            r#"
[wireguard]
private_key_file = "{d}/wg.key"
backend = "userspace"

[peering]
gateway_id = "{}"
cert_file = "{d}/peer.crt"
key_file = "{d}/peer.key"
ca_files = ["{d}/ca.crt"]
hold_time_seconds = {HOLD}
announce = {announce}
"#,
            ids[n]
        );
        for (p, ep, quic) in peers {
            t.push_str(&format!(
                "\n[[peer]]\nid = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{ep}\"\npersistent_keepalive = 5\n",
                ids[*p], pubs[*p]
            ));
            if let Some(q) = quic {
                t.push_str(&format!("quic_endpoint = \"{q}\"\n"));
            }
        }
        t
    };
    for n in 0..2 {
        let g = &line.gws[n];
        let name = g.state.file_name().unwrap().to_str().unwrap();
        let peers: Vec<(usize, &str, Option<&str>)> = if n == 0 {
            vec![(1, "192.168.10.2:51820", Some("192.168.10.2:4433"))]
        } else {
            vec![
                (0, "192.168.10.1:51820", None),
                (2, "192.168.20.2:51820", Some("192.168.20.2:4433")),
            ]
        };
        let announce = if n == 0 { r#"["10.1.0.0/24"]"# } else { "[]" };
        let text = format!(
            r#"[gateway]
name = "{name}"
state_dir = "{}"
bpf_pin_dir = "{}"

[interfaces]
legacy = "legacy"
mesh = "mesh"
xdp_mode = "native"

[mesh]
address = "172.18.0.1"

[vips]
pool = ["10.20{}.0.0/24"]
announce = false
{}"#,
            g.state.display(),
            g.pins.display(),
            n + 1,
            transit(n, announce, &peers)
        );
        write(&g.config, &text, 0o644);
    }
    let extra: toml_edit::DocumentMut = transit(2, "[]", &[(1, "192.168.20.1:51820", None)])
        .parse()
        .unwrap();
    lab.write_config(|doc| {
        for (k, v) in extra.iter() {
            doc[k] = v.clone();
        }
    });
}

#[test]
fn legacy_host_reaches_a_pod_service_known_only_to_c_through_b() {
    // C is a full lab gateway (nodes, pods, the portal service echo); A and B only peer.
    let mut lab = lab::Lab::up("transit-svc");
    let mut line = Line::up("s");
    // Line made its own C namespace; this test uses the lab's gateway instead.
    let own_c = line.gws.pop().unwrap();
    let _ = Command::new("ip")
        .args(["netns", "del", &own_c.ns])
        .output();
    let _ = fs::remove_dir_all(&own_c.dir);
    let c_ns = lab.gw();
    let b_ns = line.gws[1].ns.clone();
    // The link B - C (Line wired B's "wc" into its own C namespace, gone with it).
    let _ = Command::new("ip")
        .args(["-n", &b_ns, "link", "del", "wc"])
        .output();
    wire(
        (&b_ns, "wc", "192.168.20.1/24"),
        (&c_ns, "wb", "192.168.20.2/24"),
    );
    // Cilium's VTEP CIDR must cover the legacy prefixes replies go to: the nodes route A's
    // prefix to the gateway as they route the lab's legacy network.
    for n in 1..=2 {
        let node = lab.ns(&format!("node{n}"));
        run(Command::new("ip").args([
            "-n",
            &node,
            "route",
            "replace",
            "10.1.0.0/24",
            "via",
            "169.254.0.1",
            "dev",
            "vxlan0",
            "onlink",
            "encap",
            "ip",
            "id",
            "2",
            "dst",
            "172.18.0.1",
        ]));
    }
    configure_with_lab(&line, &lab);
    lab.start_gateway();
    line.start(0);
    line.start(1);

    // A learns the service through B and serves it under a VIP of its own pool, allocated like
    // its own services' (persisted in its vips.json) and named in its DNS; so does B.
    let vip_b = persisted_vip(&line.gws[1].state, "default/echo");
    assert!(vip_b.starts_with("10.202.0."), "from B's pool: {vip_b}");
    line.wait_routes(
        0,
        &[vip_b.as_str()],
        "A routes B's VIP for the service into the tunnel",
    );
    let vip_a = persisted_vip(&line.gws[0].state, "default/echo");
    let vip_a = vip_a.as_str();
    assert!(vip_a.starts_with("10.201.0."), "from A's pool: {vip_a}");
    // A's kernel accepts the VIP as its own: the IPv4 pool's AnyIP local route covers it.
    let route = lab::ip_json(&line.gws[0].ns, &["route", "get", vip_a]);
    assert_eq!(route[0]["type"], "local", "A does not own {vip_a}: {route}");
    line.wait_status(0, "services learned: default/echo");

    let ha = line.hosts[0].clone();
    let named = lab::run(Command::new("ip").args([
        "netns",
        "exec",
        &ha,
        "dig",
        "@10.1.0.1",
        "+short",
        "+tries=2",
        "+time=1",
        "echo.default.mesh.local",
        "A",
    ]));
    assert_eq!(named.trim(), vip_a, "A's DNS names the imported service");
    let addr: std::net::SocketAddr = format!("{vip_a}:80").parse().unwrap();
    let answers = lab::tcp_many(&ha, addr, 20);
    let mut counts = std::collections::BTreeMap::new();
    for a in &answers {
        match a {
            Ok((_, who)) => *counts.entry(who.clone()).or_insert(0usize) += 1,
            Err(e) => panic!("connection to {addr} through A-B-C failed: {e}; {answers:?}"),
        }
    }
    assert_eq!(counts.values().sum::<usize>(), 20, "{counts:?}");
    lab::assert_both_pods("service across A-B-C", &counts);

    // C stops serving the service (its portal is removed by a reload): A withdraws its VIP and
    // the route to B's.
    let text = fs::read_to_string(&lab.config).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc.remove("service");
    fs::write(&lab.config, doc.to_string()).unwrap();
    lab.reload_gateway();
    line.wait_routes(0, &[], "A withdraws the service's route");
    // A forgets the service (the pool's route stays: every pool address is the gateway's).
    let gone = poll(Duration::from_secs(20), || {
        (!line.status(0).contains("services learned: default/echo")).then_some(())
    });
    assert!(gone.is_some(), "A still serves {vip_a}: {}", line.status(0));
    assert!(
        lab::tcp_many(&ha, addr, 1)[0].is_err(),
        "the withdrawn service still answers"
    );
}

/// The VIP a gateway persisted for `service` (waits for it).
fn persisted_vip(state_dir: &Path, service: &str) -> String {
    let path = state_dir.join("vips.json");
    poll(Duration::from_secs(20), || {
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?;
        v["assigned"][service][0].as_str().map(String::from)
    })
    .unwrap_or_else(|| panic!("no VIP persisted for {service} in {path:?}"))
}

/// 3 MB sent from `from` to 10.3.0.2:5001 in `to` in 1,500-byte writes; every byte checked.
fn transfer_1500(from: &str, to: &str) {
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let listener = lab::in_netns(to, || std::net::TcpListener::bind("10.3.0.2:5001").unwrap());
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
        got
    });
    let sent = data.clone();
    lab::in_netns(from, move || {
        let mut c = std::net::TcpStream::connect("10.3.0.2:5001").unwrap();
        for chunk in sent.chunks(1500) {
            std::io::Write::write_all(&mut c, chunk).unwrap();
        }
    });
    let got = rx.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the stream arrived altered");
}
