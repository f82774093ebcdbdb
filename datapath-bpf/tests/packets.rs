#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! Runs crafted frames through the loaded XDP programs with BPF_PROG_TEST_RUN and compares the
//! output bytes with frames built independently (etherparse), as Cilium's `bpf/tests` do.
//! Needs root: the programs are loaded into the kernel and the FIB lookups resolve in a private
//! network namespace set up here.

mod support;

use etherparse::{Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, UdpHeader};
use meshgw_common::hash::{flow_hash, vxlan_source_port};
use meshgw_common::maps::*;
use meshgw_common::stats::Counter;
use meshgw_datapath::{action, Datapath, Program};
use support::topology::*;
use support::{ifindex, sh, NetNs};

fn lab() -> NetNs {
    support::topology::lab("pkt")
}

fn udp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    support::topology::udp4(src, sport, dst, dport, smac, dmac, b"query")
}

fn v6key(a: [u8; 16]) -> [u8; 16] {
    a
}

fn svc_key(addr: [u8; 16], port: u16, proto: u8, family: u8) -> ServiceKey {
    ServiceKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

fn backend(addr: [u8; 16], port: u16, family: u8) -> BackendValue {
    BackendValue {
        addr,
        port: port.to_be(),
        family,
        node_ip: NODE_IP,
        node_mac: NODE_INNER_MAC,
        ..Default::default()
    }
}

/// Loads the datapath and programs: TCP 80 / UDP 53 on VIP4 and VIP6, each to one backend;
/// TCP 81 on VIP4 with no backend.
fn datapath() -> Datapath {
    let mut dp = Datapath::load_private().expect("load (verifier) ok");
    let (mesh, legacy) = (ifindex("mesh"), ifindex("legacy"));
    dp.set_config(&GatewayConfig {
        mesh_ip: MESH_IP,
        vni: VNI,
        vxlan_port: 8472u16.to_be(),
        flags: CFG_F_ENABLED,
        mesh_ifindex: mesh,
        legacy_ifindex: legacy,
        vtep_mac: VTEP_MAC,
        _pad: [0; 2],
    })
    .unwrap();
    dp.set_devices(mesh, legacy).unwrap();
    let entries = [
        (
            svc_key(v4_mapped(VIP4), 80, 6, FAMILY_V4),
            1,
            backend(v4_mapped(POD4), 8080, FAMILY_V4),
        ),
        (
            svc_key(v4_mapped(VIP4), 53, 17, FAMILY_V4),
            2,
            backend(v4_mapped(POD4), 5353, FAMILY_V4),
        ),
        (
            svc_key(v6key(VIP6), 80, 6, FAMILY_V6),
            3,
            backend(POD6, 8080, FAMILY_V6),
        ),
        (
            svc_key(v6key(VIP6), 53, 17, FAMILY_V6),
            4,
            backend(POD6, 5353, FAMILY_V6),
        ),
    ];
    for (k, id, b) in entries {
        dp.services()
            .unwrap()
            .insert(
                k,
                ServiceValue {
                    service_id: id,
                    backend_count: 1,
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        dp.maglev()
            .unwrap()
            .insert(id, MaglevTable::filled(id), 0)
            .unwrap();
        dp.backends().unwrap().insert(id, b, 0).unwrap();
    }
    dp.services()
        .unwrap()
        .insert(
            svc_key(v4_mapped(VIP4), 81, 6, FAMILY_V4),
            ServiceValue {
                service_id: 9,
                ..Default::default()
            },
            0,
        )
        .unwrap();
    dp.nodes()
        .unwrap()
        .insert(NodeKey { ip: NODE_IP }, NodeValue::default(), 0)
        .unwrap();
    dp
}

fn tcp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
    syn_ack: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64_000);
    let b = if syn_ack { b.syn().ack(1) } else { b.syn() };
    let mut v = Vec::new();
    b.write(&mut v, b"hello").unwrap();
    v
}

fn tcp6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 7, 100)
        .syn()
        .write(&mut v, b"six")
        .unwrap();
    v
}

fn udp6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, b"q6")
        .unwrap();
    v
}

/// What the legacy program must emit for `inner_frame` (an Ethernet frame whose L3 part is the
/// expected DNATed packet): outer headers to the node, then the inner frame with new MACs.
fn vxlan_expected(inner_frame: &[u8], hash: u32) -> Vec<u8> {
    vxlan_expected_via(inner_frame, hash, NODE_NH_MAC)
}

/// [`vxlan_expected`] with `next_hop` as the outer destination MAC.
fn vxlan_expected_via(inner_frame: &[u8], hash: u32, next_hop: [u8; 6]) -> Vec<u8> {
    let l3 = &inner_frame[14..];
    let inner_len = 14 + l3.len();
    let mut ip = Ipv4Header::new(
        (8 + 8 + inner_len) as u16,
        64,
        IpNumber::UDP,
        MESH_IP,
        NODE_IP,
    )
    .unwrap();
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader {
        source_port: vxlan_source_port(hash),
        destination_port: 8472,
        length: (8 + 8 + inner_len) as u16,
        checksum: 0,
    };
    let mut out = Vec::new();
    Ethernet2Header {
        destination: next_hop,
        source: MESH_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    ip.write(&mut out).unwrap();
    udp.write(&mut out).unwrap();
    out.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    out.extend_from_slice(&NODE_INNER_MAC);
    out.extend_from_slice(&VTEP_MAC);
    out.extend_from_slice(&inner_frame[12..14]);
    out.extend_from_slice(l3);
    out
}

/// Asserts the action, showing the datapath's counters when it is not the one expected.
#[track_caller]
fn expect_action(dp: &Datapath, r: &meshgw_datapath::RunResult, want: u32) {
    if r.action != want {
        let nonzero: Vec<_> = dp
            .counters()
            .unwrap()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(c, v)| (c.name(), v))
            .collect();
        panic!("action {} (want {want}); counters: {nonzero:?}", r.action);
    }
}

fn hash4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> u32 {
    flow_hash(
        &v4_mapped(src),
        &v4_mapped(dst),
        sport.to_be(),
        dport.to_be(),
        proto,
    )
}

#[test]
fn tcp4_to_vip_is_dnated_and_encapsulated_and_the_reply_comes_back_with_the_vip() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let syn = tcp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let r = dp.run(Program::Legacy, &syn, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let dnat = tcp4(CLIENT4, 40_000, POD4, 8080, CLIENT_MAC, LEGACY_MAC, false);
        let want = vxlan_expected(&dnat, hash4(CLIENT4, 40_000, VIP4, 80, 6));
        assert_eq!(r.frame, want, "encapsulated frame");

        let synack = tcp4(POD4, 8080, CLIENT4, 40_000, NODE_INNER_MAC, VTEP_MAC, true);
        let r = dp
            .run(Program::Mesh, &from_node(&synack, NODE_IP), 1)
            .unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let want = tcp4(VIP4, 80, CLIENT4, 40_000, LEGACY_MAC, CLIENT_MAC, true);
        assert_eq!(r.frame, want, "decapsulated, reverse-NATed reply");
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 1);
        assert_eq!(dp.counter(Counter::ReplyForwarded).unwrap(), 1);
        assert_eq!(dp.counter(Counter::CtCreated).unwrap(), 1);
    });
}

