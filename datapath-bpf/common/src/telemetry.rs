//! Telemetry the programs export besides the slot counters of [`crate::stats`]: per-frontend,
//! per-backend and per-node traffic counters (per-CPU, packets and bytes), and flow events
//! (new flows, sampled packets, policy drops) through a BPF ring buffer.

/// Packets and bytes (L3 length) of one object, one value per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes of the IP packets (L3 length, before encapsulation).
    pub bytes: u64,
}

/// Event settings, at index 0 of the `MGW_EVENTS_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsConfig {
    /// One packet in `sample_rate` of tracked flows is sent as an [`EVENT_SAMPLE`]; 0 is off.
    pub sample_rate: u32,
    /// [`EVENTS_F_FLOWS`] and [`EVENTS_F_DROPS`].
    pub flags: u32,
}

/// Send an [`EVENT_NEW_FLOW`] for each new flow.
pub const EVENTS_F_FLOWS: u32 = 1;
/// Send an [`EVENT_DROP`] for each policy drop.
pub const EVENTS_F_DROPS: u32 = 2;

/// A new flow: the first packet created its connection-tracking entries.
pub const EVENT_NEW_FLOW: u8 = 1;
/// A sampled packet of a tracked flow.
pub const EVENT_SAMPLE: u8 = 2;
/// A dropped packet; `reason` says why.
pub const EVENT_DROP: u8 = 3;

/// One ring buffer record. Addresses are IPv4-mapped for IPv4; ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic since boot).
    pub ts_ns: u64,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address (the VIP for frontend flows).
    pub dst: [u8; 16],
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// L4 protocol.
    pub proto: u8,
    /// [`crate::maps::FAMILY_V4`] or [`crate::maps::FAMILY_V6`].
    pub family: u8,
    /// [`EVENT_NEW_FLOW`], [`EVENT_SAMPLE`] or [`EVENT_DROP`].
    pub kind: u8,
    /// For drops: the [`crate::stats::Counter`] slot the drop was counted in.
    pub reason: u8,
    /// The frontend's service id (0: none).
    pub service_id: u32,
    /// The backend chosen (0: none).
    pub backend_id: u32,
    /// Source security identity (0: policy not enforced).
    pub src_identity: u32,
    /// Destination (backend) security identity (0: unknown).
    pub dst_identity: u32,
    /// Length of the IP packet.
    pub l3_len: u32,
    /// Padding, always zero.
    pub _pad: u32,
}

/// Size of the event ring buffer in bytes (a power of two and a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Slots of the per-backend traffic array: backend ids run from 1 to at most
/// [`crate::maps::MAX_BACKENDS`].
pub const BACKEND_TRAFFIC_SLOTS: u32 = crate::maps::MAX_BACKENDS + 1;
/// Nodes whose traffic is counted (per tunnel peer).
pub const MAX_NODE_STATS: u32 = 4096;

/// Map names of this module (pinned like the others).
pub mod names {
    /// Ring buffer of [`super::FlowEvent`].
    pub const EVENTS: &str = "MGW_EVENTS";
    /// [`super::EventsConfig`] at index 0.
    pub const EVENTS_CONFIG: &str = "MGW_EVENTS_CONFIG";
    /// Per-CPU array: service id -> [`super::Traffic`] (client -> VIP direction).
    pub const SVC_STATS: &str = "MGW_SVC_STATS";
    /// Per-CPU array: backend id -> [`super::Traffic`] (client -> backend direction). Named
    /// apart from the per-CPU hash `MGW_BACKEND_STATS` of earlier releases, so that a pinned map
    /// of the old type is never reused as this one.
    pub const BACKEND_STATS: &str = "MGW_BACKEND_TRAFFIC";
    /// Per-CPU hash, written by user space only: node IPv4 address (network order bytes as
    /// `[u8; 4]`) -> [`super::Traffic`] of backends that were removed. A node's traffic is this
    /// plus the sum of its live backends' (the datapath counts per backend only).
    pub const NODE_STATS: &str = "MGW_NODE_STATS";
    /// Per-CPU hash: VIP (IPv4-mapped for IPv4) -> [`super::Traffic`] of the ICMP/ICMPv6 echo packets
    /// (pings) sent to it: they go to the kernel, which answers them. The daemon creates one entry per
    /// VIP it owns; the program only counts into existing entries, so the map holds VIPs only.
    pub const VIP_ICMP: &str = "MGW_VIP_ICMP";
    /// Every map of this module.
    pub const ALL: [&str; 6] = [
        EVENTS,
        EVENTS_CONFIG,
        SVC_STATS,
        BACKEND_STATS,
        NODE_STATS,
        VIP_ICMP,
    ];
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 72);
const _: () = assert!(core::mem::size_of::<Traffic>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain #[repr(C)] data without padding holes or pointers.
    unsafe impl aya::Pod for Traffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventsConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEvent {}
}

impl FlowEvent {
    /// Reads an event from a ring buffer record; `None` when the record is too short.
    pub fn from_bytes(b: &[u8]) -> Option<FlowEvent> {
        if b.len() < core::mem::size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: the length is checked, every bit pattern is a valid FlowEvent, and
        // read_unaligned makes no alignment assumption.
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<FlowEvent>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_refused() {
        assert!(FlowEvent::from_bytes(&[0u8; 71]).is_none());
        let mut raw = [0u8; 72];
        raw[0] = 7;
        raw[68] = 1;
        let e = FlowEvent::from_bytes(&raw).expect("full record");
        assert_eq!(e.ts_ns, 7);
        assert_eq!(e._pad, 1);
    }
}
