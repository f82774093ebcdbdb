//! The next hop towards each mesh node and each legacy client, cached per CPU. Mesh nodes: what a `bpf_fib_lookup` said (outer MACs,
//! output interface, path MTU) and the VXLAN header block built from it, so that a packet of an
//! established flow writes a template instead of asking the FIB. An entry is trusted for
//! [`MAX_AGE_NS`] and for the configuration it was built with; after that the next packet to the
//! node refreshes it with a real lookup, so a changed neighbour or route is followed within that
//! bound (and at once after user space flushes the map, `Datapath::flush_nexthops`). Legacy
//! clients, for the replies of their flows: the MACs and MTU of a lookup on the legacy
//! interface, under the same bound.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use aya_ebpf::programs::XdpContext;
use meshgw_common::encap::{write_vxlan_block, EncapParams, BLOCK_LEN};
use meshgw_common::maps::{
    client_hop_slots, nexthop_slots, v4_mapped, ClientHop, GatewayConfig, NextHop, FAMILY_V4,
};
use meshgw_common::parse::ETH_P_IP;

use crate::fib::{self, Fib};
use crate::maps::{Scratch, CLIENT_HOPS, CONFIG, NEXTHOP};

/// How long a cached next hop is used without asking the FIB again.
pub const MAX_AGE_NS: u64 = 250_000_000;