#[test]
fn udp4_round_trip() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let q = udp4(CLIENT4, 33_333, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let r = dp.run(Program::Legacy, &q, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let dnat = udp4(CLIENT4, 33_333, POD4, 5353, CLIENT_MAC, LEGACY_MAC);
        let want = vxlan_expected(&dnat, hash4(CLIENT4, 33_333, VIP4, 53, 17));
        assert_eq!(r.frame, want);
        let answer = udp4(POD4, 5353, CLIENT4, 33_333, NODE_INNER_MAC, VTEP_MAC);
        let r = dp
            .run(Program::Mesh, &from_node(&answer, NODE_IP), 1)
            .unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        assert_eq!(
            r.frame,
            udp4(VIP4, 53, CLIENT4, 33_333, LEGACY_MAC, CLIENT_MAC)
        );
    });
}

#[test]
fn established_packets_get_the_flows_vxlan_source_port_recorded_or_not() {
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        let q = udp4(CLIENT4, 33_333, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let dnat = udp4(CLIENT4, 33_333, POD4, 5353, CLIENT_MAC, LEGACY_MAC);
        let hash = hash4(CLIENT4, 33_333, VIP4, 53, 17);
        let want = vxlan_expected(&dnat, hash);
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, want);
        // The forward entry records the port; the next packet uses the record.
        let key = forward_key4(CLIENT4, 33_333, VIP4, 53, 17);
        let e = dp.ct().unwrap().get(&key, 0).unwrap();
        assert_eq!(e.nat_port, vxlan_source_port(hash));
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, want);
        // An entry made before ports were recorded (0 there) gets the same port.
        dp.ct()
            .unwrap()
            .insert(key, CtEntry { nat_port: 0, ..e }, 0)
            .unwrap();
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, want);
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 3);
        assert_eq!(dp.counter(Counter::CtCreated).unwrap(), 1);
    });
}

#[test]
fn ipv6_tcp_and_udp_round_trip() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        for (req, dnat, reply, back, port, proto) in [
            (
                tcp6(CLIENT6, 41_000, VIP6, 80, CLIENT_MAC, LEGACY_MAC),
                tcp6(CLIENT6, 41_000, POD6, 8080, CLIENT_MAC, LEGACY_MAC),
                tcp6(POD6, 8080, CLIENT6, 41_000, NODE_INNER_MAC, VTEP_MAC),
                tcp6(VIP6, 80, CLIENT6, 41_000, LEGACY_MAC, CLIENT_MAC),
                80u16,
                6u8,
            ),
            (
                udp6(CLIENT6, 41_001, VIP6, 53, CLIENT_MAC, LEGACY_MAC),
                udp6(CLIENT6, 41_001, POD6, 5353, CLIENT_MAC, LEGACY_MAC),
                udp6(POD6, 5353, CLIENT6, 41_001, NODE_INNER_MAC, VTEP_MAC),
                udp6(VIP6, 53, CLIENT6, 41_001, LEGACY_MAC, CLIENT_MAC),
                53u16,
                17u8,
            ),
        ] {
            let r = dp.run(Program::Legacy, &req, 1).unwrap();
            expect_action(&dp, &r, action::REDIRECT);
            let sport = u16::from_be_bytes([req[54], req[55]]);
            let h = flow_hash(&CLIENT6, &VIP6, sport.to_be(), port.to_be(), proto);
            assert_eq!(r.frame, vxlan_expected(&dnat, h));
            let r = dp
                .run(Program::Mesh, &from_node(&reply, NODE_IP), 1)
                .unwrap();
            expect_action(&dp, &r, action::REDIRECT);
            assert_eq!(r.frame, back);
        }
    });
}

#[test]
fn vlan_tagged_client_is_untagged_inside_and_retagged_on_the_reply() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let tagged =
            |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, smac: [u8; 6], dmac: [u8; 6]| {
                let mut v = Vec::new();
                PacketBuilder::ethernet2(smac, dmac)
                    .single_vlan(etherparse::VlanId::try_new(100).unwrap())
                    .ipv4(src, dst, 64)
                    .udp(sport, dport)
                    .write(&mut v, b"vlan")
                    .unwrap();
                v
            };
        let q = tagged(CLIENT4, 30_000, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let r = dp.run(Program::Legacy, &q, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let dnat = udp4(CLIENT4, 30_000, POD4, 5353, CLIENT_MAC, LEGACY_MAC);
        let mut dnat_payload = dnat.clone();
        // The untagged builder wrote "query"; rebuild with the same payload as the tagged frame.
        dnat_payload.clear();
        PacketBuilder::ethernet2(CLIENT_MAC, LEGACY_MAC)
            .ipv4(CLIENT4, POD4, 64)
            .udp(30_000, 5353)
            .write(&mut dnat_payload, b"vlan")
            .unwrap();
        let want = vxlan_expected(&dnat_payload, hash4(CLIENT4, 30_000, VIP4, 53, 17));
        assert_eq!(r.frame, want);
        let mut answer = Vec::new();
        PacketBuilder::ethernet2(NODE_INNER_MAC, VTEP_MAC)
            .ipv4(POD4, CLIENT4, 64)
            .udp(5353, 30_000)
            .write(&mut answer, b"vlan")
            .unwrap();
        let r = dp
            .run(Program::Mesh, &from_node(&answer, NODE_IP), 1)
            .unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        assert_eq!(
            r.frame,
            tagged(VIP4, 53, CLIENT4, 30_000, LEGACY_MAC, CLIENT_MAC),
            "reply re-tagged, MACs reversed"
        );
    });
}

#[test]
fn unrelated_traffic_passes_unchanged() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&CLIENT4);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&VIP4);
        let frames = [
            arp,
            tcp4(
                CLIENT4,
                40_000,
                [10, 100, 0, 1],
                22,
                CLIENT_MAC,
                LEGACY_MAC,
                false,
            ), // the gateway itself
            tcp4(CLIENT4, 40_000, VIP4, 443, CLIENT_MAC, LEGACY_MAC, false), // VIP, unknown port
            udp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC),         // VIP, wrong protocol
        ];
        for f in frames {
            let r = dp.run(Program::Legacy, &f, 1).unwrap();
            expect_action(&dp, &r, action::PASS);
            assert_eq!(r.frame, f);
        }
        // VXLAN from a node nobody configured, and a reply of an untracked flow: the kernel's.
        let stray = udp4(POD4, 5353, CLIENT4, 1, NODE_INNER_MAC, VTEP_MAC);
        for f in [
            from_node(&stray, [172, 18, 0, 99]),
            from_node(&stray, NODE_IP),
        ] {
            let r = dp.run(Program::Mesh, &f, 1).unwrap();
            expect_action(&dp, &r, action::PASS);
            assert_eq!(r.frame, f);
        }
        assert_eq!(dp.counter(Counter::MeshUnknownNode).unwrap(), 1);
    });
}

