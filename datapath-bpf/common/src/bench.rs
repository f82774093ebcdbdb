//! The packets-per-second benchmark's own programs (`datapath-bpf/xdp/src/bin/meshgw-bench.rs`):
//! a generator that `BPF_PROG_TEST_RUN` runs with live frames on the legacy host's interface, and
//! a sink that counts, at the switch port facing the gateway, the VXLAN packets that reach a node
//! exactly as they should. Their map layouts and the packet arithmetic live here so the host can
//! unit-test them.

/// Map and program names in the benchmark object.
pub mod names {
    /// The generator program (XDP, run by `BPF_PROG_TEST_RUN` with live frames).
    pub const GEN: &str = "meshgw_bench_gen";
    /// The sink program (XDP, attached where the gateway's VXLAN arrives).
    pub const SINK: &str = "meshgw_bench_sink";
    /// `Array<GenConfig>`, one entry.
    pub const GEN_CONFIG: &str = "MGWB_GEN_CONFIG";
    /// `PerCpuArray<u32>`, one entry: each CPU's packet sequence number.
    pub const GEN_SEQ: &str = "MGWB_GEN_SEQ";
    /// `HashMap<[u8; 4], SinkNode>`: outer destination address -> what must arrive there.
    pub const SINK_NODES: &str = "MGWB_SINK_NODES";
    /// `PerCpuArray<u64>`, [`SINK_SLOTS`](super::SINK_SLOTS) entries: the sink's counters.
    pub const SINK_COUNTS: &str = "MGWB_SINK_COUNTS";
    /// The replay program (XDP, run by `BPF_PROG_TEST_RUN` with `repeat`): restores the frame,
    /// then tail-calls the program under test.
    pub const REPLAY: &str = "meshgw_bench_replay";
    /// `Array<ReplayFrame>`, one entry: the frame every repetition starts from.
    pub const REPLAY_FRAME: &str = "MGWB_REPLAY_FRAME";
    /// `ProgramArray`, one entry: the program under test.
    pub const REPLAY_PROGS: &str = "MGWB_REPLAY_PROGS";
}

/// Sink counter: VXLAN to a known node, carrying exactly what the node expects (dropped).
pub const SINK_DELIVERED: u32 = 0;
/// Sink counter: VXLAN on the benchmark's port that fails a check (dropped, and a failed run).
pub const SINK_WRONG: u32 = 1;
/// Sink counter: anything else (ARP, ...), passed on to the switch.
pub const SINK_PASSED: u32 = 2;
/// Number of sink counters.
pub const SINK_SLOTS: u32 = 3;
/// Most nodes the sink knows.
pub const SINK_MAX_NODES: u32 = 64;

/// The generator's frame: Ethernet, IPv4 without options, UDP, payload; 60 bytes (the smallest
/// Ethernet frame without FCS).
pub const GEN_FRAME_LEN: usize = 60;
/// Offset of the UDP source port in the generator's frame.
pub const GEN_SPORT_OFF: usize = 34;
/// Offset of the UDP checksum in the generator's frame.
pub const GEN_CHECK_OFF: usize = 40;

/// The generator's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Number of flows (source ports `sport_base .. sport_base + flows`); at least 1.
    pub flows: u32,
    /// First source port.
    pub sport_base: u16,
    /// One's-complement sum of everything the UDP checksum covers except the source port
    /// ([`udp4_frame`] computes it).
    pub partial: u16,
    /// The frame, written whole into every packet: live frames come back to the generator with
    /// whatever the path downstream did to them (DNAT, a new inner Ethernet header), because
    /// the kernel recycles their pages without restoring the data.
    pub frame: [u8; GEN_FRAME_LEN],
}

/// What the sink accepts for one node (the key is the node's underlay address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkNode {
    /// Destination MAC of the outer frame (the node's underlay interface).
    pub outer_mac: [u8; 6],
    /// Destination MAC of the inner frame (the node's VXLAN device).
    pub inner_mac: [u8; 6],
    /// Inner IPv4 destination (the backend on that node).
    pub inner_dst: [u8; 4],
    /// Inner UDP destination port, network order (the backend's port).
    pub inner_dport: [u8; 2],
    /// Padding.
    pub pad: [u8; 2],
    /// VXLAN network identifier.
    pub vni: u32,
}

const _: () = assert!(core::mem::size_of::<GenConfig>() == 8 + GEN_FRAME_LEN);
const _: () = assert!(core::mem::size_of::<SinkNode>() == 24);

