//! VIP announcements on the legacy network: a gratuitous ARP for an IPv4 VIP, an unsolicited
//! neighbour advertisement for an IPv6 one, so that hosts which cached another MAC for the
//! address (a previous gateway) switch to ours at once instead of after their cache expires.
//!
//! Frames are built by pure functions and sent on an `AF_PACKET` socket, one [`Announcer`] per
//! daemon: closing a packet socket waits for an RCU grace period (milliseconds on a VM), so a
//! socket per frame made announcing 10,000 VIPs take tens of seconds.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet address of the all-nodes multicast group ff02::1 (33:33 + its last 32 bits).
const ETH_ALL_NODES: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// ff02::1.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// The override flag of a neighbour advertisement: receivers replace the cached MAC.
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// NDP option "target link-layer address".
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// ICMPv6 part of the advertisement: header (4), flags (4), target (16), option (8).
const NA_ICMP_LEN: usize = 32;

/// A send-only `AF_PACKET` socket for announcements, kept open.
#[derive(Debug)]
pub struct Announcer {
    sock: OwnedFd,
}

impl Announcer {
    /// Opens the socket (needs CAP_NET_RAW).
    pub fn new() -> io::Result<Announcer> {
        // Protocol 0: the socket only sends, it never receives a copy of the traffic.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(Announcer {
            sock: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Sends a gratuitous ARP for `ip` with `mac` out of device `ifindex`.
    pub fn gratuitous_arp(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
        self.send_frame(ifindex, ETH_P_ARP, ETH_BROADCAST, &garp_frame(mac, ip))
    }

    /// Sends an unsolicited neighbour advertisement for `ip` with `mac` out of device `ifindex`.
    pub fn unsolicited_na(&self, ifindex: u32, mac: [u8; 6], ip: Ipv6Addr) -> io::Result<()> {
        self.send_frame(
            ifindex,
            ETH_P_IPV6,
            ETH_ALL_NODES,
            &unsolicited_na_frame(mac, ip),
        )
    }
}

/// Sends a gratuitous ARP for `ip` with `mac` out of device `ifindex` (a socket of its own).
pub fn gratuitous_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    Announcer::new()?.gratuitous_arp(ifindex, mac, ip)
}

/// Sends an unsolicited neighbour advertisement (a socket of its own).
pub fn unsolicited_na(ifindex: u32, mac: [u8; 6], ip: Ipv6Addr) -> io::Result<()> {
    Announcer::new()?.unsolicited_na(ifindex, mac, ip)
}

/// A gratuitous ARP as RFC 5227 calls an "ARP announcement": a broadcast request whose sender
/// and target protocol addresses are both `ip`. Linux updates an existing cache entry from it
/// whatever its `arp_accept`, and so do other common stacks.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&ETH_BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // 32..38: target hardware address, zero in an announcement.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 7.2.6): from `ip` to ff02::1, hop limit
/// 255 (receivers drop NDP with any other), override flag set, solicited flag clear, with a
/// target link-layer address option carrying `mac`.
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = [0u8; NA_ICMP_LEN];
    icmp[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    // icmp[1]: code 0; icmp[2..4]: checksum, filled below.
    icmp[4] = NA_FLAG_OVERRIDE;
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = ND_OPT_TARGET_LL_ADDR;
    icmp[25] = 1; // option length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&ip, &ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + NA_ICMP_LEN);
    f.extend_from_slice(&ETH_ALL_NODES);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    f.extend_from_slice(&(NA_ICMP_LEN as u16).to_be_bytes());
    f.push(IPPROTO_ICMPV6);
    f.push(255); // hop limit
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum of `msg` (whose checksum field is zero) between `src` and `dst`: the
/// ones' complement of the ones' complement sum over the pseudo-header and the message.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one complete Ethernet frame out of device `ifindex`.
impl Announcer {
    fn send_frame(
        &self,
        ifindex: u32,
        ethertype: u16,
        dst_mac: [u8; 6],
        frame: &[u8],
    ) -> io::Result<()> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        // SAFETY: the buffer and the address are valid for the lengths given, for the whole call.
        let sent = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "frame sent only in part",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x6d, 0x67, 0x00, 0x00, 0x01];

    #[test]
    fn garp_bytes() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 200, 0, 10));
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x6d, 0x67, 0x00, 0x00, 0x01, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0x6d, 0x67, 0x00, 0x00, 0x01, 10, 200, 0, 10,
            0, 0, 0, 0, 0, 0, 10, 200, 0, 10,
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn garp_parses_as_arp() {
        let f = garp_frame(MAC, Ipv4Addr::new(10, 200, 0, 10));
        let eth = etherparse::Ethernet2Header::from_slice(&f).unwrap().0;
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
        assert_eq!(eth.source, MAC);
    }

    #[test]
    fn na_layout() {
        let ip: Ipv6Addr = "fd00:200::10".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[1], 0);
        assert_eq!(icmp[4], 0x20, "override set, router and solicited clear");
        assert_eq!(&icmp[5..8], &[0, 0, 0]);
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
    }

    #[test]
    fn na_checksum_is_valid() {
        let ip: Ipv6Addr = "fd00:200::10".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip);
        // Independent check: etherparse parses the packet and verifies its checksum.
        let sliced = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        match sliced.transport {
            Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
                assert!(icmp.is_checksum_valid(ip.octets(), ALL_NODES.octets()));
            }
            other => panic!("not ICMPv6: {other:?}"),
        }
        // And the sum over pseudo-header and message folds to 0xffff (complement 0).
        assert_eq!(icmpv6_checksum(&ip, &ALL_NODES, &f[54..]), 0);
    }

    #[test]
    fn checksum_known_value() {
        // Computed by hand: pseudo-header of ::1 -> ::2, then a 4-byte message.
        let src: Ipv6Addr = "::1".parse().unwrap();
        let dst: Ipv6Addr = "::2".parse().unwrap();
        let msg = [0x80, 0x00, 0x00, 0x00];
        // Sum: 1 + 2 + 4 (length) + 58 (next header) + 0x8000 = 0x8041; complement 0x7fbe.
        assert_eq!(icmpv6_checksum(&src, &dst, &msg), 0x7fbe);
    }
}
