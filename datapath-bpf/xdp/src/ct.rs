//! Connection tracking: every packet of a flow goes to the backend its first packet got, even when
//! the Maglev table changes. A forward entry (client -> VIP) holds the backend; a reverse entry
//! (backend -> client) holds what the reply needs: the VIP to restore and the client's L2 details.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::programs::XdpContext;
use meshgw_common::hash::vxlan_source_port;
use meshgw_common::maps::{
    BackendValue, CtEntry, CtKey, ServiceValue, CT_DIR_FORWARD, CT_DIR_REVERSE,
};
use meshgw_common::parse::{load, Flow};
use meshgw_common::stats::Counter;

use crate::ctx::XdpPacket;
use crate::events::{self, EventMeta};
use crate::lookup;
use crate::maps::{Clock, Scratch, CT};
use crate::policy;
use crate::stats::count;

// The word writes of `backend_for` rely on this layout: 8-aligned entries, the address at an
// 8-byte offset, and the two MACs filling bytes 64..76.
const _: () = assert!(
    core::mem::align_of::<CtEntry>() == 8
        && core::mem::offset_of!(CtEntry, nat_addr) % 8 == 0
        && core::mem::offset_of!(CtEntry, peer_mac) == 64
        && core::mem::offset_of!(CtEntry, local_mac) == 70
        && core::mem::offset_of!(CtEntry, src_identity) == 76
);

/// Reverse entries carry this in `flags` when the client's frames had an 802.1Q tag (a TCI of 0
/// is a valid priority tag, so the TCI alone cannot say it).
pub const CT_F_VLAN: u32 = 1 << 8;

pub const REFRESH_NS: u64 = 1_000_000_000;

/// The clock of tracking entries and next-hop ages: the coarse monotonic clock (a tick's
/// resolution, plenty for idle timeouts, the once-a-second refresh and the next hops' age
/// bound), read at most once per tick and CPU. The coarse clock only moves when the tick moves
/// `jiffies`, and `bpf_jiffies64` is inlined by the verifier into one load where the clock is a
/// helper call (tens of ns with the CPU's return-thunk mitigation): within a tick the reading
/// cached in `c` is the clock's value. (A CPU that reads the clock between another CPU's jiffies
/// increment and its clock update keeps the previous tick's value for one tick: a lag of at most
/// one more tick.)
#[inline(always)]
pub fn now(c: &mut Clock) -> u64 {
    // SAFETY: a helper without arguments.
    let j = unsafe { bpf_jiffies64() };
    if j == c.jiffies {
        return c.ns;
    }
    // SAFETY: as above.
    let t = unsafe { bpf_ktime_get_coarse_ns() };
    c.jiffies = j;
    c.ns = t;
    t
}