#[test]
fn service_without_backends_drops_and_counts() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let f = tcp4(CLIENT4, 40_000, VIP4, 81, CLIENT_MAC, LEGACY_MAC, false);
        assert_eq!(dp.run(Program::Legacy, &f, 1).unwrap().action, action::DROP);
        assert_eq!(dp.counter(Counter::DropNoBackend).unwrap(), 1);
    });
}

#[test]
fn truncated_and_malformed_frames_are_never_rewritten() {
    let ns = lab();
    ns.run(|| {
        let dp = datapath();
        let full = tcp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for cut in 14..full.len() {
            let f = &full[..cut];
            let r = dp.run(Program::Legacy, f, 1).unwrap();
            assert!(
                r.action == action::PASS || r.action == action::DROP,
                "cut {cut}: action {}",
                r.action
            );
            assert_eq!(r.frame, f, "cut {cut}: frame changed");
        }
        let reply = from_node(
            &tcp4(POD4, 8080, CLIENT4, 40_000, NODE_INNER_MAC, VTEP_MAC, true),
            NODE_IP,
        );
        for cut in 14..reply.len() {
            let f = &reply[..cut];
            let r = dp.run(Program::Mesh, f, 1).unwrap();
            assert!(
                r.action == action::PASS || r.action == action::DROP,
                "cut {cut}"
            );
            assert_eq!(r.frame, f, "mesh cut {cut}: frame changed");
        }
        // Pseudo-random garbage (a fixed LCG, so failures reproduce).
        let mut x: u32 = 0x1234_5678;
        for len in [14usize, 20, 34, 54, 64, 90, 128, 300] {
            for _ in 0..64 {
                let f: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (x >> 24) as u8
                    })
                    .collect();
                for p in [Program::Legacy, Program::Mesh] {
                    let r = dp.run(p, &f, 1).unwrap();
                    assert_eq!(r.action, action::PASS, "garbage of {len} bytes");
                    assert_eq!(r.frame, f);
                }
            }
        }
        assert!(dp.counter(Counter::Malformed).unwrap() > 0);
    });
}

#[test]
fn established_flows_stay_on_their_backend_and_move_only_when_it_is_gone() {
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        let other = BackendValue {
            addr: v4_mapped([10, 244, 1, 11]),
            ..backend(v4_mapped(POD4), 8080, FAMILY_V4)
        };
        dp.backends().unwrap().insert(7, other, 0).unwrap();
        let syn = tcp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let first = dp.run(Program::Legacy, &syn, 1).unwrap().frame;
        // The table now sends every new flow to backend 7; the tracked flow must not move.
        dp.maglev()
            .unwrap()
            .insert(1, MaglevTable::filled(7), 0)
            .unwrap();
        assert_eq!(dp.run(Program::Legacy, &syn, 1).unwrap().frame, first);
        let fresh = tcp4(CLIENT4, 40_001, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let moved = dp.run(Program::Legacy, &fresh, 1).unwrap().frame;
        assert_eq!(
            &moved[64 + 16..64 + 20],
            &[10, 244, 1, 11],
            "new flow uses the new table"
        );
        // Removing backend 1 moves its flow, and counts it.
        dp.backends().unwrap().remove(&1).unwrap();
        let again = dp.run(Program::Legacy, &syn, 1).unwrap().frame;
        assert_eq!(&again[64 + 16..64 + 20], &[10, 244, 1, 11]);
        assert_eq!(dp.counter(Counter::CtReselected).unwrap(), 1);
        // The removed backend's slot reads as absent, and only once.
        let mut backends = dp.backends().unwrap();
        assert!(matches!(
            backends.get(&1, 0),
            Err(aya::maps::MapError::KeyNotFound)
        ));
        assert!(backends.remove(&1).is_err(), "removed twice");
        let ids: Vec<u32> = backends.keys().map(Result::unwrap).collect();
        assert_eq!(ids, [2, 3, 4, 7]);
    });
}

#[test]
fn policy_admits_by_source_identity_and_port_and_drops_the_rest() {
    use meshgw_common::maps::{PolicyKey, PolicyValue, CFG_F_POLICY, ID_ANY, POLICY_ALLOW};
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        // The pod behind VIP4:80 has identity 1000; 10.100.0.0/25 (holding CLIENT4 = .2) is
        // identity 70000, and .128/25 falls back to world.
        let mut b = backend(v4_mapped(POD4), 8080, FAMILY_V4);
        b.identity = 1000;
        dp.backends().unwrap().insert(1, b, 0).unwrap();
        dp.identities()
            .unwrap()
            .insert(
                &meshgw_datapath::identity_key("10.100.0.0/25".parse().unwrap()),
                70_000,
                0,
            )
            .unwrap();
        let allow = |src: u32, dport: u16, proto: u8| {
            (
                PolicyKey {
                    src,
                    dst: 1000,
                    dport: dport.to_be(),
                    proto,
                    dir: 0,
                },
                PolicyValue {
                    verdict: POLICY_ALLOW,
                },
            )
        };
        let (k, v) = allow(70_000, 8080, 6);
        dp.policy().unwrap().insert(k, v, 0).unwrap();
        let mut cfg = dp.config().unwrap();
        cfg.flags |= CFG_F_POLICY;
        dp.set_config(&cfg).unwrap();

        let good = tcp4(CLIENT4, 40_001, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let bad = tcp4(
            [10, 100, 0, 200],
            40_001,
            VIP4,
            80,
            CLIENT_MAC,
            LEGACY_MAC,
            false,
        );
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &good, 1).unwrap(),
            action::REDIRECT,
        );
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &bad, 1).unwrap(),
            action::DROP,
        );
        assert_eq!(dp.counter(Counter::DropPolicy).unwrap(), 1);
        assert_eq!(dp.counter(Counter::PolicyAllowed).unwrap(), 1);
        // The denied flow left no tracking entry; the admitted one did, with its identity.
        let ct: Vec<_> = dp
            .ct()
            .unwrap()
            .iter()
            .filter_map(Result::ok)
            .map(|(_, e)| e.src_identity)
            .collect();
        assert_eq!(
            ct,
            [70_000, 70_000],
            "forward and reverse entries of the admitted flow"
        );

        // The verdict is cached: with the rule gone the tracked flow still passes, a new one not.
        dp.policy().unwrap().remove(&k).unwrap();
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &good, 1).unwrap(),
            action::REDIRECT,
        );
        let new = tcp4(CLIENT4, 40_002, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &new, 1).unwrap(),
            action::DROP,
        );

        // An any-source L4 rule admits world; a rule for another port does not.
        let (k, v) = allow(ID_ANY, 9999, 6);
        dp.policy().unwrap().insert(k, v, 0).unwrap();
        let world = tcp4(
            [10, 100, 0, 201],
            40_003,
            VIP4,
            80,
            CLIENT_MAC,
            LEGACY_MAC,
            false,
        );
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &world, 1).unwrap(),
            action::DROP,
        );
        let (k, v) = allow(ID_ANY, 8080, 6);
        dp.policy().unwrap().insert(k, v, 0).unwrap();
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &world, 1).unwrap(),
            action::REDIRECT,
        );
        // Without the policy flag nothing is looked up: everything passes as before.
        cfg.flags &= !CFG_F_POLICY;
        dp.set_config(&cfg).unwrap();
        let other = tcp4(
            [10, 100, 0, 202],
            40_004,
            VIP4,
            80,
            CLIENT_MAC,
            LEGACY_MAC,
            false,
        );
        dp.policy().unwrap().remove(&k).unwrap();
        expect_action(
            &dp,
            &dp.run(Program::Legacy, &other, 1).unwrap(),
            action::REDIRECT,
        );
    });
}

