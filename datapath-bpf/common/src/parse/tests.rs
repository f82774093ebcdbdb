use super::*;
use crate::maps::v4_mapped;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::vec::Vec;

const CLIENT4: [u8; 4] = [10, 100, 0, 2];
const VIP4: [u8; 4] = [10, 200, 0, 10];
const POD4: [u8; 4] = [10, 244, 1, 10];
const CLIENT6: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const POD6: [u8; 16] = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn tcp4(payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(40_000, 80, 1234, 4096)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp6(payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(CLIENT6, VIP6, 64)
        .udp(5353, 53);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn flow(buf: &mut [u8]) -> Parsed {
    parse(&SlicePacket::new(buf), 0)
}

fn checksums_valid(frame: &[u8]) -> bool {
    let s = SlicedPacket::from_ethernet(frame).unwrap();
    match (s.net.unwrap(), s.transport.unwrap()) {
        (etherparse::NetSlice::Ipv4(ip), TransportSlice::Tcp(t)) => {
            let h = ip.header().to_header();
            h.header_checksum == h.calc_header_checksum()
                && t.to_header().checksum
                    == t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
        }
        (etherparse::NetSlice::Ipv4(ip), TransportSlice::Udp(u)) => {
            let h = ip.header().to_header();
            h.header_checksum == h.calc_header_checksum()
                && u.to_header().checksum
                    == u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap()
        }
        (etherparse::NetSlice::Ipv6(ip), TransportSlice::Tcp(t)) => {
            let h = ip.header().to_header();
            t.to_header().checksum == t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap()
        }
        (etherparse::NetSlice::Ipv6(ip), TransportSlice::Udp(u)) => {
            let h = ip.header().to_header();
            u.to_header().checksum == u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap()
        }
        _ => false,
    }
}

#[test]
fn parses_ipv4_tcp() {
    let mut f = tcp4(b"hello");
    let Parsed::Flow(fl) = flow(&mut f) else {
        panic!("not a flow")
    };
    assert_eq!(fl.family, FAMILY_V4);
    assert_eq!(fl.proto, IPPROTO_TCP);
    assert_eq!(fl.src, v4_mapped(CLIENT4));
    assert_eq!(fl.dst, v4_mapped(VIP4));
    assert_eq!(u16::from_be(fl.sport), 40_000);
    assert_eq!(u16::from_be(fl.dport), 80);
    assert_eq!(fl.tcp_flags & TCP_SYN, TCP_SYN);
    assert_eq!((fl.l3_off, fl.l4_off, fl.l3_len), (14, 34, 20 + 20 + 5));
    assert!(!fl.vlan && !fl.fragment);
}

#[test]
fn parses_one_vlan_tag() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(100).unwrap())
        .ipv4(CLIENT4, VIP4, 64)
        .udp(1000, 53);
    let mut v = Vec::new();
    b.write(&mut v, b"q").unwrap();
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert!(fl.vlan);
    assert_eq!(fl.vlan_tci & 0x0fff, 100);
    assert_eq!(fl.l3_off, 18);
    assert_eq!(u16::from_be(fl.dport), 53);
}

#[test]
fn qinq_is_left_to_the_kernel() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(
            etherparse::VlanId::try_new(1).unwrap(),
            etherparse::VlanId::try_new(2).unwrap(),
        )
        .ipv4(CLIENT4, VIP4, 64)
        .udp(1000, 53);
    let mut v = Vec::new();
    b.write(&mut v, b"q").unwrap();
    assert_eq!(flow(&mut v), Parsed::Other);
}

#[test]
fn parses_ipv6_udp_and_icmp_echo() {
    let mut v = udp6(b"x");
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert_eq!(
        (fl.family, fl.proto, fl.l4_off),
        (FAMILY_V6, IPPROTO_UDP, 54)
    );
    assert_eq!(fl.dst, VIP6);

    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .icmpv4_echo_request(0x1234, 1);
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert_eq!((fl.proto, u16::from_be(fl.sport)), (IPPROTO_ICMP, 0x1234));

    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(CLIENT6, VIP6, 64)
        .icmpv6_echo_request(7, 1);
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert_eq!((fl.proto, u16::from_be(fl.sport)), (IPPROTO_ICMPV6, 7));
}

#[test]
fn other_icmp_and_arp_are_other() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .icmpv4(etherparse::Icmpv4Type::TimestampRequest(
            etherparse::icmpv4::TimestampMessage {
                id: 1,
                seq: 1,
                originate_timestamp: 0,
                receive_timestamp: 0,
                transmit_timestamp: 0,
            },
        ));
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    assert_eq!(flow(&mut v), Parsed::Other);
    let mut arp = [0u8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(flow(&mut arp), Parsed::Other);
}

