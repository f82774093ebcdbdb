//! Two or three engines exchanging datagrams in memory: real Noise handshakes and real
//! ChaCha20-Poly1305, no devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};

use boringtun::x25519::StaticSecret;

use super::*;

fn secret(n: u8) -> [u8; 32] {
    let mut k = [n; 32];
    k[0] &= 248;
    k
}

fn public(n: u8) -> [u8; 32] {
    keys::public_of(&StaticSecret::from(secret(n))).to_bytes()
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 51820))
}

fn peer(n: u8, allowed: &str, endpoint: bool) -> WgPeerConfig {
    WgPeerConfig {
        id: format!("gw{n}"),
        public_key: public(n),
        endpoint: endpoint.then(|| addr(n)),
        allowed_ips: allowed.split(',').map(|s| s.parse().unwrap()).collect(),
        persistent_keepalive: None,
    }
}

fn device(n: u8, peers: Vec<WgPeerConfig>) -> WgDeviceConfig {
    WgDeviceConfig {
        interface: format!("wg{n}"),
        listen_port: 51820,
        private_key: secret(n),
        mtu: 1420,
        peers,
    }
}

/// An IPv4 packet with a correct total length (all boringtun checks).
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// Delivers `outs` (sent by the engine at `from`) to `to`; returns what `to` wrote to its TUN
/// and what it sent back.
fn deliver(from: u8, to: &mut Engine, outs: Vec<Output>) -> (Vec<Vec<u8>>, Vec<Output>) {
    let mut tun = Vec::new();
    let mut back = Vec::new();
    for o in outs {
        match o {
            Output::Network(_, d) => to.from_network(addr(from), &d, &mut back),
            Output::Tun(p) => panic!("not a datagram: {p:?}"),
        }
    }
    back.retain(|o| match o {
        Output::Tun(p) => {
            tun.push(p.clone());
            false
        }
        Output::Network(..) => true,
    });
    (tun, back)
}

/// A (1, behind 10.1/16) and B (2, behind 10.2/16) with a completed handshake carrying one
/// packet from A to B.
fn pair() -> (Engine, Engine) {
    let mut a = Engine::new(&device(1, vec![peer(2, "10.2.0.0/16", true)])).unwrap();
    let mut b = Engine::new(&device(2, vec![peer(1, "10.1.0.0/16", false)])).unwrap();
    let pkt = ipv4([10, 1, 0, 1], [10, 2, 0, 5], b"hello");
    let mut out = Vec::new();
    a.from_tun(&pkt, &mut out);
    assert_eq!(out.len(), 1, "one handshake initiation");
    let (tun, back) = deliver(1, &mut b, out);
    assert!(tun.is_empty());
    let (tun, data) = deliver(2, &mut a, back);
    assert!(tun.is_empty());
    let (tun, _) = deliver(1, &mut b, data);
    assert_eq!(
        tun,
        vec![pkt],
        "the queued packet arrives after the handshake"
    );
    (a, b)
}

#[test]
fn handshake_then_data_both_ways_with_counters() {
    let (mut a, mut b) = pair();
    let reply = ipv4([10, 2, 0, 5], [10, 1, 0, 1], b"world");
    let mut out = Vec::new();
    b.from_tun(&reply, &mut out);
    // B learned A's endpoint from the authenticated handshake (it had none configured).
    assert!(matches!(&out[..], [Output::Network(ep, _)] if *ep == addr(1)));
    let (tun, _) = deliver(2, &mut a, out);
    assert_eq!(tun, vec![reply.clone()]);
    let sa = a.status("userspace");
    let c = &sa.peers[0].counters;
    assert_eq!((c.tx_packets, c.rx_packets), (1, 1));
    assert_eq!((c.tx_bytes, c.rx_bytes), (25, reply.len() as u64));
    assert!(sa.peers[0].last_handshake_secs.is_some());
    assert_eq!(b.status("userspace").peers[0].endpoint, Some(addr(1)));
}

#[test]
fn tampered_data_packet_is_dropped_and_counted() {
    let (mut a, mut b) = pair();
    let pkt = ipv4([10, 1, 0, 1], [10, 2, 0, 9], b"payload");
    let mut out = Vec::new();
    a.from_tun(&pkt, &mut out);
    let Output::Network(_, mut d) = out.pop().unwrap() else {
        panic!()
    };
    let last = d.len() - 1;
    d[last] ^= 0x01;
    let (tun, back) = deliver(1, &mut b, vec![Output::Network(addr(2), d.clone())]);
    assert!(tun.is_empty() && back.is_empty());
    let s = b.status("userspace");
    assert_eq!(s.peers[0].counters.tampered, 1);
    assert_eq!(
        s.peers[0].counters.rx_packets, 1,
        "only the handshake's packet"
    );
    // The untampered original still passes (the forgery did not burn its counter).
    d[last] ^= 0x01;
    let (tun, _) = deliver(1, &mut b, vec![Output::Network(addr(2), d)]);
    assert_eq!(tun, vec![pkt]);
}

