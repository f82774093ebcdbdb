//! Map names, sizes and key/value layouts. Every struct is `#[repr(C)]` with explicit padding so
//! that the BPF side and user space agree byte for byte; sizes are asserted at compile time.
//!
//! Addresses are stored as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`), with the family beside it. Ports are in network byte order, exactly as on
//! the wire, so the datapath never swaps them.

/// Address family tag for IPv4 entries.
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 entries.
pub const FAMILY_V6: u8 = 6;

/// Size of every service's Maglev lookup table (a prime, as the Maglev paper requires; large
/// enough for an even spread over a few dozen backends while keeping each table at 4 KiB).
pub const MAGLEV_SIZE: usize = 1021;

/// Maximum number of (VIP, port, protocol) frontends.
pub const MAX_SERVICES: u32 = 65_536;
/// Maximum number of backends over all services.
pub const MAX_BACKENDS: u32 = 262_144;
/// Slots of `MGW_BACKENDS`, an array indexed by backend id: ids are 1..=[`MAX_BACKENDS`] (0 is
/// never a backend), so slot 0 stays empty.
pub const BACKEND_SLOTS: u32 = MAX_BACKENDS + 1;
/// Maximum number of Maglev tables (one per frontend).
pub const MAX_MAGLEV: u32 = 65_536;
/// Maximum number of known mesh nodes (VXLAN peers).
pub const MAX_NODES: u32 = 16_384;
/// Connection-tracking entries (forward and reverse entries both count); LRU-evicted when full.
pub const CT_MAX: u32 = 524_288;
/// Prefixes with an identity: legacy prefixes and policy CIDRs, and, while policy is enforced,
/// every endpoint address (as many as backends).
pub const MAX_IDENTITY_PREFIXES: u32 = MAX_BACKENDS;
/// Policy entries.
pub const MAX_POLICY: u32 = 65_536;
/// Egress rules, expanded: one entry per (mesh endpoint, destination prefix).
pub const MAX_EGRESS: u32 = 65_536;
/// Source-NAT entries of egress flows (both directions count); LRU-evicted when full.
pub const SNAT_MAX: u32 = 262_144;
/// Source ports handed out by egress SNAT: `SNAT_PORT_MIN..=SNAT_PORT_MAX`. Above the kernel's
/// default ephemeral range (32768-60999), so a connection the gateway's own stack opens from an
/// egress address never shares a port with a translated flow.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Upper end of the SNAT port range.
pub const SNAT_PORT_MAX: u16 = 65_535;
/// How many ports a new egress flow tries before it is dropped (`drop_egress_ports`).
pub const SNAT_PORT_TRIES: u32 = 8;

/// In a [`PolicyKey`], any source identity, or any port and protocol.
pub const ID_ANY: u32 = 0;
/// Cilium's reserved `world` identity: a legacy source no configured prefix covers.
pub const ID_WORLD: u32 = 2;
/// A [`PolicyKey`] protocol meaning any protocol (with port 0: any port).
pub const PROTO_ANY: u8 = 0;
/// [`PolicyValue`]: allowed.
pub const POLICY_ALLOW: u32 = 1;
/// [`PolicyKey::dir`]: legacy host -> mesh endpoint (`src` is the legacy identity).
pub const POLICY_INGRESS: u8 = 0;
/// [`PolicyKey::dir`]: mesh endpoint -> legacy host (`src` is the endpoint's identity, `dst` the
/// legacy host's, and the wildcard is on `dst`).
pub const POLICY_EGRESS: u8 = 1;