/// Length of the block's fixed part (outer headers and the inner Ethernet header) that a packet
/// does not change, as filled in by [`write_vxlan_block`] for an empty inner packet.
const EMPTY_INNER: u16 = 0;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments. The coarse clock (a tick's resolution) is plenty for
    // an age bound and cheaper than the precise one.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether `nh` may serve a packet to `node_ip` now under `cfg`.
#[inline(always)]
fn fresh(nh: &NextHop, node_ip: [u8; 4], cfg: &GatewayConfig, t: u64) -> bool {
    nh.node_ip == node_ip
        && t.wrapping_sub(nh.stamp_ns) < MAX_AGE_NS
        && nh.ifindex == cfg.mesh_ifindex
        && nh.mesh_ip == cfg.mesh_ip
        && nh.vni == cfg.vni
        && nh.vxlan_port == cfg.vxlan_port
}

/// The cached entry for `node_ip` in `slot` if it may serve a packet now.
#[inline(always)]
fn cached(slot: u32, node_ip: [u8; 4], cfg: &GatewayConfig, t: u64) -> Option<*const NextHop> {
    let nh = NEXTHOP.get_ptr(slot)?;
    // SAFETY: a live per-CPU map value, only this CPU's.
    fresh(unsafe { &*nh }, node_ip, cfg, t).then_some(nh)
}

/// The next hop towards `node_ip` for an outer packet of `outer_ip_len` bytes: a pointer to the
/// cached entry (or, when it cannot be cached, to `s.nh`), or the FIB's verdict (`TooBig` for a
/// packet over the path MTU, `Miss` when the node is not reachable through the mesh interface).
/// `t` is the packet's coarse clock reading (`s.now`).
#[inline(always)]
pub fn get(
    ctx: &XdpContext,
    s: &mut Scratch,
    cfg: &GatewayConfig,
    node_ip: [u8; 4],
    outer_ip_len: u16,
    t: u64,
) -> Result<*const NextHop, Fib> {
    let (a, b) = nexthop_slots(node_ip);
    let nh = match cached(a, node_ip, cfg, t).or_else(|| cached(b, node_ip, cfg, t)) {
        Some(nh) => nh,
        None => match refresh(ctx, s, node_ip, outer_ip_len) {
            Fib::Found => &s.nh as *const NextHop,
            other => return Err(other),
        },
    };
    // SAFETY: as above (or the scratch map's value).
    if outer_ip_len as u32 > unsafe { (*nh).mtu } {
        return Err(Fib::TooBig);
    }
    Ok(nh)
}

/// Asks the FIB for the way to `node_ip` and caches the answer in `s.nh` and the map (only a
/// complete one: a node whose neighbour is unresolved is asked again on its next packet). A
/// subprogram: it runs once per node and bound, and its frame stays off the hot path's (and so
/// takes few arguments: BPF passes at most five, in registers).
#[inline(never)]
fn refresh(ctx: &XdpContext, s: &mut Scratch, node_ip: [u8; 4], outer_ip_len: u16) -> Fib {
    let Some(cfg) = CONFIG.get(0) else {
        return Fib::Miss;
    };
    fib::prepare(
        &mut s.fib,
        true,
        &v4_mapped(cfg.mesh_ip),
        &v4_mapped(node_ip),
        cfg.mesh_ifindex,
        outer_ip_len,
    );
    match fib::lookup(ctx, &mut s.fib) {
        Fib::Found if s.fib.ifindex == cfg.mesh_ifindex => {}
        Fib::TooBig => return Fib::TooBig,
        _ => return Fib::Miss,
    }
    let enc = EncapParams {
        outer_dst_mac: s.fib.dmac,
        outer_src_mac: s.fib.smac,
        src_ip: cfg.mesh_ip,
        dst_ip: node_ip,
        src_port: 0,
        dst_port_be: cfg.vxlan_port,
        vni: cfg.vni,
        inner_dst_mac: [0; 6],
        inner_src_mac: cfg.vtep_mac,
        inner_ethertype: ETH_P_IP,
        inner_l3_len: EMPTY_INNER,
    };
    let t = now();
    let nh = &mut s.nh;
    write_vxlan_block(&enc, &mut nh.block);
    nh.stamp_ns = t;
    // On success the kernel returns the route's MTU where the packet length was (the union of
    // `tot_len` and `mtu_result`): later packets are checked against it here.
    nh.mtu = u32::from(s.fib.tot_len);
    nh.ifindex = cfg.mesh_ifindex;
    nh.mesh_ip = cfg.mesh_ip;
    nh.vni = cfg.vni;
    nh.vxlan_port = cfg.vxlan_port;
    nh._pad = [0; 2];
    nh.node_ip = node_ip;
    let (a, b) = nexthop_slots(node_ip);
    let busy = |slot: u32| match NEXTHOP.get_ptr(slot) {
        // SAFETY: a live per-CPU map value, only this CPU's.
        Some(e) => unsafe { (*e).node_ip != node_ip && t.wrapping_sub((*e).stamp_ns) < MAX_AGE_NS },
        None => false,
    };
    let _ = NEXTHOP.set(victim(a, b, busy), &*nh, 0);
    Fib::Found
}

/// Which of an entry's two cache slots a fresh entry goes to: the first unless it holds another
/// key's entry that is still in use (`busy`: within the age bound) and the second does not, so
/// two keys sharing a first slot both stay cached. A full pair evicts the first slot's entry,
/// whose next packet asks the FIB again.
#[inline(always)]
fn victim(a: u32, b: u32, busy: impl Fn(u32) -> bool) -> u32 {
    if busy(a) && !busy(b) {
        b
    } else {
        a
    }
}

const _: () = assert!(BLOCK_LEN == 64);

/// The MACs (destination, source) the reply to the client `s.inner.dst` (from `vip`,
/// `l3_len` bytes) goes to when the FIB knows the client on the legacy interface: as a lookup
/// would say, but from the cache while its entry is fresh. `t` is the packet's coarse clock
/// reading.
#[inline(always)]
pub fn client(
    ctx: &XdpContext,
    s: &mut Scratch,
    cfg: &GatewayConfig,
    vip: &[u8; 16],
    l3_len: u16,
    t: u64,
) -> Option<([u8; 6], [u8; 6])> {
    let (a, b) = client_hop_slots(&s.inner.dst);
    for slot in [a, b] {
        let Some(h) = CLIENT_HOPS.get_ptr(slot) else {
            continue;
        };
        // SAFETY: a live per-CPU map value, only this CPU's; copied out into locals (a copy
        // into the scratch map would be a byte-loop memmove).
        let (stamp, ifindex, mtu, dmac, smac) =
            unsafe { ((*h).stamp_ns, (*h).ifindex, (*h).mtu, (*h).dmac, (*h).smac) };
        // SAFETY: as above.
        if same_addr(unsafe { &(*h).addr }, &s.inner.dst)
            && t.wrapping_sub(stamp) < MAX_AGE_NS
            && ifindex == cfg.legacy_ifindex
        {
            // Over the MTU the FIB answers "fragmentation needed", not the MACs.
            return (u32::from(l3_len) <= mtu).then_some((dmac, smac));
        }
    }
    if !refresh_client(ctx, s, vip, l3_len) {
        return None;
    }
    Some((s.fib.dmac, s.fib.smac))
}

/// Asks the FIB for the way to the client `s.inner.dst` and caches a complete answer.
#[inline(never)]
fn refresh_client(ctx: &XdpContext, s: &mut Scratch, vip: &[u8; 16], l3_len: u16) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let v4 = s.inner.family == FAMILY_V4;
    fib::prepare(
        &mut s.fib,
        v4,
        vip,
        &s.inner.dst,
        cfg.legacy_ifindex,
        l3_len,
    );
    if fib::lookup(ctx, &mut s.fib) != Fib::Found || s.fib.ifindex != cfg.legacy_ifindex {
        return false;
    }
    let t = now();
    let h = ClientHop {
        stamp_ns: t,
        mtu: u32::from(s.fib.tot_len),
        ifindex: s.fib.ifindex,
        dmac: s.fib.dmac,
        smac: s.fib.smac,
        _pad: [0; 4],
        addr: s.inner.dst,
    };
    let dst = &s.inner.dst;
    let (a, b) = client_hop_slots(dst);
    let busy = |slot: u32| match CLIENT_HOPS.get_ptr(slot) {
        // SAFETY: a live per-CPU map value, only this CPU's.
        Some(e) => unsafe {
            !same_addr(&(*e).addr, dst) && t.wrapping_sub((*e).stamp_ns) < MAX_AGE_NS
        },
        None => false,
    };
    let _ = CLIENT_HOPS.set(victim(a, b, busy), &h, 0);
    true
}

/// Whether two 16-byte addresses are equal, compared as two words (an array comparison becomes
/// a call to a byte-loop `memcmp` in BPF). Both are eight-byte aligned: a `ClientHop`'s at
/// offset 32, a `Flow`'s as asserted in `meshgw_common::parse`.
#[inline(always)]
fn same_addr(x: &[u8; 16], y: &[u8; 16]) -> bool {
    let (x, y) = (x.as_ptr() as *const u64, y.as_ptr() as *const u64);
    // SAFETY: both point at 16 readable, eight-byte-aligned bytes (see above).
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        x.read() == y.read() && x.add(1).read() == y.add(1).read()
    }
}

const _: () = assert!(core::mem::offset_of!(ClientHop, addr) % 8 == 0);