/// The generator's frame and the [`GenConfig::partial`] sum that goes with it: UDP from
/// `src:sport` to `dst:dport`, 18 zero bytes of payload, a valid IPv4 and UDP checksum.
pub fn udp4_frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> ([u8; GEN_FRAME_LEN], u16) {
    let mut f = [0u8; GEN_FRAME_LEN];
    f[0..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (GEN_FRAME_LEN - 14) as u16;
    let udp_len = ip_len - 20;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut hdr = [0u8; 20];
    hdr.copy_from_slice(ip);
    f[24..26].copy_from_slice(&crate::csum::ipv4_header(&hdr).to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // Pseudo-header (addresses, protocol, length) and the UDP header and payload without the
    // source port and the checksum (both zero here; the payload is zero too).
    let mut acc = crate::csum::add_words(0, &src);
    acc = crate::csum::add_words(acc, &dst);
    acc += 17 + u32::from(udp_len);
    acc += u32::from(dport) + u32::from(udp_len);
    let partial = crate::csum::fold(acc);
    f[GEN_SPORT_OFF..GEN_SPORT_OFF + 2].copy_from_slice(&sport.to_be_bytes());
    f[GEN_CHECK_OFF..GEN_CHECK_OFF + 2].copy_from_slice(&udp4_check(partial, sport).to_be_bytes());
    (f, partial)
}

/// The UDP checksum of the generator's frame with source port `sport`.
#[inline(always)]
pub fn udp4_check(partial: u16, sport: u16) -> u16 {
    match !crate::csum::fold(u32::from(partial) + u32::from(sport)) {
        // Zero means "no checksum" in UDP over IPv4: a computed zero is sent as all ones.
        0 => 0xffff,
        c => c,
    }
}

/// The headers the sink reads: outer Ethernet, IPv4 (no options), UDP, VXLAN, inner Ethernet,
/// IPv4 (no options) and the inner UDP ports.
pub const SINK_HDR_LEN: usize = 14 + 20 + 8 + 8 + 14 + 20 + 4;

/// How the sink sees a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkVerdict {
    /// Not IPv4/UDP to the VXLAN port: none of the sink's business.
    Other,
    /// IPv4/UDP to the VXLAN port, to this outer destination address; check it with
    /// [`sink_matches`].
    Vxlan([u8; 4]),
}

/// Classifies the first [`SINK_HDR_LEN`] bytes of a frame (shorter frames are
/// [`SinkVerdict::Other`] to the caller).
#[inline(always)]
pub fn sink_classify(h: &[u8; SINK_HDR_LEN], vxlan_port: u16) -> SinkVerdict {
    if h[12] != 0x08 || h[13] != 0x00 || h[23] != 17 {
        return SinkVerdict::Other;
    }
    if u16::from_be_bytes([h[36], h[37]]) != vxlan_port {
        return SinkVerdict::Other;
    }
    SinkVerdict::Vxlan([h[30], h[31], h[32], h[33]])
}

/// Whether a VXLAN frame is exactly what `node` expects: outer MAC, no IP options, VXLAN with
/// the I flag and the node's VNI, inner MAC, inner IPv4 (no options) UDP to the backend.
#[inline(always)]
pub fn sink_matches(h: &[u8; SINK_HDR_LEN], node: &SinkNode) -> bool {
    let vni = node.vni.to_be_bytes();
    h[0..6] == node.outer_mac
        && h[14] == 0x45
        && h[42] & 0x08 != 0
        && h[46..49] == vni[1..4]
        && h[50..56] == node.inner_mac
        && h[62] == 0x08
        && h[63] == 0x00
        && h[64] == 0x45
        && h[73] == 17
        && h[80..84] == node.inner_dst
        && h[86..88] == node.inner_dport
}

/// Longest frame the replay program restores.
pub const REPLAY_MAX_LEN: usize = 128;

/// The frame the replay program writes back before every repetition. The kernel's `repeat`
/// runs a program again on the same buffer, as the previous repetition left it (its head moved,
/// its bytes rewritten): the replay program moves the head back to `len` bytes before the end
/// and writes the frame again, so a program that rewrites its packet (DNAT, encapsulation) can
/// be timed over many repetitions with warm caches, as it runs under load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayFrame {
    /// The frame's length: at least 8, at most [`REPLAY_MAX_LEN`].
    pub len: u32,
    /// Padding.
    pub pad: u32,
    /// The frame, in its first `len` bytes.
    pub frame: [u8; REPLAY_MAX_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data, every bit pattern valid, no implicit padding.
    unsafe impl aya::Pod for super::GenConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ReplayFrame {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SinkNode {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use std::vec::Vec;

    const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn reference(sport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SMAC, DMAC)
            .ipv4([10, 100, 0, 2], [10, 200, 0, 10], 64)
            .udp(sport, 53);
        let mut out = Vec::new();
        b.write(&mut out, &[0u8; 18]).expect("write");
        out
    }

    #[test]
    fn frame_checksums_are_valid_for_every_port() {
        for sport in [0u16, 1, 1024, 1279, 0x7fff, 0xfffe, 0xffff] {
            let (mut f, partial) =
                udp4_frame(DMAC, SMAC, [10, 100, 0, 2], [10, 200, 0, 10], 1024, 53);
            // What the generator program does per packet.
            f[GEN_SPORT_OFF..GEN_SPORT_OFF + 2].copy_from_slice(&sport.to_be_bytes());
            f[GEN_CHECK_OFF..GEN_CHECK_OFF + 2]
                .copy_from_slice(&udp4_check(partial, sport).to_be_bytes());
            let want = reference(sport);
            // etherparse leaves DF clear and the identification zero; ours sets DF.
            let p = SlicedPacket::from_ethernet(&f).expect("parse");
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!(udp.source_port(), sport);
            assert_eq!(udp.destination_port(), 53);
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let want_udp = etherparse::UdpHeader::with_ipv4_checksum(
                sport,
                53,
                &ip.header().to_header(),
                &[0u8; 18],
            )
            .expect("checksum");
            assert_eq!(udp.checksum(), want_udp.checksum, "sport {sport}");
            let hdr = ip.header().to_header();
            assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
            assert_eq!(f.len(), want.len());
            assert_eq!(f[34..], want[34..], "UDP part, sport {sport}");
        }
    }

    fn vxlan_frame(node: &SinkNode, dst: [u8; 4], port: u16) -> [u8; SINK_HDR_LEN] {
        let mut h = [0u8; SINK_HDR_LEN];
        h[0..6].copy_from_slice(&node.outer_mac);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        h[14] = 0x45;
        h[23] = 17;
        h[30..34].copy_from_slice(&dst);
        h[36..38].copy_from_slice(&port.to_be_bytes());
        h[42] = 0x08;
        h[46..49].copy_from_slice(&node.vni.to_be_bytes()[1..4]);
        h[50..56].copy_from_slice(&node.inner_mac);
        h[62..64].copy_from_slice(&[0x08, 0x00]);
        h[64] = 0x45;
        h[73] = 17;
        h[80..84].copy_from_slice(&node.inner_dst);
        h[86..88].copy_from_slice(&node.inner_dport);
        h
    }

    #[test]
    fn sink_accepts_only_the_expected_vxlan() {
        let node = SinkNode {
            outer_mac: [2, 0, 0, 0, 1, 1],
            inner_mac: [2, 0xaa, 0, 0, 0, 1],
            inner_dst: [10, 244, 1, 10],
            inner_dport: 5353u16.to_be_bytes(),
            pad: [0; 2],
            vni: 2,
        };
        let good = vxlan_frame(&node, [172, 18, 0, 11], 8472);
        assert_eq!(
            sink_classify(&good, 8472),
            SinkVerdict::Vxlan([172, 18, 0, 11])
        );
        assert!(sink_matches(&good, &node));
        assert_eq!(sink_classify(&good, 4789), SinkVerdict::Other);
        // Each field the sink checks, broken one at a time.
        for (off, byte) in [
            (0, 0xff),  // outer MAC
            (14, 0x46), // outer IP options
            (42, 0x00), // VXLAN I flag
            (48, 3),    // VNI
            (55, 9),    // inner MAC
            (63, 0xdd), // inner EtherType
            (64, 0x46), // inner IP options
            (73, 6),    // inner protocol
            (83, 11),   // inner destination
            (87, 0x36), // inner port
        ] {
            let mut bad = good;
            bad[off] = byte;
            assert!(!sink_matches(&bad, &node), "offset {off} not checked");
        }
        let mut arp = good;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(sink_classify(&arp, 8472), SinkVerdict::Other);
    }
}