/// Map names as they appear in the object file and as file names under the bpffs pin directory.
pub mod names {
    /// [`super::GatewayConfig`] at index 0.
    pub const CONFIG: &str = "MGW_CONFIG";
    /// [`super::ServiceKey`] -> [`super::ServiceValue`].
    pub const SERVICES: &str = "MGW_SERVICES";
    /// service id (`u32`) -> [`super::MaglevTable`].
    pub const MAGLEV: &str = "MGW_MAGLEV";
    /// Array: backend id (`u32`, 1..=[`super::MAX_BACKENDS`]) -> [`super::BackendValue`]; an
    /// all-zero slot (family 0) is no backend.
    pub const BACKENDS: &str = "MGW_BACKENDS";
    /// [`super::NodeKey`] -> [`super::NodeValue`]: VXLAN sources accepted on the mesh side.
    pub const NODES: &str = "MGW_NODES";
    /// [`super::CtKey`] -> [`super::CtEntry`] (LRU).
    pub const CT: &str = "MGW_CT";
    /// Devmap: [`super::DEV_MESH`] and [`super::DEV_LEGACY`].
    pub const DEVMAP: &str = "MGW_DEVMAP";
    /// Per-CPU `u64` counters indexed by [`crate::stats::Counter`].
    pub const STATS: &str = "MGW_STATS";
    /// LPM trie: source address (16 bytes, IPv4-mapped; prefix length + 96 for IPv4) ->
    /// security identity (`u32`).
    pub const IDENTITIES: &str = "MGW_IDENTITIES";
    /// [`super::PolicyKey`] -> [`super::PolicyValue`].
    pub const POLICY: &str = "MGW_POLICY";
    /// LPM trie: [`super::EgressKey`] (source exact, destination prefix) -> [`super::EgressValue`].
    pub const EGRESS: &str = "MGW_EGRESS";
    /// [`super::CtKey`] (dir [`super::CT_DIR_EGRESS`] or [`super::CT_DIR_EGRESS_REPLY`]) ->
    /// [`super::SnatEntry`] (LRU).
    pub const SNAT: &str = "MGW_SNAT";
    /// Per-CPU array of [`super::NEXTHOP_SLOTS`] [`super::NextHop`]s, a node's entry in one of
    /// the two slots [`super::nexthop_slots`] gives its IPv4 address (the entry names its node).
    /// A cache, never pinned: a new program starts with an empty one.
    pub const NEXTHOP: &str = "MGW_NEXTHOP";
    /// Per-CPU array of [`super::CLIENT_HOP_SLOTS`] [`super::ClientHop`]s, a client's entry in
    /// one of the two slots [`super::client_hop_slots`] gives its address. A cache like
    /// [`NEXTHOP`], never pinned.
    pub const CLIENT_HOPS: &str = "MGW_CLIENT_HOPS";
    /// Per-CPU array of [`super::FLOW_CACHE_SLOTS`] [`super::FlowCacheEntry`]s, a flow's entry
    /// in the slot [`super::flow_cache_slot`] gives. A cache, never pinned.
    pub const FLOW_CACHE: &str = "MGW_FLOW_CACHE";
    /// Array of one `u32`: the flow cache's epoch. An entry is only used while it carries the
    /// current epoch, so one write here empties every CPU's cache (see
    /// [`super::FlowCacheEntry`]). Never pinned, like the cache it belongs to.
    pub const FLOW_EPOCH: &str = "MGW_FLOW_EPOCH";
    /// Every map the programs use, for pinning.
    pub const ALL: [&str; 12] = [
        CONFIG, SERVICES, MAGLEV, BACKENDS, NODES, CT, DEVMAP, STATS, IDENTITIES, POLICY, EGRESS,
        SNAT,
    ];
}

/// Program names (the Rust function names in the XDP crate).
pub mod programs {
    /// Attached to the legacy interface: VIP load balancing and VXLAN encapsulation.
    pub const LEGACY: &str = "meshgw_legacy";
    /// Attached to the mesh interface: VXLAN decapsulation and reverse NAT of replies.
    pub const MESH: &str = "meshgw_mesh";
    /// A plain pass, for veth peers that must have NAPI to receive redirected frames.
    pub const PASS: &str = "meshgw_pass";
}

/// Devmap slot of the mesh interface.
pub const DEV_MESH: u32 = 0;
/// Devmap slot of the legacy interface.
pub const DEV_LEGACY: u32 = 1;

/// Gateway-wide settings the programs read, at index 0 of the `MGW_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Outer IPv4 source of the VXLAN packets (the gateway's mesh address), network order.
    pub mesh_ip: [u8; 4],
    /// VXLAN VNI sent: the gateway's security identity (2, `world`, for Cilium's VTEP mode).
    pub vni: u32,
    /// VXLAN UDP destination port, network order.
    pub vxlan_port: u16,
    /// Bit flags ([`CFG_F_ENABLED`]).
    pub flags: u16,
    /// Ifindex of the mesh interface (for the FIB lookup of outer next hops).
    pub mesh_ifindex: u32,
    /// Ifindex of the legacy interface (for the FIB lookup of replies).
    pub legacy_ifindex: u32,
    /// Inner source MAC of encapsulated frames: the gateway's VTEP MAC (Cilium's `vtep-mac`).
    pub vtep_mac: [u8; 6],
    /// Padding, always zero.
    pub _pad: [u8; 2],
}
/// The programs forward only when this flag is set; until then everything passes to the kernel.
pub const CFG_F_ENABLED: u16 = 1;
/// Policy is enforced: new flows need an allow entry in `MGW_POLICY`. Without it no policy
/// lookup is made at all.
pub const CFG_F_POLICY: u16 = 2;
/// Egress rules exist: the mesh program looks up `MGW_EGRESS` for new flows from endpoints, and
/// the legacy program looks up `MGW_SNAT` for packets that are not for a VIP. Without it neither
/// lookup is made.
pub const CFG_F_EGRESS: u16 = 4;

