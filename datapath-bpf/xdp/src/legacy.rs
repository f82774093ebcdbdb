//! The legacy interface: a packet to a VIP is DNATed to a backend and sent to that backend's node
//! in VXLAN; everything else goes to the kernel.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use meshgw_common::encap::BLOCK_LEN;
use meshgw_common::hash::vxlan_source_port;
use meshgw_common::maps::{
    BackendValue, GatewayConfig, CFG_F_EGRESS, CFG_F_ENABLED, CFG_F_POLICY, DEV_MESH, FAMILY_V4,
};
use meshgw_common::parse::{
    parse_into, rewrite, Kind, Side, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
    IPPROTO_TCP, IPPROTO_UDP,
};
use meshgw_common::stats::Counter;

use crate::ct;
use crate::ctx::{rewrite_frame, XdpPacket};
use crate::egress;
use crate::encap::{encapsulate, Inner};
use crate::events::{self, EventMeta};
use crate::fib::Fib;
use crate::flowcache;
use crate::lookup;
use crate::maps::{with_scratch, Scratch, CONFIG, DEVMAP};
use crate::nexthop;
use crate::stats::{count, drop, pass};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    count(Counter::LegacyRx);
    with_scratch(ctx, Counter::LegacyPass, handle)
}

// Inlined into the entry point, as are the established flow's stages below: every BPF call and
// return pays the CPU's return-thunk mitigation (AMD SRSO: tens of ns each), so the hot path
// keeps to one frame where the verifier's 512-byte stack allows.
#[inline(always)]
fn handle(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) if c.flags & CFG_F_ENABLED != 0 => c,
        _ => return pass(Counter::LegacyPass),
    };
    // Inlined rather than the `parse_frame` subprogram: see above.
    match parse_into(&XdpPacket { ctx }, 0, &mut s.flow) {
        Kind::Flow => {}
        Kind::Other => return pass(Counter::LegacyPass),
        Kind::Malformed => return pass(Counter::Malformed),
    }
    let f = &s.flow;
    if f.proto != IPPROTO_TCP && f.proto != IPPROTO_UDP {
        // Pings to a VIP are the kernel's to answer; they are counted per VIP on the way.
        if f.proto == IPPROTO_ICMP || f.proto == IPPROTO_ICMPV6 {
            events::account_vip_icmp(f);
        }
        return pass(Counter::LegacyPass);
    }
    let t = ct::now(&mut s.clock);
    s.now = t;
    s.epoch = flowcache::epoch();
    if let Some(e) = flowcache::lookup(s, t) {
        // SAFETY: a live per-CPU map value, only this CPU's.
        let (id, service_id, src_port, src_identity) = unsafe {
            (
                (*e).backend_id,
                (*e).service_id,
                (*e).src_port,
                (*e).src_identity,
            )
        };
        // A removed backend's flow goes the full way, which moves it.
        if let Some(b) = lookup::backend_ref(id) {
            // Copied at once: user space empties a slot in two writes (the family first), and
            // the fields are read on both sides of helper calls.
            let b = *b;
            let f = &s.flow;
            flowcache::count(e, f);
            events::account(f, service_id, id);
            events::sample(
                f,
                &EventMeta {
                    kind: events::SAMPLE,
                    reason: 0,
                    service_id,
                    backend_id: id,
                    src_identity,
                    dst_identity: b.identity,
                },
            );
            let action = tunnel_to_backend(ctx, s, cfg, &b, src_port, Counter::VipForwarded);
            if action == xdp_action::XDP_REDIRECT {
                count(Counter::FlowCacheHit);
            }
            return action;
        }
    }
    let f = &s.flow;
    // The flow hash only for packets that need it: a pass-through never computes it, and an
    // established flow has its VXLAN source port in its tracking entry.
    let (done, src_port) = match lookup::service(f) {
        Some(svc) => {
            if f.fragment {
                return pass(Counter::Fragment);
            }
            if svc.backend_count == 0 {
                return drop(Counter::DropNoBackend);
            }
            match ct::backend_for(ctx, s, &svc, cfg.flags & CFG_F_POLICY != 0) {
                ct::Admit::Backend => {}
                ct::Admit::NoBackend => return drop(Counter::DropNoBackend),
                ct::Admit::Denied => return drop(Counter::DropPolicy),
            }
            (Counter::VipForwarded, s.src_port)
        }
        // Not for a VIP: the reply of an egress flow goes back to its endpoint the same way.
        None if cfg.flags & CFG_F_EGRESS != 0 && egress::reply_target(s) => {
            let f = &s.flow;
            (Counter::EgressReplied, vxlan_source_port(f.hash()))
        }
        None => return pass(Counter::LegacyPass),
    };
    let b = s.backend;
    tunnel_to_backend(ctx, s, cfg, &b, src_port, done)
}

/// Sends the packet in `s.flow` to backend `b`: DNAT to the backend's address and port, VXLAN
/// towards its node, redirect to the mesh interface; `done` counts a packet that left.
#[inline(always)]
pub fn tunnel_to_backend(
    ctx: &XdpContext,
    s: &mut Scratch,
    cfg: &GatewayConfig,
    b: &BackendValue,
    src_port: u16,
    done: Counter,
) -> u32 {
    let f = &s.flow;
    if b.family != f.family {
        return drop(Counter::DropNoBackend);
    }
    let outer_ip_len = (f.l3_len + (BLOCK_LEN - ETH_LEN)) as u16;
    let t = s.now;
    let nh = match nexthop::get(ctx, s, cfg, b.node_ip, outer_ip_len, t) {
        Ok(nh) => nh,
        Err(Fib::TooBig) => return drop(Counter::DropTooBig),
        Err(_) => return drop(Counter::DropFibMiss),
    };
    let f = &s.flow;
    // IPv4 inlined (its frame fits beside this one's), IPv6 in the subprogram.
    let rewritten = if f.family == FAMILY_V4 {
        rewrite(&XdpPacket { ctx }, f, Side::Destination, &b.addr, b.port).is_some()
    } else {
        rewrite_frame(ctx, f, Side::Destination, &b.addr, b.port)
    };
    if !rewritten {
        return pass(Counter::Malformed);
    }
    let inner = Inner {
        l3_off: f.l3_off,
        l3_len: f.l3_len as u16,
        src_port,
        dst_mac: b.node_mac,
        src_mac: cfg.vtep_mac,
        ethertype: if f.family == FAMILY_V4 {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        },
    };
    if encapsulate(ctx, nh, &inner).is_none() {
        return drop(Counter::DropHeadroom);
    }
    count(done);
    DEVMAP.redirect(DEV_MESH, 0).unwrap_or(xdp_action::XDP_DROP)
}