const EGRESS4: [u8; 4] = [10, 100, 0, 50];

/// The first port a new egress flow tries, computed here from the documented rule
/// (SNAT_PORT_MIN + flow hash mod the range size, then an odd stride).
fn snat_port(try_no: u32, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> u16 {
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let h = hash4(src, sport, dst, dport, proto);
    SNAT_PORT_MIN + (h.wrapping_add(try_no.wrapping_mul(7919)) % range) as u16
}

/// An egress rule for POD4 towards 10.100.0.0/24 via EGRESS4, 10.100.0.128/25 excluded.
fn with_egress_rule(dp: &mut Datapath) {
    let pod = std::net::IpAddr::from(POD4);
    let rule = EgressValue {
        egress_ip: v4_mapped(EGRESS4),
        flags: 0,
        rule: 7,
    };
    let mut trie = dp.egress().unwrap();
    trie.insert(
        &meshgw_datapath::egress_key(pod, "10.100.0.0/24".parse().unwrap()),
        rule,
        0,
    )
    .unwrap();
    trie.insert(
        &meshgw_datapath::egress_key(pod, "10.100.0.128/25".parse().unwrap()),
        EgressValue {
            flags: EGRESS_F_EXCLUDED,
            ..rule
        },
        0,
    )
    .unwrap();
    let mut cfg = dp.config().unwrap();
    cfg.flags |= CFG_F_EGRESS;
    dp.set_config(&cfg).unwrap();
}

#[test]
fn egress_flow_is_source_natted_out_and_its_reply_tunnelled_back_to_the_pod() {
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        with_egress_rule(&mut dp);
        // The port the hash picks first is taken (towards the same host and port): the flow
        // must get the second choice, never share it.
        let first = snat_port(0, POD4, 45_000, CLIENT4, 8080, 6);
        let taken = CtKey {
            src: v4_mapped(CLIENT4),
            dst: v4_mapped(EGRESS4),
            sport: 8080u16.to_be(),
            dport: first.to_be(),
            proto: 6,
            family: FAMILY_V4,
            dir: CT_DIR_EGRESS_REPLY,
            _pad: 0,
        };
        dp.snat()
            .unwrap()
            .insert(taken, SnatEntry::default(), 0)
            .unwrap();
        let port = snat_port(1, POD4, 45_000, CLIENT4, 8080, 6);
        assert_ne!(port, first);

        let syn = tcp4(POD4, 45_000, CLIENT4, 8080, NODE_INNER_MAC, VTEP_MAC, false);
        let r = dp.run(Program::Mesh, &from_node(&syn, NODE_IP), 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let want = tcp4(EGRESS4, port, CLIENT4, 8080, LEGACY_MAC, CLIENT_MAC, false);
        assert_eq!(r.frame, want, "translated, decapsulated, to the host's MAC");

        // The host's answer to the egress address goes back to the pod, through its node.
        let synack = tcp4(CLIENT4, 8080, EGRESS4, port, CLIENT_MAC, LEGACY_MAC, true);
        let r = dp.run(Program::Legacy, &synack, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let back = tcp4(CLIENT4, 8080, POD4, 45_000, CLIENT_MAC, LEGACY_MAC, true);
        let want = vxlan_expected(&back, hash4(CLIENT4, 8080, EGRESS4, port, 6));
        assert_eq!(
            r.frame, want,
            "reverse-translated and encapsulated to the node"
        );

        // The established flow keeps its port.
        let r = dp.run(Program::Mesh, &from_node(&syn, NODE_IP), 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        assert_eq!(
            r.frame,
            tcp4(EGRESS4, port, CLIENT4, 8080, LEGACY_MAC, CLIENT_MAC, false)
        );
        assert_eq!(dp.counter(Counter::EgressCreated).unwrap(), 1);
        assert_eq!(dp.counter(Counter::EgressForwarded).unwrap(), 2);
        assert_eq!(dp.counter(Counter::EgressReplied).unwrap(), 1);

        // Excluded and uncovered destinations are routed by the kernel, untouched.
        for dst in [[10, 100, 0, 200], [192, 168, 1, 1]] {
            let f = from_node(
                &tcp4(POD4, 45_001, dst, 8080, NODE_INNER_MAC, VTEP_MAC, false),
                NODE_IP,
            );
            let r = dp.run(Program::Mesh, &f, 1).unwrap();
            expect_action(&dp, &r, action::PASS);
            assert_eq!(r.frame, f);
        }
        // A packet to the egress address that belongs to no flow goes to the kernel.
        let stray = tcp4(CLIENT4, 8080, EGRESS4, 1234, CLIENT_MAC, LEGACY_MAC, true);
        let r = dp.run(Program::Legacy, &stray, 1).unwrap();
        expect_action(&dp, &r, action::PASS);
        assert_eq!(r.frame, stray);
        assert_eq!(dp.counter(Counter::EgressCreated).unwrap(), 1);
    });
}

#[test]
fn egress_to_a_host_without_neighbour_entry_is_translated_and_left_to_the_kernel() {
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        with_egress_rule(&mut dp);
        // 10.100.0.3 has no neighbour entry: the kernel must resolve it, so the translated,
        // decapsulated packet is passed up (addressed to the mesh interface) instead of dropped.
        let syn = tcp4(
            POD4,
            45_002,
            [10, 100, 0, 3],
            80,
            NODE_INNER_MAC,
            VTEP_MAC,
            false,
        );
        let r = dp.run(Program::Mesh, &from_node(&syn, NODE_IP), 1).unwrap();
        expect_action(&dp, &r, action::PASS);
        let port = snat_port(0, POD4, 45_002, [10, 100, 0, 3], 80, 6);
        let want = tcp4(
            EGRESS4,
            port,
            [10, 100, 0, 3],
            80,
            NODE_NH_MAC,
            MESH_MAC,
            false,
        );
        assert_eq!(r.frame, want);
        assert_eq!(dp.counter(Counter::EgressCreated).unwrap(), 1);
    });
}