/// A policy entry: (source identity, destination identity, destination port, protocol). The
/// datapath tries, in order, the exact key, any port of that protocol... see the lookup order in
/// the XDP crate's policy stage; [`ID_ANY`] and [`PROTO_ANY`] are the wildcards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Source identity, or [`ID_ANY`].
    pub src: u32,
    /// Destination identity (the backend's).
    pub dst: u32,
    /// Destination port (the backend's), network order; 0 with [`PROTO_ANY`].
    pub dport: u16,
    /// IP protocol, or [`PROTO_ANY`].
    pub proto: u8,
    /// [`POLICY_INGRESS`] or [`POLICY_EGRESS`].
    pub dir: u8,
}

/// A policy verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// [`POLICY_ALLOW`].
    pub verdict: u32,
}

/// A frontend: (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The VIP (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// The frontend port, network order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// What the datapath needs of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index of this frontend's table in `MGW_MAGLEV`; also its id in flow records.
    pub service_id: u32,
    /// Number of backends in the table; 0 means the service has none (packets are dropped and
    /// counted, as Cilium does, rather than answered by the gateway's own stack).
    pub backend_count: u32,
    /// Reserved for policy and affinity flags.
    pub flags: u32,
    /// Padding, always zero.
    pub _pad: u32,
}

/// A service's Maglev lookup table: slot -> backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaglevTable {
    /// Backend ids; 0 is never a valid id.
    pub slots: [u32; MAGLEV_SIZE],
    /// Pads the value to 4096 bytes: the verifier's bound on a multiply-shift index is a little
    /// loose (it allows the last slot's address + 3), and the padding absorbs that.
    pub _pad: [u32; 3],
}

impl MaglevTable {
    /// A table whose every slot is `id`.
    pub const fn filled(id: u32) -> Self {
        Self {
            slots: [id; MAGLEV_SIZE],
            _pad: [0; 3],
        }
    }
}

/// A backend: the pod address and port, and where to tunnel to reach it. In `MGW_BACKENDS` a
/// value whose `family` is 0 is an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    /// Pod address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Pod port, network order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Reserved flags.
    pub flags: u8,
    /// The node hosting the pod: outer IPv4 destination, network order.
    pub node_ip: [u8; 4],
    /// Inner destination MAC towards that node.
    pub node_mac: [u8; 6],
    /// Padding, always zero.
    pub _pad: [u8; 2],
    /// The pod's security identity (0 when unknown), the destination of policy lookups.
    pub identity: u32,
}

/// A mesh node, by its underlay IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Underlay IPv4 address, network order.
    pub ip: [u8; 4],
}

/// What the mesh program knows of a node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeValue {
    /// Cluster id of the node (0 for static nodes).
    pub cluster_id: u32,
    /// Reserved flags.
    pub flags: u32,
}

/// Direction tag of a connection-tracking key: client -> VIP, as first seen on the legacy side.
pub const CT_DIR_FORWARD: u8 = 0;
/// Direction tag of a connection-tracking key: backend -> client, as seen inside VXLAN.
pub const CT_DIR_REVERSE: u8 = 1;

/// A connection-tracking key: the 5-tuple as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (ICMP: echo identifier), network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`CT_DIR_FORWARD`] or [`CT_DIR_REVERSE`].
    pub dir: u8,
    /// Padding, always zero.
    pub _pad: u8,
}

/// Direction tag of a source-NAT key: endpoint -> legacy host, as seen inside VXLAN.
pub const CT_DIR_EGRESS: u8 = 2;
/// Direction tag of a source-NAT key: legacy host -> egress address, the reply of an egress flow.
pub const CT_DIR_EGRESS_REPLY: u8 = 3;

/// The TCP flow saw a FIN or RST: user space expires it early.
pub const CT_F_CLOSING: u32 = 1;

