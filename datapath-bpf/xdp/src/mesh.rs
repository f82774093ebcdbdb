//! The mesh interface: VXLAN from a known node carrying a reply of a tracked flow gets the VIP back
//! as its source, loses its outer headers and goes straight out of the legacy interface. Anything
//! else (untracked VXLAN, traffic for the gateway itself) goes to the kernel, whose VXLAN device
//! and routes are the slow path.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use meshgw_common::encap::vxlan_vni;
use meshgw_common::maps::{
    CtKey, NodeKey, CFG_F_EGRESS, CFG_F_ENABLED, CFG_F_POLICY, CT_DIR_REVERSE, DEV_LEGACY,
    FAMILY_V4,
};
use meshgw_common::parse::{load, parse_into, rewrite, Kind, Side, IPPROTO_TCP, IPPROTO_UDP};
use meshgw_common::stats::Counter;

use crate::ct::{self, CT_F_VLAN};
use crate::ctx::{parse_frame, rewrite_frame, XdpPacket};
use crate::decap::{decapsulate, L2};
use crate::egress;
use crate::maps::{with_scratch, Scratch, CONFIG, CT, DEVMAP, NODES};
use crate::nexthop;
use crate::stats::{count, drop, pass};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    count(Counter::MeshRx);
    with_scratch(ctx, Counter::MeshPass, handle)
}

// Inlined into the entry point, as the legacy program's is (see `legacy::handle`).
#[inline(always)]
fn handle(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    let cfg = match CONFIG.get(0) {
        Some(c) if c.flags & CFG_F_ENABLED != 0 => c,
        _ => return pass(Counter::MeshPass),
    };
    match parse_into(&XdpPacket { ctx }, 0, &mut s.flow) {
        Kind::Flow => {}
        Kind::Other => return pass(Counter::MeshPass),
        Kind::Malformed => return pass(Counter::Malformed),
    }
    let outer = &s.flow;
    if outer.family != FAMILY_V4
        || outer.proto != IPPROTO_UDP
        || outer.fragment
        || outer.dport != cfg.vxlan_port
    {
        return pass(Counter::MeshPass);
    }
    let node = NodeKey {
        ip: [outer.src[12], outer.src[13], outer.src[14], outer.src[15]],
    };
    if NODES.get_ptr(&node).is_none() {
        return pass(Counter::MeshUnknownNode);
    }
    count(Counter::MeshVxlan);
    let vxlan_off = outer.l4_off + 8;
    let Some(vx) = load::<[u8; 8], _>(&XdpPacket { ctx }, vxlan_off) else {
        return pass(Counter::Malformed);
    };
    if vxlan_vni(&vx).is_none() {
        return pass(Counter::MeshPass);
    }
    match parse_frame(ctx, vxlan_off + 8, &mut s.inner) {
        Kind::Flow => {}
        Kind::Malformed => return pass(Counter::Malformed),
        Kind::Other => return pass(Counter::MeshPass),
    }
    let inner = &s.inner;
    if inner.fragment || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP) {
        return pass(Counter::MeshPass);
    }
    let key = CtKey {
        dir: CT_DIR_REVERSE,
        ..ct::forward_key(inner)
    };
    let Some(e) = CT.get_ptr_mut(&key) else {
        // Not a reply: a new or established flow from an endpoint to the legacy network.
        if cfg.flags & (CFG_F_EGRESS | CFG_F_POLICY) == 0 {
            return pass(Counter::MeshPass);
        }
        let direct = match egress::from_endpoint(ctx, s) {
            egress::Out::Verdict(v) => return v,
            egress::Out::Direct => true,
            egress::Out::Kernel => false,
        };
        if !rewrite_frame(ctx, &s.inner, Side::Source, &s.nat_addr, s.nat_port) {
            return pass(Counter::Malformed);
        }
        let l2 = L2 {
            dmac: s.fib.dmac,
            smac: s.fib.smac,
            vlan: None,
            v4: true,
        };
        if decapsulate(ctx, s.inner.l3_off, &l2).is_none() {
            return drop(Counter::DropHeadroom);
        }
        count(Counter::EgressForwarded);
        if !direct {
            return xdp_action::XDP_PASS;
        }
        return DEVMAP
            .redirect(DEV_LEGACY, 0)
            .unwrap_or(xdp_action::XDP_DROP);
    };
    // SAFETY: live map value; copied out field by field below.
    let (nat_addr, nat_port, flags, vlan_tci, peer_mac, local_mac) = unsafe {
        (
            (*e).nat_addr,
            (*e).nat_port,
            (*e).flags,
            (*e).vlan_tci,
            (*e).peer_mac,
            (*e).local_mac,
        )
    };
    let t = ct::now(&mut s.clock);
    ct::touch(e, inner, t);

    let tagged = flags & CT_F_VLAN != 0;
    let v4 = inner.family == FAMILY_V4;
    // Tagged clients always get the MAC they came from: no lookup for them.
    let l3_len = inner.l3_len as u16;
    let hop = if tagged {
        None
    } else {
        nexthop::client(ctx, s, cfg, &nat_addr, l3_len, t)
    };
    let (dmac, smac) = if let Some(macs) = hop {
        macs
    } else if peer_mac != [0; 6] {
        // Tagged clients, and clients the FIB cannot resolve (yet): answer the MAC they came from.
        (peer_mac, local_mac)
    } else {
        count(Counter::DropReplyFib);
        return xdp_action::XDP_DROP;
    };
    let inner = &s.inner;
    // IPv4 inlined, IPv6 in the subprogram (as on the legacy side).
    let rewritten = if v4 {
        rewrite(&XdpPacket { ctx }, inner, Side::Source, &nat_addr, nat_port).is_some()
    } else {
        rewrite_frame(ctx, inner, Side::Source, &nat_addr, nat_port)
    };
    if !rewritten {
        return pass(Counter::Malformed);
    }
    let l2 = L2 {
        dmac,
        smac,
        vlan: if tagged { Some(vlan_tci) } else { None },
        v4,
    };
    if decapsulate(ctx, inner.l3_off, &l2).is_none() {
        count(Counter::DropHeadroom);
        return xdp_action::XDP_DROP;
    }
    count(Counter::ReplyForwarded);
    DEVMAP
        .redirect(DEV_LEGACY, 0)
        .unwrap_or(xdp_action::XDP_DROP)
}
