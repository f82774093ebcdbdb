//! The maps, named as in `meshgw_common::maps::names` (user space pins them by those names).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use meshgw_common::maps::{
    BackendValue, ClientHop, CtEntry, CtKey, EgressKey, EgressValue, GatewayConfig, MaglevTable,
    NextHop, NodeKey, NodeValue, PolicyKey, PolicyValue, ServiceKey, ServiceValue, SnatEntry,
    BACKEND_SLOTS, CLIENT_HOP_SLOTS, CT_MAX, MAX_EGRESS, MAX_IDENTITY_PREFIXES, MAX_MAGLEV,
    MAX_NODES, MAX_POLICY, MAX_SERVICES, NEXTHOP_SLOTS, SNAT_MAX,
};
use meshgw_common::parse::Flow;
use meshgw_common::stats::COUNTER_SLOTS;

use crate::fib::FibParams;

#[map(name = "MGW_CONFIG")]
pub static CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

#[map(name = "MGW_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

// Not preallocated: 4 KiB a table, only for the services that exist.
#[map(name = "MGW_MAGLEV")]
pub static MAGLEV: HashMap<u32, MaglevTable> =
    HashMap::with_max_entries(MAX_MAGLEV, BPF_F_NO_PREALLOC);

// Indexed by backend id, like MGW_BACKEND_TRAFFIC: an array lookup is a few inlined
// instructions where a hash lookup is a helper call (and, with the CPU's return-thunk
// mitigation, an expensive one). An empty slot is all zero (family 0).
#[map(name = "MGW_BACKENDS")]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(BACKEND_SLOTS, 0);

#[map(name = "MGW_NODES")]
pub static NODES: HashMap<NodeKey, NodeValue> = HashMap::with_max_entries(MAX_NODES, 0);

#[map(name = "MGW_CT")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_MAX, 0);

#[map(name = "MGW_DEVMAP")]
pub static DEVMAP: DevMap = DevMap::with_max_entries(2, 0);

#[map(name = "MGW_IDENTITIES")]
pub static IDENTITIES: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_IDENTITY_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "MGW_POLICY")]
pub static POLICY: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(MAX_POLICY, BPF_F_NO_PREALLOC);

#[map(name = "MGW_EGRESS")]
pub static EGRESS: LpmTrie<EgressKey, EgressValue> =
    LpmTrie::with_max_entries(MAX_EGRESS, BPF_F_NO_PREALLOC);

#[map(name = "MGW_SNAT")]
pub static SNAT: LruHashMap<CtKey, SnatEntry> = LruHashMap::with_max_entries(SNAT_MAX, 0);

/// Not pinned: a cache that a new program may start empty. An array (see
/// `meshgw_common::maps::nexthop_slots`): its lookup is inlined by the verifier, where a hash
/// lookup is a helper call.
#[map(name = "MGW_NEXTHOP")]
pub static NEXTHOP: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXTHOP_SLOTS, 0);

/// Not pinned, like `NEXTHOP`, and an array like it (see
/// `meshgw_common::maps::client_hop_slots`). As many clients as connection-tracking keeps flows
/// for would be too many to cache; a client whose two slots hold busier ones is asked of the FIB.
#[map(name = "MGW_CLIENT_HOPS")]
pub static CLIENT_HOPS: PerCpuArray<ClientHop> = PerCpuArray::with_max_entries(CLIENT_HOP_SLOTS, 0);

#[map(name = "MGW_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-packet working memory. The BPF stack is 512 bytes for a whole call chain, and Rust's
/// frames are generous; the large per-packet structures live here instead, one copy per CPU
/// (XDP runs to completion on one CPU, so nothing else touches it meanwhile). Not pinned: it
/// holds no state between packets but a clock cache, which a new program may start empty.
#[repr(C)]
pub struct Scratch {
    /// Legacy: the packet. Mesh: the outer (VXLAN) packet.
    pub flow: Flow,
    /// Mesh: the packet inside the VXLAN frame.
    pub inner: Flow,
    /// FIB lookup parameters and results.
    pub fib: FibParams,
    /// A next-hop cache entry being built.
    pub nh: NextHop,
    /// A connection-tracking entry being created.
    pub entry: CtEntry,
    /// The backend chosen for the packet.
    pub backend: BackendValue,
    /// The VXLAN source port (host order) the packet is tunnelled with.
    pub src_port: u16,
    /// The flow cache's epoch as read before the packet's service lookup: an entry filled for
    /// the packet carries it, so that a service removed meanwhile (and the epoch moved after)
    /// cannot leave a fresh entry behind.
    pub epoch: u32,
    /// The coarse clock as read once for the packet (by whichever stage read it first), so
    /// that later stages do not pay another helper call for it.
    pub now: u64,
    /// The per-CPU cache of [`crate::ct::now`]; unlike the rest, it outlives the packet.
    pub clock: Clock,
    /// A source-NAT entry being created.
    pub snat: SnatEntry,
    /// Egress: the translated source address and port (network order).
    pub nat_addr: [u8; 16],
    pub nat_port: u16,
    /// Egress: a connection-tracking key being looked up or inserted.
    pub ct_key: CtKey,
    /// Egress: the rule lookup's key.
    pub egress_key: aya_ebpf::maps::lpm_trie::Key<EgressKey>,
}

/// The coarse clock's last reading on this CPU and the `jiffies` it was read at (see
/// [`crate::ct::now`]); zero until the first reading.
#[repr(C)]
pub struct Clock {
    pub jiffies: u64,
    pub ns: u64,
}

#[map(name = "MGW_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Runs `handle` with this CPU's scratch memory; without it (never, in practice: a one-entry
/// per-CPU array always has its entry) the packet goes to the kernel, counted as `fallback`.
#[inline(always)]
pub fn with_scratch(
    ctx: &aya_ebpf::programs::XdpContext,
    fallback: meshgw_common::stats::Counter,
    handle: fn(&aya_ebpf::programs::XdpContext, &mut Scratch) -> u32,
) -> u32 {
    match SCRATCH.get_ptr_mut(0) {
        // SAFETY: the per-CPU scratch value is ours alone for this invocation.
        Some(s) => handle(ctx, unsafe { &mut *s }),
        None => crate::stats::pass(fallback),
    }
}
