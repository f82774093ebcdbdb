//! VIP announcements on a real veth pair: the exact frames arrive on the peer, and the peer's
//! kernel updates a cached neighbour entry from them (to the announcing MAC).
//!
//! These need root and panic with "needs root" otherwise.
// A panic is how a test reports failure, helpers included.
#![allow(clippy::unwrap_used)]

#[path = "../src/netlink/mod.rs"]
mod netlink;
mod netlink_netns;

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use netlink::announce;
use netlink_netns::{parse_mac, poll, Netns};

const ETH_P_ALL: u16 = 0x0003;
const OLD_MAC: &str = "02:00:00:00:00:99";

/// A packet socket receiving every frame that arrives on one device.
struct Capture(OwnedFd);

impl Capture {
    fn open(ifindex: u32) -> Capture {
        // SAFETY: plain socket(2) call, checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: valid address of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: valid option value of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        Capture(fd)
    }

    /// Waits up to `timeout` for a frame equal to `want`.
    fn expect(&self, want: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && &buf[..n as usize] == want {
                return true;
            }
        }
        false
    }
}

/// One namespace with a veth pair: `gw0` announces, `host0` listens and caches neighbours.
fn pair() -> Netns {
    let ns = Netns::new("announce");
    ns.ip(&[
        "link", "add", "gw0", "type", "veth", "peer", "name", "host0",
    ]);
    ns.ip(&["link", "set", "gw0", "up"]);
    ns.ip(&["addr", "add", "10.200.0.1/24", "dev", "host0"]);
    ns.ip(&["addr", "add", "fd00:200::1/64", "dev", "host0", "nodad"]);
    ns.ip(&["link", "set", "host0", "up"]);
    ns
}

fn cached_mac(ns: &Netns, addr: &str) -> Option<[u8; 6]> {
    let v = ns.ip_json(&["neigh", "show", "dev", "host0"]);
    v.as_array()?
        .iter()
        .find(|n| n["dst"] == addr)
        .and_then(|n| n["lladdr"].as_str().map(parse_mac))
}

#[test]
fn gratuitous_arp_updates_the_peer() {
    let ns = pair();
    let gw = ns.ifindex("gw0");
    let host = ns.ifindex("host0");
    let mac = ns.mac("gw0");
    let vip = Ipv4Addr::new(10, 200, 0, 10);
    // The host cached another MAC for the VIP (a previous gateway).
    ns.ip(&[
        "neigh",
        "add",
        "10.200.0.10",
        "lladdr",
        OLD_MAC,
        "dev",
        "host0",
        "nud",
        "stale",
    ]);
    let seen = ns.run(|| {
        let cap = Capture::open(host);
        announce::gratuitous_arp(gw, mac, vip).unwrap();
        cap.expect(&announce::garp_frame(mac, vip), Duration::from_secs(2))
    });
    assert!(seen, "the GARP frame did not arrive on the peer as built");
    let updated = poll(Duration::from_secs(2), || {
        cached_mac(&ns, "10.200.0.10").filter(|m| *m == mac)
    });
    assert_eq!(
        updated,
        Some(mac),
        "the peer's ARP cache now points at the gateway"
    );
}

#[test]
fn unsolicited_na_updates_the_peer() {
    let ns = pair();
    let gw = ns.ifindex("gw0");
    let host = ns.ifindex("host0");
    let mac = ns.mac("gw0");
    let vip: Ipv6Addr = "fd00:200::10".parse().unwrap();
    ns.ip(&[
        "-6",
        "neigh",
        "add",
        "fd00:200::10",
        "lladdr",
        OLD_MAC,
        "dev",
        "host0",
        "nud",
        "stale",
    ]);
    let seen = ns.run(|| {
        let cap = Capture::open(host);
        announce::unsolicited_na(gw, mac, vip).unwrap();
        cap.expect(
            &announce::unsolicited_na_frame(mac, vip),
            Duration::from_secs(2),
        )
    });
    assert!(seen, "the NA frame did not arrive on the peer as built");
    // The kernel validates hop limit, checksum and the option before using the advertisement,
    // so an update proves the frame is well-formed; the override flag replaces the old MAC.
    let updated = poll(Duration::from_secs(2), || {
        cached_mac(&ns, "fd00:200::10").filter(|m| *m == mac)
    });
    assert_eq!(
        updated,
        Some(mac),
        "the peer's neighbour cache now points at the gateway"
    );
}

#[test]
fn sending_on_a_missing_device_fails() {
    let ns = Netns::new("announce-err");
    let err = ns
        .run(|| announce::gratuitous_arp(4242, [2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 1)))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{err}");
}