/// A connection-tracking entry. Forward entries (client -> VIP) use `backend_id`; reverse entries
/// (backend -> client) use `nat_*` to restore the VIP and the client-side L2 details.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_coarse_ns` (monotonic, a tick's resolution) at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// Packets seen in this direction.
    pub packets: u64,
    /// Bytes seen in this direction (L3 length).
    pub bytes: u64,
    /// Reverse: the VIP to restore as source.
    pub nat_addr: [u8; 16],
    /// Reverse: the frontend port to restore as source, network order. Forward: the VXLAN
    /// source port (host order) of the flow's tunnelled packets, so that they need not hash the
    /// flow again (0 in entries made before it was recorded: the port is then computed).
    pub nat_port: u16,
    /// Reverse: the client's 802.1Q TCI (VLAN id and priority), 0 when the client was untagged.
    pub vlan_tci: u16,
    /// The backend chosen for this flow.
    pub backend_id: u32,
    /// The frontend's service id.
    pub service_id: u32,
    /// [`CT_F_CLOSING`] and future flags.
    pub flags: u32,
    /// Reverse: the client-side source MAC of the forward packets (used when the FIB cannot
    /// resolve the client, and for tagged clients).
    pub peer_mac: [u8; 6],
    /// Reverse: the gateway's own MAC on the legacy side (the forward packets' destination).
    pub local_mac: [u8; 6],
    /// The client's security identity when the flow was admitted (0 without policy).
    pub src_identity: u32,
}

/// An egress rule entry's key: the endpoint's address exactly, then the destination prefix. The
/// LPM prefix length is 128 + the destination's (IPv4-mapped: + 96 for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressKey {
    /// The mesh endpoint (pod) address.
    pub src: [u8; 16],
    /// The destination prefix's address.
    pub dst: [u8; 16],
}

/// The rule matched: the packet is routed through the gateway, not translated.
pub const EGRESS_F_EXCLUDED: u32 = 1;

/// What an egress rule gives a matching flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressValue {
    /// The source address to translate to (IPv4-mapped for IPv4).
    pub egress_ip: [u8; 16],
    /// [`EGRESS_F_EXCLUDED`].
    pub flags: u32,
    /// The rule's index in the configuration, for flow records and status.
    pub rule: u32,
}

/// A source-NAT entry. An [`CT_DIR_EGRESS`] entry (endpoint -> host) holds the translated source;
/// an [`CT_DIR_EGRESS_REPLY`] entry (host -> egress address) holds the endpoint to restore and
/// the node to tunnel the reply to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatEntry {
    /// `bpf_ktime_get_coarse_ns` (monotonic, a tick's resolution) at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// Packets seen in this direction.
    pub packets: u64,
    /// Bytes seen in this direction (L3 length).
    pub bytes: u64,
    /// Egress: the egress address. Reply: the endpoint's address.
    pub addr: [u8; 16],
    /// Egress: the translated source port. Reply: the endpoint's port. Network order.
    pub port: u16,
    /// Padding, always zero.
    pub _pad: u16,
    /// Reply: the node hosting the endpoint, outer IPv4 destination, network order.
    pub node_ip: [u8; 4],
    /// Reply: the inner destination MAC towards that node (the node's VXLAN device).
    pub node_mac: [u8; 6],
    /// Padding, always zero.
    pub _pad2: [u8; 2],
    /// [`CT_F_CLOSING`].
    pub flags: u32,
    /// The endpoint's security identity when the flow was admitted (0 without policy).
    pub src_identity: u32,
    /// The legacy destination's identity when the flow was admitted (0 without policy).
    pub dst_identity: u32,
    /// The egress rule's index.
    pub rule: u32,
}

/// Slots of the next-hop cache (`MGW_NEXTHOP`): a power of two, as many as nodes can be known.
pub const NEXTHOP_SLOTS: u32 = MAX_NODES;
const _: () = assert!(NEXTHOP_SLOTS.is_power_of_two());

/// Slots of the client next-hop cache (`MGW_CLIENT_HOPS`): a power of two.
pub const CLIENT_HOP_SLOTS: u32 = 16_384;
const _: () = assert!(CLIENT_HOP_SLOTS.is_power_of_two());

/// The two slots of a per-CPU cache array of `slots` entries (a power of two) an entry for `key`
/// may live in: two multiplicative hashes of it. An array index is an inlined lookup where a
/// hash map is a chain of kernel calls, and the second choice keeps two busy keys whose first
/// slots collide from evicting each other on every packet. The entry itself names its key.
#[inline(always)]
const fn cache_slots(key: u32, slots: u32) -> (u32, u32) {
    let shift = 32 - slots.trailing_zeros();
    (
        key.wrapping_mul(0x9e37_79b1) >> shift,
        key.wrapping_mul(0x85eb_ca6b) >> shift,
    )
}

