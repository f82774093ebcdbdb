//! The packet tests' and the XDP benchmark's shared world: one namespace with `mesh` and
//! `legacy` veths, fixed addresses and permanent neighbours (so the programs' FIB lookups have
//! known answers), the MACs and addresses of every party, and the frames they exchange.

use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, UdpHeader};

use super::{sh, NetNs};

pub const MESH_MAC: [u8; 6] = [2, 0, 0, 0, 0x0e, 1];
pub const LEGACY_MAC: [u8; 6] = [2, 0, 0, 0, 0x1e, 1];
pub const NODE_NH_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
pub const NODE_INNER_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa2];
pub const VTEP_MAC: [u8; 6] = [2, 0x6d, 0x67, 0, 0, 1];
pub const MESH_IP: [u8; 4] = [172, 18, 0, 1];
pub const NODE_IP: [u8; 4] = [172, 18, 0, 11];
pub const CLIENT4: [u8; 4] = [10, 100, 0, 2];
pub const GW4: [u8; 4] = [10, 100, 0, 1];
pub const VIP4: [u8; 4] = [10, 200, 0, 10];
pub const POD4: [u8; 4] = [10, 244, 1, 10];
pub const CLIENT6: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const VIP6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const POD6: [u8; 16] = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const VNI: u32 = 2;

/// The namespace (named after `tag`).
pub fn lab(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    let neigh = |ip: &str, mac: &str, dev: &str| {
        ns.ip(&[
            "neigh",
            "add",
            ip,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
    };
    ns.ip(&[
        "link", "add", "mesh", "type", "veth", "peer", "name", "meshp",
    ]);
    ns.ip(&[
        "link", "add", "legacy", "type", "veth", "peer", "name", "legacyp",
    ]);
    ns.ip(&["link", "set", "mesh", "address", "02:00:00:00:0e:01", "up"]);
    ns.ip(&[
        "link",
        "set",
        "legacy",
        "address",
        "02:00:00:00:1e:01",
        "up",
    ]);
    ns.ip(&["link", "set", "meshp", "up"]);
    ns.ip(&["link", "set", "legacyp", "up"]);
    ns.ip(&["addr", "add", "172.18.0.1/24", "dev", "mesh"]);
    ns.ip(&["addr", "add", "10.100.0.1/24", "dev", "legacy"]);
    ns.ip(&["addr", "add", "fd00:100::1/64", "dev", "legacy", "nodad"]);
    neigh("172.18.0.11", "02:00:00:00:00:11", "mesh");
    neigh("10.100.0.2", "02:00:00:00:00:a2", "legacy");
    neigh("fd00:100::2", "02:00:00:00:00:a2", "legacy");
    // bpf_fib_lookup answers FWD_DISABLED unless the interface forwards (the gateway always does).
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    ns
}

/// An Ethernet + IPv4 + UDP frame.
pub fn udp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap_or_else(|e| panic!("building a UDP frame: {e}"));
    v
}

/// A VXLAN frame from the node at `node_ip` carrying `inner_frame`.
pub fn from_node(inner_frame: &[u8], node_ip: [u8; 4]) -> Vec<u8> {
    let inner_len = inner_frame.len();
    let fail = |e: &dyn std::fmt::Display| -> ! { panic!("building a VXLAN frame: {e}") };
    let ip = Ipv4Header::new((16 + inner_len) as u16, 64, IpNumber::UDP, node_ip, MESH_IP)
        .unwrap_or_else(|e| fail(&e));
    let mut out = Vec::new();
    Ethernet2Header {
        destination: MESH_MAC,
        source: NODE_NH_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap_or_else(|e| fail(&e));
    ip.write(&mut out).unwrap_or_else(|e| fail(&e));
    UdpHeader {
        source_port: 51_000,
        destination_port: 8472,
        length: (16 + inner_len) as u16,
        checksum: 0,
    }
    .write(&mut out)
    .unwrap_or_else(|e| fail(&e));
    out.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    out.extend_from_slice(inner_frame);
    out
}