#[test]
fn garbage_and_unknown_receivers_are_counted_on_the_device() {
    let (_a, mut b) = pair();
    let mut out = Vec::new();
    b.from_network(addr(9), b"not wireguard", &mut out);
    let mut data = vec![4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f];
    data.extend_from_slice(&[0; 40]);
    b.from_network(addr(9), &data, &mut out);
    assert!(out.is_empty());
    let c = b.status("userspace").counters;
    assert_eq!((c.malformed, c.unknown_peer), (1, 1));
}

#[test]
fn inner_source_outside_allowed_ips_is_dropped() {
    let (mut a, mut b) = pair();
    let spoofed = ipv4([10, 9, 0, 1], [10, 2, 0, 5], b"x");
    let mut out = Vec::new();
    a.from_tun(&spoofed, &mut out);
    let (tun, _) = deliver(1, &mut b, out);
    assert!(tun.is_empty());
    assert_eq!(b.status("userspace").peers[0].counters.src_not_allowed, 1);
}

#[test]
fn longest_allowed_ip_wins_and_unrouted_is_counted() {
    let cfg = device(
        1,
        vec![peer(2, "10.0.0.0/8", true), peer(3, "10.3.0.0/16", true)],
    );
    let mut a = Engine::new(&cfg).unwrap();
    let mut out = Vec::new();
    a.from_tun(&ipv4([10, 1, 0, 1], [10, 3, 1, 1], b""), &mut out);
    a.from_tun(&ipv4([10, 1, 0, 1], [10, 4, 1, 1], b""), &mut out);
    a.from_tun(&ipv4([10, 1, 0, 1], [172, 16, 0, 1], b""), &mut out);
    let dests: Vec<_> = out
        .iter()
        .map(|o| match o {
            Output::Network(ep, _) => *ep,
            Output::Tun(_) => panic!(),
        })
        .collect();
    assert_eq!(dests, vec![addr(3), addr(2)]);
    assert_eq!(a.status("userspace").counters.no_route, 1);
    let _ = Ipv4Addr::LOCALHOST;
}

#[test]
fn rotating_one_peer_key_keeps_the_other_session() {
    // B talks to A and C; C rotates its key (C is now key 4).
    let mut a = Engine::new(&device(1, vec![peer(2, "10.2.0.0/16", true)])).unwrap();
    let mut b = Engine::new(&device(
        2,
        vec![peer(1, "10.1.0.0/16", true), peer(3, "10.3.0.0/16", true)],
    ))
    .unwrap();
    let mut out = Vec::new();
    a.from_tun(&ipv4([10, 1, 0, 1], [10, 2, 0, 5], b"1"), &mut out);
    let (_, back) = deliver(1, &mut b, out);
    let (_, data) = deliver(2, &mut a, back);
    let (tun, _) = deliver(1, &mut b, data);
    assert_eq!(tun.len(), 1);

    let mut c4 = peer(4, "10.3.0.0/16", true);
    c4.id = "gw3".into();
    let report = b
        .apply(&device(2, vec![peer(1, "10.1.0.0/16", true), c4]))
        .unwrap();
    assert_eq!(report.kept, vec!["gw1".to_owned()]);
    assert_eq!(report.added, vec!["gw3".to_owned()]);
    assert_eq!(report.removed, vec!["gw3".to_owned()]);
    assert!(!report.own_key_changed);

    // A's next packet is a data message (type 4) that B decrypts at once: no new handshake.
    let mut out = Vec::new();
    a.from_tun(&ipv4([10, 1, 0, 1], [10, 2, 0, 6], b"2"), &mut out);
    assert!(matches!(&out[..], [Output::Network(_, d)] if d[0] == 4));
    let (tun, _) = deliver(1, &mut b, out);
    assert_eq!(tun.len(), 1);
    assert_eq!(b.status("userspace").peers[0].counters.rx_packets, 2);
}

#[test]
fn own_key_rotation_renegotiates_with_peers_that_know_the_new_key() {
    let (mut a, mut b) = pair();
    // A rotates to key 5; B's config is updated with A's new public key.
    let mut new_a = device(1, vec![peer(2, "10.2.0.0/16", true)]);
    new_a.private_key = secret(5);
    assert!(a.apply(&new_a).unwrap().own_key_changed);
    let mut a_on_b = peer(5, "10.1.0.0/16", false);
    a_on_b.id = "gw1".into();
    let r = b.apply(&device(2, vec![a_on_b])).unwrap();
    assert_eq!((r.added.len(), r.removed.len()), (1, 1));
    let pkt = ipv4([10, 1, 0, 1], [10, 2, 0, 5], b"after");
    let mut out = Vec::new();
    a.from_tun(&pkt, &mut out);
    assert!(
        matches!(&out[..], [Output::Network(_, d)] if d[0] == 1),
        "new handshake"
    );
    let (_, back) = deliver(1, &mut b, out);
    let (_, data) = deliver(2, &mut a, back);
    let (tun, _) = deliver(1, &mut b, data);
    assert_eq!(tun, vec![pkt]);
}