/// The two slots of `MGW_NEXTHOP` a node's entry may live in, by its IPv4 address (as read from
/// memory).
#[inline(always)]
pub const fn nexthop_slots(node_ip: [u8; 4]) -> (u32, u32) {
    cache_slots(u32::from_ne_bytes(node_ip), NEXTHOP_SLOTS)
}

/// The two slots of `MGW_CLIENT_HOPS` a client's entry may live in, by its 16-byte address
/// (IPv4-mapped for IPv4), folded to one word.
#[inline(always)]
pub fn client_hop_slots(addr: &[u8; 16]) -> (u32, u32) {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = w(0) ^ w(4).rotate_left(8) ^ w(8).rotate_left(16) ^ w(12).rotate_left(24);
    cache_slots(folded, CLIENT_HOP_SLOTS)
}

/// Slots of the flow cache (`MGW_FLOW_CACHE`) per CPU: a power of two (80 bytes each, 1.25 MiB
/// a CPU).
pub const FLOW_CACHE_SLOTS: u32 = 16_384;
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());

/// The slot of `MGW_FLOW_CACHE` a flow's entry lives in: its addresses folded to one word each,
/// mixed with its ports and protocol by one multiplication. `src` and `dst` as four native-order
/// words (IPv4-mapped for IPv4), `ports` the source and destination port as they lie in the
/// packet (one native-order word). Not the flow hash (`Flow::hash`): a slot needs no quality
/// beyond spreading flows, and this costs a handful of instructions on the packet path.
#[inline(always)]
pub const fn flow_cache_slot(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8) -> u32 {
    let s = src[0] ^ src[1] ^ src[2] ^ src[3];
    let d = dst[0] ^ dst[1] ^ dst[2] ^ dst[3];
    let x = s ^ d.rotate_left(16) ^ ports.rotate_left(8) ^ proto as u32;
    x.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

/// An established forward flow as the legacy program caches it (per CPU, in the flow's
/// [`flow_cache_slot`] of `MGW_FLOW_CACHE`): what a packet of the flow needs to be sent on
/// without the service and connection-tracking lookups, which are hash-map lookups (kernel
/// calls hashing a 20- and a 40-byte key; most of an established packet's cost). The cache is
/// filled when a packet of a tracked flow takes the full path, and an entry serves a packet
/// only while it is younger than a second (the connection-tracking entry is then found again:
/// its idle clock and counters move on, a removed entry is noticed), while its backend slot
/// holds a backend, and while it carries the current epoch (`MGW_FLOW_EPOCH`, moved by user
/// space when a service goes, so that a removed VIP stops forwarding at once). TCP FIN and RST
/// always take the full path (connection tracking marks the flow closing). `packets` and
/// `bytes` count the packets the cache sent since the entry was filled; they are added to the
/// connection-tracking entry when the entry is refilled or evicted.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    /// The client's address (IPv4-mapped for IPv4); with the fields to `family`, the flow.
    pub src: [u8; 16],
    /// The VIP.
    pub dst: [u8; 16],
    /// Source and destination port as they lie in the packet (network order each).
    pub ports: [u16; 2],
    /// L4 protocol.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; 0 in an empty slot (never a parsed flow's).
    pub family: u8,
    /// VXLAN source port of the flow's tunnelled packets, host order.
    pub src_port: u16,
    /// The flow's backend.
    pub backend_id: u32,
    /// The frontend's service id.
    pub service_id: u32,
    /// The client's security identity when the flow was admitted (for flow samples).
    pub src_identity: u32,
    /// `MGW_FLOW_EPOCH` when the entry was filled.
    pub epoch: u32,
    /// When the entry was filled (coarse monotonic clock, ns).
    pub stamp_ns: u64,
    /// Packets sent from this entry not yet added to the connection-tracking entry.
    pub packets: u64,
    /// Their bytes (L3 length).
    pub bytes: u64,
}

impl FlowCacheEntry {
    /// The forward tracking key of the flow this entry holds.
    pub fn forward_key(&self) -> CtKey {
        CtKey {
            src: self.src,
            dst: self.dst,
            sport: self.ports[0],
            dport: self.ports[1],
            proto: self.proto,
            family: self.family,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        }
    }