#[test]
fn egress_policy_admits_by_endpoint_identity_and_port_and_drops_the_rest() {
    use meshgw_common::maps::{PolicyKey, PolicyValue, CFG_F_POLICY, POLICY_ALLOW};
    use meshgw_common::telemetry::{
        EventsConfig, FlowEvent, EVENTS_F_DROPS, EVENTS_F_FLOWS, EVENT_DROP, EVENT_NEW_FLOW,
    };
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        with_egress_rule(&mut dp);
        let mut events = dp.take_events().unwrap();
        dp.set_events_config(&EventsConfig {
            sample_rate: 0,
            flags: EVENTS_F_FLOWS | EVENTS_F_DROPS,
        })
        .unwrap();
        // The pod is identity 1000, 10.100.0.0/25 identity 70000; the pod may reach it on
        // TCP 8080 only.
        let mut ids = dp.identities().unwrap();
        ids.insert(
            &meshgw_datapath::identity_key("10.244.1.10/32".parse().unwrap()),
            1000,
            0,
        )
        .unwrap();
        ids.insert(
            &meshgw_datapath::identity_key("10.100.0.0/25".parse().unwrap()),
            70_000,
            0,
        )
        .unwrap();
        dp.policy()
            .unwrap()
            .insert(
                PolicyKey {
                    src: 1000,
                    dst: 70_000,
                    dport: 8080u16.to_be(),
                    proto: 6,
                    dir: POLICY_EGRESS,
                },
                PolicyValue {
                    verdict: POLICY_ALLOW,
                },
                0,
            )
            .unwrap();
        let mut cfg = dp.config().unwrap();
        cfg.flags |= CFG_F_POLICY;
        dp.set_config(&cfg).unwrap();

        let ok = tcp4(POD4, 45_010, CLIENT4, 8080, NODE_INNER_MAC, VTEP_MAC, false);
        let r = dp.run(Program::Mesh, &from_node(&ok, NODE_IP), 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        // An ingress entry with the same identities and port does not open the egress direction.
        dp.policy()
            .unwrap()
            .insert(
                PolicyKey {
                    src: 1000,
                    dst: 70_000,
                    dport: 22u16.to_be(),
                    proto: 6,
                    dir: POLICY_INGRESS,
                },
                PolicyValue {
                    verdict: POLICY_ALLOW,
                },
                0,
            )
            .unwrap();
        let ssh = tcp4(POD4, 45_011, CLIENT4, 22, NODE_INNER_MAC, VTEP_MAC, false);
        let r = dp.run(Program::Mesh, &from_node(&ssh, NODE_IP), 1).unwrap();
        expect_action(&dp, &r, action::DROP);
        assert_eq!(dp.counter(Counter::DropPolicyEgress).unwrap(), 1);
        assert_eq!(dp.counter(Counter::EgressCreated).unwrap(), 1);
        // The flow without a translation entry left nothing behind.
        let n = dp.snat().unwrap().iter().filter_map(Result::ok).count();
        assert_eq!(n, 2, "egress and reply entries of the admitted flow only");
        // Flows no egress rule covers are checked too: denied -> dropped.
        let other = tcp4(
            POD4,
            45_012,
            [192, 168, 1, 1],
            22,
            NODE_INNER_MAC,
            VTEP_MAC,
            false,
        );
        let r = dp
            .run(Program::Mesh, &from_node(&other, NODE_IP), 1)
            .unwrap();
        expect_action(&dp, &r, action::DROP);
        assert_eq!(dp.counter(Counter::DropPolicyEgress).unwrap(), 2);
        // The flow log hears of the new flow and of both drops, with the identities.
        let mut got = Vec::new();
        while let Some(item) = events.next() {
            got.push(FlowEvent::from_bytes(&item).expect("full record"));
        }
        let kinds: Vec<(u8, u8)> = got.iter().map(|e| (e.kind, e.reason)).collect();
        let drop = Counter::DropPolicyEgress as u8;
        assert_eq!(
            kinds,
            [(EVENT_NEW_FLOW, 0), (EVENT_DROP, drop), (EVENT_DROP, drop)]
        );
        assert_eq!((got[1].src_identity, got[1].dst_identity), (1000, 70_000));
        assert_eq!(got[1].dport, 22u16.to_be());
        assert_eq!(got[1].src, v4_mapped(POD4));
    });
}

