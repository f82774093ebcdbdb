//! Telemetry: per-frontend, per-backend and per-node traffic counters, and flow events (new
//! flows, sampled packets, policy drops) through the `MGW_EVENTS` ring buffer. A full ring buffer
//! loses the event, never the packet: the reader is the daemon, and it must not slow the path.

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf};
use meshgw_common::maps::MAX_SERVICES;
use meshgw_common::parse::Flow;
use meshgw_common::telemetry::{
    EventsConfig, FlowEvent, Traffic, BACKEND_TRAFFIC_SLOTS, EVENTS_F_DROPS, EVENTS_F_FLOWS,
    EVENTS_RING_BYTES, EVENT_DROP, EVENT_NEW_FLOW, EVENT_SAMPLE, MAX_NODE_STATS,
};

/// Pending bytes past which a submission wakes the reader. Below it no wakeup is sent: a wakeup
/// is an irq_work (a self-IPI, a VM exit on a virtual machine) costing microseconds per event,
/// and the daemon drains the ring on a short timer anyway.
const WAKEUP_BYTES: u64 = EVENTS_RING_BYTES as u64 / 4;

#[map(name = "MGW_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "MGW_EVENTS_CONFIG")]
static EVENTS_CONFIG: Array<EventsConfig> = Array::with_max_entries(1, 0);

#[map(name = "MGW_SVC_STATS")]
static SVC_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

// Indexed by backend id (ids are dense, from 1 to at most MAX_BACKENDS): a per-CPU array
// lookup is a few inlined instructions where a hash lookup is a helper call.
#[map(name = "MGW_BACKEND_TRAFFIC")]
static BACKEND_TRAFFIC: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(BACKEND_TRAFFIC_SLOTS, 0);

// Written by user space only (removed backends' traffic, per node: a node's traffic is the sum
// of its backends'); declared here so that the object carries and pins it.
#[map(name = "MGW_NODE_STATS")]
static NODE_STATS: PerCpuHashMap<[u8; 4], Traffic> =
    PerCpuHashMap::with_max_entries(MAX_NODE_STATS, 0);

#[map(name = "MGW_VIP_ICMP")]
static VIP_ICMP: PerCpuHashMap<[u8; 16], Traffic> =
    PerCpuHashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[inline(always)]
fn add(t: *mut Traffic, len: usize) {
    // SAFETY: a per-CPU value is only touched by this CPU; the pointer is non-null.
    unsafe {
        (*t).packets += 1;
        (*t).bytes += len as u64;
    }
}

/// Counts a packet of `f` sent to backend `backend_id` of service `service_id`. Per node
/// traffic is not counted here: user space sums it from the backends'.
#[inline(always)]
pub fn account(f: &Flow, service_id: u32, backend_id: u32) {
    if let Some(t) = SVC_STATS.get_ptr_mut(service_id) {
        add(t, f.l3_len);
    }
    if let Some(t) = BACKEND_TRAFFIC.get_ptr_mut(backend_id) {
        add(t, f.l3_len);
    }
}

/// Counts an ICMP/ICMPv6 echo packet `f` when its destination is a VIP (an entry the daemon made).
#[inline(always)]
pub fn account_vip_icmp(f: &Flow) {
    if let Some(t) = VIP_ICMP.get_ptr_mut(&f.dst) {
        add(t, f.l3_len);
    }
}

#[inline(always)]
fn config() -> EventsConfig {
    EVENTS_CONFIG.get(0).copied().unwrap_or_default()
}

/// What an event says besides the packet: kind, reason, ids.
pub struct EventMeta {
    pub kind: u8,
    pub reason: u8,
    pub service_id: u32,
    pub backend_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
}

#[inline(always)]
fn emit(f: &Flow, m: &EventMeta) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved record of the right size; every field is written before
    // submission.
    unsafe {
        (*e).ts_ns = crate::ct::precise_now();
        // Non-overlapping copies: plain assignments from the scratch map into the ring buffer
        // become calls to a byte-loop `memmove`.
        core::ptr::copy_nonoverlapping(&f.src, core::ptr::addr_of_mut!((*e).src), 1);
        core::ptr::copy_nonoverlapping(&f.dst, core::ptr::addr_of_mut!((*e).dst), 1);
        (*e).sport = f.sport;
        (*e).dport = f.dport;
        (*e).proto = f.proto;
        (*e).family = f.family;
        (*e).kind = m.kind;
        (*e).reason = m.reason;
        (*e).service_id = m.service_id;
        (*e).backend_id = m.backend_id;
        (*e).src_identity = m.src_identity;
        (*e).dst_identity = m.dst_identity;
        (*e).l3_len = f.l3_len as u32;
        (*e)._pad = 0;
    }
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if pending > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// A new flow was tracked.
#[inline(always)]
pub fn new_flow(f: &Flow, m: &EventMeta) {
    if config().flags & EVENTS_F_FLOWS != 0 {
        emit(f, m);
    }
}

/// A packet was dropped; `m.reason` is its counter slot.
#[inline(always)]
pub fn dropped(f: &Flow, m: &EventMeta) {
    if config().flags & EVENTS_F_DROPS != 0 {
        emit(f, m);
    }
}

/// A packet of a tracked flow: sent as an event one time in `sample_rate`.
#[inline(always)]
pub fn sample(f: &Flow, m: &EventMeta) {
    let rate = config().sample_rate;
    if rate == 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_get_prandom_u32() } % rate == 0 {
        emit(f, m);
    }
}

/// Kinds, re-exported for the call sites.
pub const NEW_FLOW: u8 = EVENT_NEW_FLOW;
/// See [`NEW_FLOW`].
pub const SAMPLE: u8 = EVENT_SAMPLE;
/// See [`NEW_FLOW`].
pub const DROP: u8 = EVENT_DROP;