    /// Whether this entry is the forward flow `key`'s (whatever its direction tag says).
    pub fn holds(&self, key: &CtKey) -> bool {
        self.family != 0
            && self.src == key.src
            && self.dst == key.dst
            && self.ports == [key.sport, key.dport]
            && self.proto == key.proto
            && self.family == key.family
    }
}

/// The [`flow_cache_slot`] of the forward flow `key`, as the legacy program computes it from
/// the packet.
pub fn flow_cache_slot_of(key: &CtKey) -> u32 {
    let words = |a: &[u8; 16]| {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        [w(0), w(4), w(8), w(12)]
    };
    let (s, d) = (key.sport.to_ne_bytes(), key.dport.to_ne_bytes());
    flow_cache_slot(
        words(&key.src),
        words(&key.dst),
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
        key.proto,
    )
}

/// The next hop towards a mesh node as the XDP programs cache it (per CPU, in one of the node's
/// [`nexthop_slots`] of `MGW_NEXTHOP`): the VXLAN header block built from a FIB lookup, and what
/// it was built with.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The 64-byte header block (outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet) for an empty
    /// inner packet: a packet patches in its lengths, checksum, source port and inner MACs.
    pub block: [u8; 64],
    /// When the FIB was asked (coarse monotonic clock, ns).
    pub stamp_ns: u64,
    /// The path MTU the FIB reported: larger outer packets are dropped as too big.
    pub mtu: u32,
    /// The output interface (the mesh interface's ifindex when the entry was made).
    pub ifindex: u32,
    /// The configuration the block was built with: a change makes the entry stale.
    pub mesh_ip: [u8; 4],
    /// See [`NextHop::mesh_ip`].
    pub vni: u32,
    /// See [`NextHop::mesh_ip`] (network order).
    pub vxlan_port: u16,
    /// Padding, always zero.
    pub _pad: [u8; 2],
    /// The node this entry is for (network order); all zero in an empty slot.
    pub node_ip: [u8; 4],
}

impl Default for NextHop {
    fn default() -> Self {
        Self {
            block: [0; 64],
            stamp_ns: 0,
            mtu: 0,
            ifindex: 0,
            mesh_ip: [0; 4],
            vni: 0,
            vxlan_port: 0,
            _pad: [0; 2],
            node_ip: [0; 4],
        }
    }
}

/// The L2 next hop towards a legacy client as the mesh program caches it for replies (per CPU,
/// in one of the client's [`client_hop_slots`] of `MGW_CLIENT_HOPS`): what a FIB lookup on the
/// legacy interface said.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientHop {
    /// When the FIB was asked (coarse monotonic clock, ns).
    pub stamp_ns: u64,
    /// The path MTU the FIB reported: a larger reply is treated as the FIB treats it.
    pub mtu: u32,
    /// The output interface (the legacy interface's ifindex when the entry was made).
    pub ifindex: u32,
    /// Destination MAC (the client or its router).
    pub dmac: [u8; 6],
    /// Source MAC (the legacy interface).
    pub smac: [u8; 6],
    /// Padding, always zero.
    pub _pad: [u8; 4],
    /// The client this entry is for (IPv4-mapped for IPv4); all zero in an empty slot.
    pub addr: [u8; 16],
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(GatewayConfig, 28);
assert_size!(ServiceKey, 20);
assert_size!(ServiceValue, 16);
assert_size!(MaglevTable, 4096);
assert_size!(BackendValue, 36);
assert_size!(NodeKey, 4);
assert_size!(NodeValue, 8);
assert_size!(CtKey, 40);
assert_size!(CtEntry, 80);
assert_size!(PolicyKey, 12);
assert_size!(PolicyValue, 4);
assert_size!(EgressKey, 32);
assert_size!(EgressValue, 24);
assert_size!(SnatEntry, 80);
assert_size!(NextHop, 96);
assert_size!(ClientHop, 48);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made only of integers and byte arrays, with explicit
    // padding fields, so any bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for GatewayConfig {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for FlowCacheEntry {}
    unsafe impl aya::Pod for NodeKey {}
    unsafe impl aya::Pod for NodeValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for EgressKey {}
    unsafe impl aya::Pod for EgressValue {}
    unsafe impl aya::Pod for SnatEntry {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for ClientHop {}
}

/// Stores an IPv4 address as IPv4-mapped IPv6 bytes.
#[inline(always)]
pub const fn v4_mapped(ip: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3],
    ]
}