#[test]
fn telemetry_counts_per_service_backend_and_node_and_reports_flows_samples_and_policy_drops() {
    use meshgw_common::maps::{PolicyKey, PolicyValue, CFG_F_POLICY, POLICY_ALLOW};
    use meshgw_common::telemetry::{
        EventsConfig, FlowEvent, Traffic, EVENTS_F_DROPS, EVENTS_F_FLOWS, EVENT_DROP,
        EVENT_NEW_FLOW, EVENT_SAMPLE,
    };
    let ns = lab();
    ns.run(|| {
        let mut dp = datapath();
        let mut events = dp.take_events().unwrap();
        let mut b = backend(v4_mapped(POD4), 8080, FAMILY_V4);
        b.identity = 1000;
        dp.backends().unwrap().insert(1, b, 0).unwrap();
        dp.identities()
            .unwrap()
            .insert(
                &meshgw_datapath::identity_key("10.100.0.0/25".parse().unwrap()),
                70_000,
                0,
            )
            .unwrap();
        let k = PolicyKey {
            src: 70_000,
            dst: 1000,
            dport: 8080u16.to_be(),
            proto: 6,
            dir: 0,
        };
        let v = PolicyValue {
            verdict: POLICY_ALLOW,
        };
        dp.policy().unwrap().insert(k, v, 0).unwrap();
        let mut cfg = dp.config().unwrap();
        cfg.flags |= CFG_F_POLICY;
        dp.set_config(&cfg).unwrap();

        let good = tcp4(CLIENT4, 40_002, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let bad_src = [10, 100, 0, 200];
        let bad = tcp4(bad_src, 40_003, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        // Events off: counted, nothing sent.
        let r = dp.run(Program::Legacy, &good, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        assert!(events.next().is_none(), "no event while events are off");

        dp.set_events_config(&EventsConfig {
            sample_rate: 1,
            flags: EVENTS_F_FLOWS | EVENTS_F_DROPS,
        })
        .unwrap();
        // A tracked flow's packet is sampled (rate 1: every one).
        let r = dp.run(Program::Legacy, &good, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let r = dp.run(Program::Legacy, &bad, 1).unwrap();
        expect_action(&dp, &r, action::DROP);
        let other = tcp4(CLIENT4, 40_004, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let r = dp.run(Program::Legacy, &other, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);

        let mut got = Vec::new();
        while let Some(item) = events.next() {
            got.push(FlowEvent::from_bytes(&item).expect("full record"));
        }
        let kinds: Vec<u8> = got.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EVENT_SAMPLE, EVENT_DROP, EVENT_NEW_FLOW]);
        let (sample, drop, new) = (&got[0], &got[1], &got[2]);
        assert_eq!(sample.sport, 40_002u16.to_be());
        assert_eq!(sample.src_identity, 70_000);
        assert_eq!(drop.src, v4_mapped(bad_src));
        assert_eq!(drop.dst, v4_mapped(VIP4));
        assert_eq!(drop.dport, 80u16.to_be());
        assert_eq!(drop.reason, Counter::DropPolicy as u8);
        assert_eq!((drop.src_identity, drop.dst_identity), (2, 1000));
        assert_eq!((new.service_id, new.backend_id), (1, 1));
        assert_eq!(new.sport, 40_004u16.to_be());
        assert_eq!(new.proto, 6);
        assert!(new.ts_ns > 0 && new.l3_len > 0);

        // Three admitted packets (two flows) went to service 1, backend 1, the one node.
        let len = u64::from(new.l3_len);
        let want = Traffic {
            packets: 3,
            bytes: 3 * len,
        };
        assert_eq!(dp.service_traffic(&[1, 2]).unwrap()[0], (1, want));
        assert_eq!(dp.service_traffic(&[2]).unwrap()[0].1, Traffic::default());
        assert_eq!(dp.backend_traffic(&[1, 2]).unwrap()[0], (1, want));
        assert_eq!(dp.backend_traffic(&[2]).unwrap()[0].1, Traffic::default());
        let live = [(1, NODE_IP), (2, NODE_IP)];
        assert_eq!(dp.node_traffic(&live).unwrap(), [(NODE_IP, want)]);

        // A freed id starts again from zero; its node keeps the traffic it had.
        dp.backends().unwrap().remove(&1).unwrap();
        dp.forget_service_traffic(1).unwrap();
        dp.forget_backend_traffic(1, NODE_IP).unwrap();
        dp.forget_backend_traffic(77, [172, 18, 0, 99]).unwrap();
        assert_eq!(dp.service_traffic(&[1]).unwrap()[0].1, Traffic::default());
        assert_eq!(dp.backend_traffic(&[1]).unwrap()[0].1, Traffic::default());
        assert_eq!(dp.node_traffic(&[(2, NODE_IP)]).unwrap(), [(NODE_IP, want)]);

        // Traffic of a new backend on the node adds to what the removed one left.
        dp.backends()
            .unwrap()
            .insert(1, backend(v4_mapped(POD4), 8080, FAMILY_V4), 0)
            .unwrap();
        let r = dp.run(Program::Legacy, &good, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let one = Traffic {
            packets: 1,
            bytes: len,
        };
        assert_eq!(dp.backend_traffic(&[1]).unwrap()[0].1, one);
        let whole = Traffic {
            packets: 4,
            bytes: 4 * len,
        };
        assert_eq!(dp.node_traffic(&live).unwrap(), [(NODE_IP, whole)]);
    });
}

/// Sets a permanent neighbour entry for `ip` on `dev` in namespace `ns`.
fn set_neighbour(ns: &str, ip: &str, mac: &str, dev: &str) {
    sh(&[
        "ip",
        "-n",
        ns,
        "neigh",
        "replace",
        ip,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// Points the node's neighbour entry in namespace `ns` at `mac`.
fn set_node_neighbour(ns: &str, mac: &str) {
    set_neighbour(ns, "172.18.0.11", mac, "mesh");
}

#[test]
fn the_next_hop_cache_follows_a_changed_neighbour() {
    let ns = lab();
    let name = ns.name.clone();
    ns.run(move || {
        let mut dp = datapath();
        let f = udp4(CLIENT4, 40_000, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let dnat = udp4(CLIENT4, 40_000, POD4, 5353, CLIENT_MAC, LEGACY_MAC);
        let h = hash4(CLIENT4, 40_000, VIP4, 53, 17);
        let send = |dp: &Datapath| {
            let r = dp.run(Program::Legacy, &f, 1).unwrap();
            expect_action(dp, &r, action::REDIRECT);
            r.frame
        };
        assert_eq!(send(&dp), vxlan_expected_via(&dnat, h, NODE_NH_MAC));
        assert_eq!(
            send(&dp),
            vxlan_expected_via(&dnat, h, NODE_NH_MAC),
            "from the cache"
        );

        // A flush (what user space does on a neighbour change it sees) applies at once.
        set_node_neighbour(&name, "02:00:00:00:00:22");
        dp.flush_nexthops().unwrap();
        assert_eq!(
            send(&dp),
            vxlan_expected_via(&dnat, h, [2, 0, 0, 0, 0, 0x22]),
            "flushed: the new neighbour"
        );

        // Without a flush, a stale entry is refreshed from the FIB once past its age bound
        // (250 ms): the sleep only makes sure the entry is stale, nothing here is timed.
        set_node_neighbour(&name, "02:00:00:00:00:33");
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(
            send(&dp),
            vxlan_expected_via(&dnat, h, [2, 0, 0, 0, 0, 0x33]),
            "stale entry refreshed"
        );
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 4);
    });
}

#[test]
fn two_nodes_sharing_a_next_hop_slot_are_both_cached() {
    // NODE_IP and this node have the same first slot in MGW_NEXTHOP.
    const OTHER_NODE: [u8; 4] = [172, 18, 81, 58];
    const OTHER_NH_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x44];
    assert_eq!(
        nexthop_slots(OTHER_NODE).0,
        nexthop_slots(NODE_IP).0,
        "the test's premise"
    );
    assert_ne!(nexthop_slots(OTHER_NODE).1, nexthop_slots(NODE_IP).1);
    let ns = lab();
    let name = ns.name.clone();
    sh(&[
        "ip",
        "-n",
        &name,
        "route",
        "add",
        "172.18.81.0/24",
        "dev",
        "mesh",
    ]);
    set_neighbour(&name, "172.18.81.58", "02:00:00:00:00:44", "mesh");
    ns.run(move || {
        let mut dp = datapath();
        let other = BackendValue {
            node_ip: OTHER_NODE,
            ..backend(v4_mapped(POD4), 8080, FAMILY_V4)
        };
        dp.backends().unwrap().insert(7, other, 0).unwrap();
        let to_node = tcp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let to_other = tcp4(CLIENT4, 40_001, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let send = |dp: &Datapath, f: &[u8]| {
            let r = dp.run(Program::Legacy, f, 1).unwrap();
            expect_action(dp, &r, action::REDIRECT);
            r.frame
        };
        // Outer destination MAC and IPv4 address of each tunnelled frame.
        let outer = |f: &[u8]| (f[0..6].to_vec(), f[30..34].to_vec());
        let first = send(&dp, &to_node);
        assert_eq!(outer(&first), (NODE_NH_MAC.to_vec(), NODE_IP.to_vec()));
        dp.maglev()
            .unwrap()
            .insert(1, MaglevTable::filled(7), 0)
            .unwrap();
        let f = send(&dp, &to_other);
        assert_eq!(outer(&f), (OTHER_NH_MAC.to_vec(), OTHER_NODE.to_vec()));
        assert_eq!(send(&dp, &to_node), first, "the tracked flow, to its node");
        assert_eq!(
            dp.cached_next_hop_nodes().unwrap(),
            [NODE_IP, OTHER_NODE].into(),
            "both nodes cached: the second took its second slot"
        );
    });
}

#[test]
fn packets_over_the_path_mtu_are_dropped_whether_the_next_hop_is_cached_or_not() {
    let ns = lab();
    // Outer packets: IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14 = 50 bytes around the inner one.
    ns.ip(&["link", "set", "mesh", "mtu", "300"]);
    ns.run(|| {
        let dp = datapath();
        let frame = |payload: usize| {
            support::topology::udp4(
                CLIENT4,
                40_000,
                VIP4,
                53,
                CLIENT_MAC,
                LEGACY_MAC,
                &vec![7u8; payload],
            )
        };
        // Inner 20 + 8 + 230 = 258, outer 308 > 300: too big, before anything is cached.
        let big = frame(230);
        let r = dp.run(Program::Legacy, &big, 1).unwrap();
        expect_action(&dp, &r, action::DROP);
        assert_eq!(dp.counter(Counter::DropTooBig).unwrap(), 1);

        // A small packet caches the next hop; a larger one still under the MTU (outer 300
        // exactly) goes out from the cache: the cached bound is the path MTU, not the length
        // of the packet that filled the entry.
        for payload in [5, 222] {
            let r = dp.run(Program::Legacy, &frame(payload), 1).unwrap();
            expect_action(&dp, &r, action::REDIRECT);
            assert_eq!(r.frame.len(), 14 + 50 + 28 + payload);
        }
        let r = dp.run(Program::Legacy, &big, 1).unwrap();
        expect_action(&dp, &r, action::DROP);
        assert_eq!(dp.counter(Counter::DropTooBig).unwrap(), 2);
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 2);
    });
}

#[test]
fn the_reply_next_hop_cache_follows_a_changed_client_neighbour() {
    let ns = lab();
    let name = ns.name.clone();
    ns.run(move || {
        let mut dp = datapath();
        let q = udp4(CLIENT4, 33_333, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let r = dp.run(Program::Legacy, &q, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        let answer = from_node(
            &udp4(POD4, 5353, CLIENT4, 33_333, NODE_INNER_MAC, VTEP_MAC),
            NODE_IP,
        );
        let reply = |dp: &Datapath| {
            let r = dp.run(Program::Mesh, &answer, 1).unwrap();
            expect_action(dp, &r, action::REDIRECT);
            r.frame
        };
        let to = |mac: [u8; 6]| udp4(VIP4, 53, CLIENT4, 33_333, LEGACY_MAC, mac);
        assert_eq!(reply(&dp), to(CLIENT_MAC));
        assert_eq!(reply(&dp), to(CLIENT_MAC), "from the cache");

        let set = |mac: &str| set_neighbour(&name, "10.100.0.2", mac, "legacy");
        set("02:00:00:00:00:b2");
        dp.flush_nexthops().unwrap();
        assert_eq!(reply(&dp), to([2, 0, 0, 0, 0, 0xb2]), "flushed");

        // Stale after its age bound (250 ms): the sleep only makes sure of that.
        set("02:00:00:00:00:c2");
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(reply(&dp), to([2, 0, 0, 0, 0, 0xc2]), "refreshed");
    });
}

#[test]
fn pings_to_a_vip_are_counted_per_vip_and_passed_to_the_kernel() {
    use meshgw_common::telemetry::Traffic;
    use std::collections::BTreeSet;
    let ping4 = |dst: [u8; 4], seq: u16| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LEGACY_MAC)
            .ipv4(CLIENT4, dst, 64)
            .icmpv4_echo_request(7, seq)
            .write(&mut f, &[0u8; 56])
            .unwrap();
        f
    };
    let ping6 = |dst: [u8; 16]| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LEGACY_MAC)
            .ipv6(CLIENT6, dst, 64)
            .icmpv6_echo_request(7, 1)
            .write(&mut f, &[0u8; 8])
            .unwrap();
        f
    };
    let ns = lab();
    ns.run(move || {
        let mut dp = datapath();
        let vips: BTreeSet<[u8; 16]> = [v4_mapped(VIP4), VIP6].into();
        dp.sync_vip_icmp(&vips).unwrap();
        let mut not_vip6 = VIP6;
        not_vip6[15] = 0x11;
        let frames = [
            ping4(VIP4, 1),
            ping4(VIP4, 2),
            ping4(VIP4, 3),
            ping4(GW4, 1), // the gateway's own address: not a VIP
            ping6(VIP6),
            ping6(not_vip6),
        ];
        for f in &frames {
            let r = dp.run(Program::Legacy, f, 1).unwrap();
            expect_action(&dp, &r, action::PASS);
            assert_eq!(&r.frame, f, "a ping reaches the kernel unchanged");
        }
        let len4 = (frames[0].len() - 14) as u64;
        let len6 = (frames[4].len() - 14) as u64;
        let mut got = dp.vip_icmp_traffic().unwrap();
        got.sort_by_key(|(k, _)| *k);
        let mut want = vec![
            (
                v4_mapped(VIP4),
                Traffic {
                    packets: 3,
                    bytes: 3 * len4,
                },
            ),
            (
                VIP6,
                Traffic {
                    packets: 1,
                    bytes: len6,
                },
            ),
        ];
        want.sort_by_key(|(k, _)| *k);
        assert_eq!(got, want, "only VIPs are counted, exactly");
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 0);

        // The sync keeps the counts of VIPs that stay, forgets those that go, starts new ones
        // at zero.
        dp.sync_vip_icmp(&vips).unwrap();
        assert_eq!(dp.vip_icmp_traffic().unwrap().len(), 2);
        let only4: BTreeSet<[u8; 16]> = [v4_mapped(VIP4)].into();
        dp.sync_vip_icmp(&only4).unwrap();
        assert_eq!(dp.vip_icmp_traffic().unwrap(), [want[0]].to_vec());
        dp.sync_vip_icmp(&vips).unwrap();
        let r = dp.run(Program::Legacy, &frames[4], 1).unwrap();
        expect_action(&dp, &r, action::PASS);
        let v6 = dp
            .vip_icmp_traffic()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == VIP6);
        assert_eq!(
            v6,
            Some((
                VIP6,
                Traffic {
                    packets: 1,
                    bytes: len6
                }
            )),
            "a VIP that came back starts from zero"
        );
    });
}

/// Runs the rest of the calling thread on the CPU it is on: the flow cache is per CPU, and a
/// test that expects a packet to find what the previous one cached must run both on one CPU.
fn stay_on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn forward_key4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> CtKey {
    CtKey {
        src: v4_mapped(src),
        dst: v4_mapped(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        family: FAMILY_V4,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

#[test]
fn established_flows_are_sent_from_the_flow_cache_and_their_packets_reach_connection_tracking() {
    let ns = lab();
    ns.run(|| {
        stay_on_one_cpu();
        let mut dp = datapath();
        let q = udp4(CLIENT4, 33_333, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        let key = forward_key4(CLIENT4, 33_333, VIP4, 53, 17);
        let hits = |dp: &Datapath| dp.counter(Counter::FlowCacheHit).unwrap();
        let ct_packets = |dp: &mut Datapath| dp.ct().unwrap().get(&key, 0).unwrap().packets;
        // First packet: tracked. Second: found in tracking, cached. Third: from the cache, and
        // the same frame.
        let first = dp.run(Program::Legacy, &q, 1).unwrap().frame;
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, first);
        assert_eq!(hits(&dp), 0);
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, first);
        assert_eq!(hits(&dp), 1);
        assert_eq!(dp.counter(Counter::VipForwarded).unwrap(), 3);
        assert_eq!(
            ct_packets(&mut dp),
            2,
            "the cached packet is not in tracking yet"
        );
        assert_eq!(
            dp.flow_cache_pending(&key).unwrap(),
            (1, q.len() as u64 - 14)
        );
        let all = dp.flow_cache_pending_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all.get(&key), Some(&(1, q.len() as u64 - 14)));
        // An entry serves for a second; then the full path runs again and adds what the cache
        // sent to the tracking entry.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, first);
        assert_eq!(hits(&dp), 1);
        assert_eq!(ct_packets(&mut dp), 4);
        assert_eq!(dp.flow_cache_pending(&key).unwrap(), (0, 0));
        assert_eq!(dp.run(Program::Legacy, &q, 1).unwrap().frame, first);
        assert_eq!(hits(&dp), 2);

        // A flow whose slot another busy flow takes over: its cached packets go to its own
        // tracking entry.
        let other_port = (1..u16::MAX)
            .find(|p| {
                *p != 33_333
                    && flow_cache_slot_of(&forward_key4(CLIENT4, *p, VIP4, 53, 17))
                        == flow_cache_slot_of(&key)
            })
            .expect("a colliding source port");
        let other = udp4(CLIENT4, other_port, VIP4, 53, CLIENT_MAC, LEGACY_MAC);
        dp.run(Program::Legacy, &other, 1).unwrap();
        assert_eq!(ct_packets(&mut dp), 4);
        dp.run(Program::Legacy, &other, 1).unwrap();
        assert_eq!(ct_packets(&mut dp), 5, "evicted with its cached packet");
        assert_eq!(dp.flow_cache_pending(&key).unwrap(), (0, 0));
        assert_eq!(hits(&dp), 2);
        dp.run(Program::Legacy, &other, 1).unwrap();
        assert_eq!(hits(&dp), 3);

        // A removed service stops its cached flows at once.
        dp.run(Program::Legacy, &q, 1).unwrap();
        dp.run(Program::Legacy, &q, 1).unwrap();
        assert_eq!(hits(&dp), 4);
        dp.services()
            .unwrap()
            .remove(&svc_key(v4_mapped(VIP4), 53, 17, FAMILY_V4))
            .unwrap();
        dp.invalidate_flow_cache().unwrap();
        let r = dp.run(Program::Legacy, &q, 1).unwrap();
        expect_action(&dp, &r, action::PASS);
        assert_eq!(r.frame, q, "passed unchanged");
        assert_eq!(hits(&dp), 4);
    });
}

#[test]
fn tcp_fin_and_rst_and_removed_backends_take_the_full_path() {
    let ns = lab();
    ns.run(|| {
        stay_on_one_cpu();
        let mut dp = datapath();
        let syn = tcp4(CLIENT4, 40_000, VIP4, 80, CLIENT_MAC, LEGACY_MAC, false);
        let key = forward_key4(CLIENT4, 40_000, VIP4, 80, 6);
        for _ in 0..3 {
            dp.run(Program::Legacy, &syn, 1).unwrap();
        }
        assert_eq!(dp.counter(Counter::FlowCacheHit).unwrap(), 1);
        let flags = |dp: &mut Datapath| dp.ct().unwrap().get(&key, 0).unwrap().flags;
        assert_eq!(flags(&mut dp) & CT_F_CLOSING, 0);
        // A FIN is not served from the cache: tracking sees it and marks the flow closing.
        let mut fin = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LEGACY_MAC)
            .ipv4(CLIENT4, VIP4, 64)
            .tcp(40_000, 80, 2000, 64_000)
            .fin()
            .ack(1)
            .write(&mut fin, b"")
            .unwrap();
        let r = dp.run(Program::Legacy, &fin, 1).unwrap();
        expect_action(&dp, &r, action::REDIRECT);
        assert_eq!(dp.counter(Counter::FlowCacheHit).unwrap(), 1);
        assert_ne!(flags(&mut dp) & CT_F_CLOSING, 0);
        // The cached flow's backend goes: the next packet is moved at once, not sent to it.
        dp.run(Program::Legacy, &syn, 1).unwrap();
        assert_eq!(dp.counter(Counter::FlowCacheHit).unwrap(), 2);
        let other = BackendValue {
            addr: v4_mapped([10, 244, 1, 11]),
            ..backend(v4_mapped(POD4), 8080, FAMILY_V4)
        };
        dp.backends().unwrap().insert(7, other, 0).unwrap();
        dp.maglev()
            .unwrap()
            .insert(1, MaglevTable::filled(7), 0)
            .unwrap();
        dp.backends().unwrap().remove(&1).unwrap();
        let moved = dp.run(Program::Legacy, &syn, 1).unwrap().frame;
        assert_eq!(&moved[64 + 16..64 + 20], &[10, 244, 1, 11]);
        assert_eq!(dp.counter(Counter::CtReselected).unwrap(), 1);
        assert_eq!(dp.counter(Counter::FlowCacheHit).unwrap(), 2);
    });
}