/// The precise monotonic clock, for flow events' timestamps.
#[inline(always)]
pub fn precise_now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn forward_key(f: &Flow) -> CtKey {
    CtKey {
        src: f.src,
        dst: f.dst,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        family: f.family,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

/// The key a reply from `b` to the flow's client is found under.
#[inline(always)]
pub fn reverse_key(f: &Flow, b: &BackendValue) -> CtKey {
    CtKey {
        src: b.addr,
        dst: f.src,
        sport: b.port,
        dport: f.sport,
        proto: f.proto,
        family: f.family,
        dir: CT_DIR_REVERSE,
        _pad: 0,
    }
}

/// Counts a packet on a tracking entry (`CtEntry` or `SnatEntry`, which share these fields); the
/// timestamp only once a second, to keep the cache line quiet. A macro because the two entry
/// types are distinct map values and a BPF program has no trait objects worth their cost.
macro_rules! touch_entry {
    ($e:expr, $f:expr, $t:expr) => {{
        let (e, f, t) = ($e, $f, $t);
        // SAFETY: `e` is a live map value pointer; racing CPUs may lose an increment, which
        // only makes the per-flow counters approximate (the per-CPU counters are exact).
        unsafe {
            (*e).packets += 1;
            (*e).bytes += f.l3_len as u64;
            if t > (*e).last_seen_ns + $crate::ct::REFRESH_NS {
                (*e).last_seen_ns = t;
            }
            if f.proto == meshgw_common::parse::IPPROTO_TCP
                && f.tcp_flags & (meshgw_common::parse::TCP_FIN | meshgw_common::parse::TCP_RST)
                    != 0
            {
                (*e).flags |= meshgw_common::maps::CT_F_CLOSING;
            }
        }
    }};
}
pub(crate) use touch_entry;

/// Counts a packet on a connection-tracking entry.
#[inline(always)]
pub fn touch(e: *mut CtEntry, f: &Flow, t: u64) {
    touch_entry!(e, f, t);
}

/// What [`backend_for`] decided.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// `s.backend` holds the flow's backend.
    Backend,
    /// The service has no usable backend.
    NoBackend,
    /// Policy denies the new flow; nothing was tracked.
    Denied,
}

/// Finds the flow's backend, creating or repairing the entries as needed; with `policy`, a new
/// flow is first checked against it. The established flow's path is inlined into the caller
/// (every BPF call and return pays the CPU's return-thunk mitigation); a new or moved flow goes
/// on in [`create`], a subprogram whose frame does not add to the caller's.
#[inline(always)]
pub fn backend_for(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue, policy: bool) -> Admit {
    let f = &s.flow;
    let t = now(&mut s.clock);
    s.now = t;
    if let Some(fwd) = CT.get_ptr_mut(&forward_key(f)) {
        // SAFETY: live map value.
        let (id, src_port) = unsafe { ((*fwd).backend_id, (*fwd).nat_port) };
        if let Some(b) = lookup::backend(id) {
            // Entries made before the port was recorded have 0 there (never a source port).
            let src_port = if src_port != 0 {
                src_port
            } else {
                vxlan_source_port(f.hash())
            };
            touch(fwd, f, t);
            events::account(f, svc.service_id, id);
            events::sample(
                f,
                &EventMeta {
                    kind: events::SAMPLE,
                    reason: 0,
                    service_id: svc.service_id,
                    backend_id: id,
                    // SAFETY: live map value.
                    src_identity: unsafe { (*fwd).src_identity },
                    dst_identity: b.identity,
                },
            );
            s.backend = b;
            s.src_port = src_port;
            crate::flowcache::fill(s, fwd, id, svc.service_id, src_port, t);
            return Admit::Backend;
        }
        // The backend was removed: move the flow, as Cilium does, rather than black-hole it.
        count(Counter::CtReselected);
    } else {
        count(Counter::CtCreated);
    }
    create(ctx, s, svc, policy)
}

/// A new flow, or one whose backend is gone: picks its backend (Maglev), checks policy, and
/// tracks it (reverse entry first, then forward), at the time `s.now`.
#[inline(never)]
fn create(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue, policy: bool) -> Admit {
    let t = s.now;
    let f = &s.flow;
    let hash = f.hash();
    let src_port = vxlan_source_port(hash);
    let key = forward_key(f);
    let Some((id, b)) = lookup::maglev(svc, hash) else {
        return Admit::NoBackend;
    };
    let src_identity = if policy {
        let src = policy::source_identity(&f.src);
        if !policy::admits(src, b.identity, b.port, f.proto) {
            events::dropped(
                f,
                &EventMeta {
                    kind: events::DROP,
                    reason: Counter::DropPolicy as u8,
                    service_id: svc.service_id,
                    backend_id: id,
                    src_identity: src,
                    dst_identity: b.identity,
                },
            );
            return Admit::Denied;
        }
        count(Counter::PolicyAllowed);
        src
    } else {
        0
    };
    // The client's L2 details, for the reply path: the frame's MACs (a parsed frame has them).
    let macs = load::<[u8; 12], _>(&XdpPacket { ctx }, 0).unwrap_or([0; 12]);
    let e: *mut CtEntry = &mut s.entry;
    let l2 = [
        u64::from_ne_bytes([
            macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1],
        ]),
        u64::from(u32::from_ne_bytes([macs[2], macs[3], macs[4], macs[5]])),
    ];
    // Field by field, in words, with volatile stores: a struct literal with
    // `..CtEntry::default()` and array clears compile to byte-loop `memset` calls in BPF.
    // SAFETY: `e` points at the scratch map's entry; the word-sized fields are written at their
    // own (aligned) addresses, and the MACs as the two words covering bytes 64..76 (asserted
    // below).
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile as w};
        w(addr_of_mut!((*e).created_ns), t);
        w(addr_of_mut!((*e).last_seen_ns), t);
        w(addr_of_mut!((*e).packets), 0);
        w(addr_of_mut!((*e).bytes), 0);
        core::ptr::copy_nonoverlapping(&f.dst, addr_of_mut!((*e).nat_addr), 1);
        w(addr_of_mut!((*e).nat_port), f.dport);
        w(addr_of_mut!((*e).vlan_tci), f.vlan_tci);
        w(addr_of_mut!((*e).backend_id), id);
        w(addr_of_mut!((*e).service_id), svc.service_id);
        w(addr_of_mut!((*e).flags), if f.vlan { CT_F_VLAN } else { 0 });
        let mac_words = addr_of_mut!((*e).peer_mac) as *mut u64;
        w(mac_words, l2[0]);
        w(mac_words.add(1) as *mut u32, l2[1] as u32);
        w(addr_of_mut!((*e).src_identity), src_identity);
    }
    // Reverse first: a reply can only exist once the forward packet left, never the other way.
    // SAFETY: `e` is the scratch map's entry, fully written above.
    let _ = CT.insert(&reverse_key(f, &b), unsafe { &*e }, 0);
    // The forward entry: no NAT or L2 details but the VXLAN source port (so that the flow's
    // later packets need not hash it), the first packet counted.
    // SAFETY: as above.
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile as w};
        let nat = addr_of_mut!((*e).nat_addr) as *mut u64;
        w(nat, 0);
        w(nat.add(1), 0);
        w(addr_of_mut!((*e).nat_port), src_port);
        w(addr_of_mut!((*e).vlan_tci), 0);
        w(addr_of_mut!((*e).flags), 0);
        let mac_words = addr_of_mut!((*e).peer_mac) as *mut u64;
        w(mac_words, 0);
        w(mac_words.add(1) as *mut u32, 0);
        w(addr_of_mut!((*e).packets), 1);
        w(addr_of_mut!((*e).bytes), f.l3_len as u64);
    }
    // SAFETY: as above.
    let e = unsafe { &*e };
    let _ = CT.insert(&key, e, 0);
    events::account(f, svc.service_id, id);
    events::new_flow(
        f,
        &EventMeta {
            kind: events::NEW_FLOW,
            reason: 0,
            service_id: svc.service_id,
            backend_id: id,
            src_identity,
            dst_identity: b.identity,
        },
    );
    s.backend = b;
    s.src_port = src_port;
    Admit::Backend
}
