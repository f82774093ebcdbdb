//! The boringtun data plane between two network namespaces joined by a veth pair: real TUN
//! devices, real UDP, real kernel routing, real ping and TCP.
//!
//! These need root and panic with "needs root" otherwise; they never pass silently.
// A panic is how a test reports failure, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::thread;
use std::time::Duration;

use meshgw_tunnel::mtu::{tunnel_mtu, Encap};
use meshgw_tunnel::wireguard::userspace::UserspaceDevice;
use meshgw_tunnel::wireguard::{keys, DeviceStatus, WgDeviceConfig, WgPeerConfig};

const PORT: u16 = 51820;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside the namespace.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap();
            // SAFETY: setns with a valid namespace fd; it moves this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn secret(n: u8) -> [u8; 32] {
    let mut k = [n; 32];
    k[0] &= 248;
    k
}

fn public(n: u8) -> [u8; 32] {
    keys::public_of(&boringtun::x25519::StaticSecret::from(secret(n))).to_bytes()
}

/// One side: a namespace, its device (with the runtime that drives it).
struct Side {
    ns: String,
    rt: tokio::runtime::Runtime,
    dev: Option<UserspaceDevice>,
}

impl Side {
    fn status(&self) -> DeviceStatus {
        self.rt
            .block_on(self.dev.as_ref().unwrap().status())
            .unwrap()
    }
}

/// Two namespaces 192.168.<net>.1/.2 on a veth pair, each with a WireGuard interface `wg0`:
/// A is 10.1.0.1 (10.1.0.0/16 behind it), B 10.2.0.1; A knows B's endpoint, B learns A's.
struct Pair {
    a: Side,
    b: Side,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.dev.take();
        self.b.dev.take();
        for ns in [&self.a.ns, &self.b.ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn pair(tag: &str, net: u8) -> Pair {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root: the WireGuard tests create network namespaces and TUN devices");
    }
    let ns = |s: &str| format!("mgwt-wg-{tag}-{s}-{}", std::process::id());
    let (na, nb) = (ns("a"), ns("b"));
    for n in [&na, &nb] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        run(Command::new("ip").args(["netns", "add", n]));
        run(Command::new("ip").args(["-n", n, "link", "set", "lo", "up"]));
    }
    run(Command::new("ip").args([
        "link", "add", "name", "ua", "netns", &na, "type", "veth", "peer", "name", "ub", "netns",
        &nb,
    ]));
    for (n, dev, host) in [(&na, "ua", 1), (&nb, "ub", 2)] {
        let addr = format!("192.168.{net}.{host}/24");
        run(Command::new("ip").args(["-n", n, "addr", "add", &addr, "dev", dev]));
        run(Command::new("ip").args(["-n", n, "link", "set", dev, "up"]));
    }
    let mtu = tunnel_mtu(1500, Encap::WireguardV4).unwrap();
    let cfg = |me: u8, other: u8, endpoint: Option<SocketAddr>| WgDeviceConfig {
        interface: "wg0".into(),
        listen_port: PORT,
        private_key: secret(me),
        mtu,
        peers: vec![WgPeerConfig {
            id: format!("gw{other}"),
            public_key: public(other),
            endpoint,
            allowed_ips: vec![format!("10.{other}.0.0/16").parse().unwrap()],
            persistent_keepalive: None,
        }],
    };
    let b_ep = SocketAddr::from(([192, 168, net, 2], PORT));
    let side = |n: &str, c: WgDeviceConfig, me: u8, other: u8| {
        let (rt, dev) = in_ns(n, || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let dev = rt.block_on(UserspaceDevice::start(&c)).unwrap();
            (rt, dev)
        });
        let addr = format!("10.{me}.0.1/32");
        run(Command::new("ip").args(["-n", n, "addr", "add", &addr, "dev", "wg0"]));
        let route = format!("10.{other}.0.0/16");
        let src = format!("10.{me}.0.1");
        run(Command::new("ip").args(["-n", n, "route", "add", &route, "dev", "wg0", "src", &src]));
        Side {
            ns: n.to_owned(),
            rt,
            dev: Some(dev),
        }
    };
    Pair {
        a: side(&na, cfg(1, 2, Some(b_ep)), 1, 2),
        b: side(&nb, cfg(2, 1, None), 2, 1),
    }
}

#[test]
fn ping_crosses_and_every_packet_is_counted() {
    let p = pair("ping", 71);
    run(Command::new("ip").args([
        "netns", "exec", &p.a.ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", "10.2.0.1",
    ]));
    let (a, b) = (p.a.status(), p.b.status());
    assert_eq!(a.backend, "userspace");
    let (ca, cb) = (&a.peers[0].counters, &b.peers[0].counters);
    assert_eq!((ca.tx_packets, ca.rx_packets), (3, 3), "{a:?}");
    assert_eq!((cb.tx_packets, cb.rx_packets), (3, 3), "{b:?}");
    // 84-byte echo packets (20 IP + 8 ICMP + 56 data) each way.
    assert_eq!((ca.tx_bytes, cb.rx_bytes), (252, 252));
    assert!(a.peers[0].last_handshake_secs.is_some());
    // B learned A's endpoint from the handshake.
    assert_eq!(
        b.peers[0].endpoint,
        Some(SocketAddr::from(([192, 168, 71, 1], PORT)))
    );
    assert_eq!((ca.tampered, cb.tampered, cb.dropped), (0, 0, 0));
}