#[test]
fn every_truncation_is_malformed_or_other_never_a_flow_past_the_end() {
    for full in [tcp4(b"abc"), udp6(b"abcdef")] {
        for cut in 0..full.len() {
            let mut v = full[..cut].to_vec();
            match flow(&mut v) {
                Parsed::Malformed | Parsed::Other => {}
                Parsed::Flow(fl) => panic!("cut at {cut} parsed as {fl:?}"),
            }
        }
    }
}

#[test]
fn inconsistent_lengths_are_malformed() {
    let mut v = tcp4(b"abc");
    v[14] = 0x44; // IHL 4
    assert_eq!(flow(&mut v), Parsed::Malformed);
    let mut v = tcp4(b"abc");
    v[16] = 0xff; // total length beyond the frame
    assert_eq!(flow(&mut v), Parsed::Malformed);
    let mut v = tcp4(b"abc");
    v[14 + 20 + 12] = 0x40; // TCP data offset 16 bytes
    assert_eq!(flow(&mut v), Parsed::Malformed);
    let mut v = udp6(b"abc");
    v[14 + 40 + 5] = 0xff; // UDP length beyond the payload
    assert_eq!(flow(&mut v), Parsed::Malformed);
    let mut v = tcp4(b"");
    v[14] = 0x65; // version 6 in an IPv4 ethertype
    assert_eq!(flow(&mut v), Parsed::Malformed);
}

#[test]
fn fragments_are_flagged() {
    let mut v = tcp4(b"abc");
    v[14 + 6] = 0x20; // MF
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert!(fl.fragment);
}

#[test]
fn inner_frame_at_an_offset() {
    let inner = tcp4(b"zz");
    let mut v = std::vec![0u8; 50];
    v.extend_from_slice(&inner);
    let Parsed::Flow(fl) = flow_at(&mut v, 50) else {
        panic!()
    };
    assert_eq!((fl.l2_off, fl.l3_off, fl.l4_off), (50, 64, 84));
}

fn flow_at(buf: &mut [u8], base: usize) -> Parsed {
    parse(&SlicePacket::new(buf), base)
}

fn rewrite_and_check(mut frame: Vec<u8>, side: Side, addr: [u8; 16], port: u16) -> Vec<u8> {
    let Parsed::Flow(fl) = flow(&mut frame) else {
        panic!()
    };
    rewrite(
        &SlicePacket::new(&mut frame),
        &fl,
        side,
        &addr,
        port.to_be(),
    )
    .unwrap();
    assert!(checksums_valid(&frame), "checksums after rewrite");
    frame
}

#[test]
fn dnat_ipv4_tcp_and_udp_keep_checksums_valid() {
    let out = rewrite_and_check(
        tcp4(b"GET / HTTP/1.0\r\n\r\n"),
        Side::Destination,
        v4_mapped(POD4),
        8080,
    );
    let s = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
        panic!()
    };
    assert_eq!(ip.header().destination(), POD4);
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .udp(999, 53);
    let mut v = Vec::new();
    b.write(&mut v, b"payload!").unwrap();
    rewrite_and_check(v, Side::Destination, v4_mapped(POD4), 5353);
}

#[test]
fn dnat_and_snat_ipv6() {
    let out = rewrite_and_check(udp6(b"abc"), Side::Destination, POD6, 5353);
    let back = rewrite_and_check(out, Side::Source, CLIENT6, 1);
    let s = SlicedPacket::from_ethernet(&back).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = s.net else {
        panic!()
    };
    assert_eq!(ip.header().source(), CLIENT6);
    assert_eq!(ip.header().destination(), POD6);
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .udp(999, 53);
    let mut v = Vec::new();
    b.write(&mut v, b"x").unwrap();
    v[14 + 20 + 6] = 0;
    v[14 + 20 + 7] = 0;
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    rewrite(
        &SlicePacket::new(&mut v),
        &fl,
        Side::Destination,
        &v4_mapped(POD4),
        53u16.to_be(),
    )
    .unwrap();
    assert_eq!(&v[40..42], &[0, 0]);
    assert_eq!(&v[30..34], &POD4);
}

#[test]
fn rewrite_refuses_icmp() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT4, VIP4, 64)
        .icmpv4_echo_request(1, 1);
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    let before = v.clone();
    let Parsed::Flow(fl) = flow(&mut v) else {
        panic!()
    };
    assert!(rewrite(
        &SlicePacket::new(&mut v),
        &fl,
        Side::Destination,
        &v4_mapped(POD4),
        1
    )
    .is_none());
    assert_eq!(v, before);
}

#[test]
fn flow_hash_of_a_parsed_flow_is_the_hash_of_its_5_tuple() {
    let f = Flow {
        src: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        dst: [
            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
        ],
        sport: 40_000u16.to_be(),
        dport: 53u16.to_be(),
        proto: 17,
        ..Flow::default()
    };
    assert_eq!(
        f.hash(),
        crate::hash::flow_hash(&f.src, &f.dst, f.sport, f.dport, f.proto)
    );
}
