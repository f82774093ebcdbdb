//! The per-CPU flow cache: an established forward flow's packets are sent on from an array slot
//! (an inlined lookup and a few compares) instead of the service and connection-tracking hash
//! lookups, which are kernel calls that hash their keys and, with the CPU's return-thunk
//! mitigation, pay tens of ns each. What an entry may serve, and for how long, is on
//! [`FlowCacheEntry`]; the full path ([`crate::ct::backend_for`]) fills it.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, PerCpuArray};
use meshgw_common::maps::{
    flow_cache_slot, CtEntry, CtKey, FlowCacheEntry, CT_DIR_FORWARD, FLOW_CACHE_SLOTS,
};
use meshgw_common::parse::{Flow, IPPROTO_TCP, TCP_FIN, TCP_RST};

use crate::ct::REFRESH_NS;
use crate::maps::{Scratch, CT};

#[map(name = "MGW_FLOW_CACHE")]
static FLOW_CACHE: PerCpuArray<FlowCacheEntry> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

#[map(name = "MGW_FLOW_EPOCH")]
static FLOW_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

// The word reads below rely on this layout: both structs eight-aligned, the addresses at
// eight-byte offsets, the two ports one aligned word.
const _: () = assert!(
    core::mem::align_of::<Flow>() == 8
        && core::mem::offset_of!(Flow, src) % 8 == 0
        && core::mem::offset_of!(Flow, dst) == core::mem::offset_of!(Flow, src) + 16
        && core::mem::offset_of!(Flow, dport) == core::mem::offset_of!(Flow, sport) + 2
        && core::mem::offset_of!(Flow, sport) % 4 == 0
        && core::mem::align_of::<FlowCacheEntry>() == 8
        && core::mem::offset_of!(FlowCacheEntry, src) == 0
        && core::mem::offset_of!(FlowCacheEntry, dst) == 16
        && core::mem::offset_of!(FlowCacheEntry, ports) == 32
);

/// The flow's addresses as four u64 words (src, then dst) and its ports as one u32.
#[inline(always)]
fn flow_words(f: &Flow) -> ([u64; 4], u32) {
    #[allow(clippy::cast_ptr_alignment)]
    let a = core::ptr::addr_of!(f.src) as *const u64;
    #[allow(clippy::cast_ptr_alignment)]
    let p = core::ptr::addr_of!(f.sport) as *const u32;
    // SAFETY: `src` and `dst` are 32 contiguous bytes at an eight-byte offset of an
    // eight-aligned struct, the ports an aligned word (asserted above); any bits are a u64/u32.
    unsafe {
        (
            [a.read(), a.add(1).read(), a.add(2).read(), a.add(3).read()],
            p.read(),
        )
    }
}

/// The flow's slot (see [`flow_cache_slot`]).
#[inline(always)]
fn slot(w: &[u64; 4], ports: u32, proto: u8) -> u32 {
    let lo = |x: u64| x as u32;
    let hi = |x: u64| (x >> 32) as u32;
    flow_cache_slot(
        [lo(w[0]), hi(w[0]), lo(w[1]), hi(w[1])],
        [lo(w[2]), hi(w[2]), lo(w[3]), hi(w[3])],
        ports,
        proto,
    )
}

/// Whether `e` is the entry of the flow whose words are `w`, `ports`.
///
/// # Safety
/// `e` points at a live map value.
#[inline(always)]
unsafe fn holds(e: *const FlowCacheEntry, w: &[u64; 4], ports: u32, f: &Flow) -> bool {
    #[allow(clippy::cast_ptr_alignment)]
    let k = e as *const u64;
    k.read() == w[0]
        && k.add(1).read() == w[1]
        && k.add(2).read() == w[2]
        && k.add(3).read() == w[3]
        && (k.add(4) as *const u32).read() == ports
        && (*e).proto == f.proto
        && (*e).family == f.family
}

/// The cache's current epoch.
#[inline(always)]
pub fn epoch() -> u32 {
    FLOW_EPOCH.get(0).copied().unwrap_or(0)
}

/// Whether a packet of `f` may be served from the cache at all: TCP FIN and RST, and fragments,
/// always take the full path.
#[inline(always)]
fn cacheable(f: &Flow) -> bool {
    !f.fragment && (f.proto != IPPROTO_TCP || f.tcp_flags & (TCP_FIN | TCP_RST) == 0)
}