#[test]
fn tcp_transfer_of_full_size_segments_arrives_intact() {
    let p = pair("tcp", 72);
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let listener = in_ns(&p.b.ns, || TcpListener::bind("10.2.0.1:5001").unwrap());
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let sent = data.clone();
    in_ns(&p.a.ns, move || {
        let mut c = TcpStream::connect("10.2.0.1:5001").unwrap();
        c.write_all(&sent).unwrap();
    });
    let got = server.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the received stream differs from the sent one");
    // Full-size segments crossed: more inner bytes than packets times a small segment.
    let b = p.b.status();
    let c = &b.peers[0].counters;
    assert!(c.rx_bytes >= data.len() as u64);
    assert!(c.rx_bytes / c.rx_packets > 1000, "{c:?}");
}

/// Captures one WireGuard data message (type 4) arriving on the veth in this namespace.
fn capture_data_message(dev: &str, port: u16) -> Vec<u8> {
    // SAFETY: plain socket creation; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            i32::from((libc::ETH_P_IP as u16).to_be()),
        )
    };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: if_nametoindex with a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0);
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        // SAFETY: recv into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no WireGuard data message seen: {}",
            std::io::Error::last_os_error()
        );
        let pkt = &buf[..n as usize];
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if pkt[9] != 17 || pkt.len() < ihl + 8 + 32 {
            continue;
        }
        let udp = &pkt[ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) == port && udp[8] == 4 && udp.len() > 8 + 32 {
            return udp[8..].to_vec();
        }
    }
}

#[test]
fn tampered_packet_is_dropped_and_counted_and_a_replay_too() {
    let p = pair("tamper", 73);
    let nb = p.b.ns.clone();
    let capture = thread::spawn(move || in_ns(&nb, || capture_data_message("ub", PORT)));
    thread::sleep(Duration::from_millis(200));
    run(Command::new("ip").args([
        "netns", "exec", &p.a.ns, "ping", "-c", "2", "-i", "0.3", "-W", "5", "10.2.0.1",
    ]));
    let original = capture.join().unwrap();
    let before = p.b.status().peers[0].counters.clone();
    assert_eq!((before.tampered, before.dropped), (0, 0));
    // B has already received the original, so a copy with an altered payload would be refused
    // as a replay before its tag is checked. Alter the counter instead (bytes 8..16, little
    // endian; +2^32 lies ahead of the replay window): the counter is the AEAD nonce, so only
    // the authentication tag can catch it.
    let mut tampered = original.clone();
    tampered[12] ^= 0x01;
    in_ns(&p.a.ns, || {
        let s = UdpSocket::bind("192.168.73.1:0").unwrap();
        s.send_to(&tampered, ("192.168.73.2", PORT)).unwrap();
        s.send_to(&original, ("192.168.73.2", PORT)).unwrap();
    });
    // The datagrams are processed in order; a status query queued behind them sees both.
    let mut after = p.b.status().peers[0].counters.clone();
    for _ in 0..50 {
        if after.tampered + after.dropped >= 2 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        after = p.b.status().peers[0].counters.clone();
    }
    assert_eq!(after.tampered, 1, "{after:?}");
    assert_eq!(
        after.dropped, 1,
        "the replayed original is refused: {after:?}"
    );
    assert_eq!(
        after.rx_packets, before.rx_packets,
        "nothing more delivered"
    );
}

#[test]
fn kernel_probe_agrees_with_iproute2() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root: the probe creates a device in a network namespace");
    }
    let ns = format!("mgwt-wg-probe-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    run(Command::new("ip").args(["netns", "add", &ns]));
    let by_ip = Command::new("ip")
        .args(["-n", &ns, "link", "add", "wgx", "type", "wireguard"])
        .output()
        .unwrap()
        .status
        .success();
    let _ = Command::new("ip")
        .args(["-n", &ns, "link", "del", "wgx"])
        .output();
    let by_us = in_ns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let ok = meshgw_tunnel::wireguard::kernel::kernel_available(
                &handle,
                std::path::Path::new("/sys/module"),
            )
            .await;
            // The probe leaves nothing behind.
            let mut links = handle.link().get().execute();
            let mut names = Vec::new();
            while let Some(Ok(l)) = futures::StreamExt::next(&mut links).await {
                names.push(format!("{:?}", l.attributes));
            }
            assert!(!names.iter().any(|n| n.contains("mgw-wgprobe")));
            ok
        })
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    assert_eq!(
        by_us, by_ip,
        "the probe and `ip link add type wireguard` disagree"
    );
    let selected = meshgw_tunnel::wireguard::select_backend(std::path::Path::new("/sys/module"));
    eprintln!("kernel WireGuard available: {by_us}; module-directory selection: {selected:?}");
}