/// The cache entry that may serve the packet in `s.flow` at time `t` in epoch `s.epoch`; `None`
/// sends the packet the full way. The caller checks the backend slot, then counts the packet
/// with [`count`].
#[inline(always)]
pub fn lookup(s: &Scratch, t: u64) -> Option<*mut FlowCacheEntry> {
    let f = &s.flow;
    if !cacheable(f) {
        return None;
    }
    let (w, ports) = flow_words(f);
    let e = FLOW_CACHE.get_ptr_mut(slot(&w, ports, f.proto))?;
    // SAFETY: a live per-CPU map value, only this CPU's.
    unsafe {
        if !holds(e, &w, ports, f)
            || (*e).epoch != s.epoch
            || t.wrapping_sub((*e).stamp_ns) >= REFRESH_NS
        {
            return None;
        }
    }
    Some(e)
}

/// Counts a packet of `f` sent from entry `e`.
#[inline(always)]
pub fn count(e: *mut FlowCacheEntry, f: &Flow) {
    // SAFETY: `e` is this CPU's live map value (from [`lookup`]).
    unsafe {
        (*e).packets += 1;
        (*e).bytes += f.l3_len as u64;
    }
}

/// Caches the flow in `s.flow`, whose forward tracking entry `fwd` the packet just found (and
/// counted): backend `backend_id` of service `service_id` (the one the packet found: an old
/// tracking entry may name an id the service had before), VXLAN source port `src_port`, at time
/// `t`, in epoch `s.epoch`. The slot's previous packets are added to their tracking entry first: to `fwd` when the
/// slot already held this flow, else found by [`evict`].
#[inline(always)]
pub fn fill(
    s: &mut Scratch,
    fwd: *mut CtEntry,
    backend_id: u32,
    service_id: u32,
    src_port: u16,
    t: u64,
) {
    let f = &s.flow;
    if !cacheable(f) {
        return;
    }
    let (w, ports) = flow_words(f);
    let Some(e) = FLOW_CACHE.get_ptr_mut(slot(&w, ports, f.proto)) else {
        return;
    };
    // SAFETY: `e` is this CPU's live map value and `fwd` a live tracking entry; racing CPUs may
    // lose an increment of the flow's counters, which are approximate (see `ct::touch`).
    unsafe {
        if (*e).packets != 0 {
            if holds(e, &w, ports, f) {
                (*fwd).packets += (*e).packets;
                (*fwd).bytes += (*e).bytes;
            } else {
                evict(&mut s.ct_key, e);
            }
        }
        #[allow(clippy::cast_ptr_alignment)]
        let k = e as *mut u64;
        k.write(w[0]);
        k.add(1).write(w[1]);
        k.add(2).write(w[2]);
        k.add(3).write(w[3]);
        (k.add(4) as *mut u32).write(ports);
        (*e).proto = f.proto;
        (*e).family = f.family;
        (*e).src_port = src_port;
        (*e).backend_id = backend_id;
        (*e).service_id = service_id;
        (*e).src_identity = (*fwd).src_identity;
        (*e).epoch = s.epoch;
        (*e).stamp_ns = t;
        (*e).packets = 0;
        (*e).bytes = 0;
    }
}

/// Adds the packets of another flow's entry `e` to that flow's tracking entry, if it still
/// exists. A subprogram: it runs only when two busy flows share a slot, and its key stays off
/// the hot path's stack.
#[inline(never)]
fn evict(key: &mut CtKey, e: *mut FlowCacheEntry) {
    // SAFETY: `e` is this CPU's live map value; the key is built in the scratch map.
    unsafe {
        let k: *mut CtKey = key;
        core::ptr::copy_nonoverlapping(&(*e).src, core::ptr::addr_of_mut!((*k).src), 1);
        core::ptr::copy_nonoverlapping(&(*e).dst, core::ptr::addr_of_mut!((*k).dst), 1);
        (*k).sport = (*e).ports[0];
        (*k).dport = (*e).ports[1];
        (*k).proto = (*e).proto;
        (*k).family = (*e).family;
        (*k).dir = CT_DIR_FORWARD;
        (*k)._pad = 0;
        if let Some(fwd) = CT.get_ptr_mut(&*k) {
            (*fwd).packets += (*e).packets;
            (*fwd).bytes += (*e).bytes;
        }
    }
}
