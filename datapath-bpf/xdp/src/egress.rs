//! Egress from the mesh to the legacy network, as Cilium's egress gateway does it: a flow from an
//! endpoint (inside VXLAN from a known node) that an egress rule covers leaves with the rule's
//! egress address and a port of the gateway's choosing as its source; the reply is translated
//! back and tunnelled to the endpoint's node. Policy in this direction is checked on the first
//! packet, for translated and routed flows alike.
//!
//! The translation lives in `MGW_SNAT`, apart from the load balancer's `MGW_CT`: an egress entry
//! (endpoint -> host) holds the egress address and port, a reply entry (host -> egress address)
//! holds the endpoint and its node. The reply entry is inserted with `BPF_NOEXIST` first, so two
//! flows can never claim the same port towards the same host.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use meshgw_common::maps::{
    BackendValue, CtKey, EgressKey, SnatEntry, CFG_F_EGRESS, CFG_F_POLICY, CT_DIR_EGRESS,
    CT_DIR_EGRESS_REPLY, EGRESS_F_EXCLUDED, FAMILY_V4, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SNAT_PORT_TRIES,
};
use meshgw_common::parse::{load, Flow};
use meshgw_common::stats::Counter;

use crate::ct;
use crate::ctx::XdpPacket;
use crate::events::{self, EventMeta};
use crate::fib::{self, Fib};
use crate::maps::{Scratch, CONFIG, EGRESS, SNAT};
use crate::policy;
use crate::stats::{count, drop, pass};

const PORT_RANGE: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;

#[inline(always)]
fn key(f: &Flow, dir: u8) -> CtKey {
    CtKey {
        dir,
        ..ct::forward_key(f)
    }
}

#[inline(always)]
fn touch(e: *mut SnatEntry, f: &Flow, t: u64) {
    ct::touch_entry!(e, f, t);
}

/// Where [`from_endpoint`] sends a packet.
pub enum Out {
    /// Decided: return this verdict.
    Verdict(u32),
    /// Translate to `s.nat_addr`/`s.nat_port`, decapsulate with `s.fib`'s MACs and redirect to
    /// the legacy interface.
    Direct,
    /// The same, but hand the packet to the kernel: the host has no neighbour entry yet (or is
    /// not on the legacy link), and the kernel resolves it on the way (the mesh interface accepts
    /// a local source address for this: accept_local). `s.fib`'s MACs are the outer frame's, so
    /// the frame is addressed to the mesh interface. Later packets go direct.
    Kernel,
}

/// What [`classify`] found.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// An established flow: `s.nat_addr`/`s.nat_port` hold its translation.
    Established,
    /// A new flow a rule covers and policy admits: `s.snat` is its reply entry, `s.nat_addr`
    /// the egress address; a port is still to be found.
    New,
    /// No rule (or an excluded destination), and policy allows it: the kernel routes it.
    Route,
    /// Denied by policy.
    Denied,
    /// The inner frame is too short for its MACs.
    Malformed,
}

/// The mesh program's decision for an endpoint's packet that is not the reply of a
/// load-balanced flow (`s.flow` is the outer packet, `s.inner` the endpoint's). The caller does
/// the rewriting. Inlined, and made of subprograms called one after the other: nested, their
/// frames would take the chain past the BPF stack limit.
#[inline(always)]
pub fn from_endpoint(ctx: &XdpContext, s: &mut Scratch) -> Out {
    match classify(ctx, s) {
        Class::Established => {}
        Class::New => {
            if !allocate(s) {
                return Out::Verdict(drop(Counter::DropEgressPorts));
            }
        }
        Class::Route => return Out::Verdict(pass(Counter::MeshPass)),
        Class::Denied => return Out::Verdict(drop(Counter::DropPolicyEgress)),
        Class::Malformed => return Out::Verdict(pass(Counter::Malformed)),
    }
    route(ctx, s)
}

/// Finds the flow's translation, or decides about a new flow: policy first, then the rules.
#[inline(never)]
fn classify(ctx: &XdpContext, s: &mut Scratch) -> Class {
    let Some(cfg) = CONFIG.get(0) else {
        return Class::Route;
    };
    let flags = cfg.flags;
    let t = ct::now(&mut s.clock);
    s.ct_key = key(&s.inner, CT_DIR_EGRESS);
    if let Some(e) = SNAT.get_ptr_mut(&s.ct_key) {
        touch(e, &s.inner, t);
        // SAFETY: live map value, copied out.
        unsafe {
            s.nat_addr = (*e).addr;
            s.nat_port = (*e).port;
        }
        return Class::Established;
    }
    let inner = &s.inner;
    let (src_id, dst_id) = if flags & CFG_F_POLICY != 0 {
        let src = policy::source_identity(&inner.src);
        let dst = policy::source_identity(&inner.dst);
        if !policy::admits_egress(src, dst, inner.dport, inner.proto) {
            events::dropped(
                inner,
                &EventMeta {
                    kind: events::DROP,
                    reason: Counter::DropPolicyEgress as u8,
                    service_id: 0,
                    backend_id: 0,
                    src_identity: src,
                    dst_identity: dst,
                },
            );
            return Class::Denied;
        }
        (src, dst)
    } else {
        (0, 0)
    };
    if flags & CFG_F_EGRESS == 0 || inner.family != FAMILY_V4 {
        return Class::Route;
    }
    s.egress_key.prefix_len = 256;
    s.egress_key.data = EgressKey {
        src: inner.src,
        dst: inner.dst,
    };
    // Read through the reference at once: an `Option` of the value held across later calls
    // makes LLVM spill its undefined payload, which the verifier refuses.
    let Some(r) = EGRESS.get(&s.egress_key) else {
        return Class::Route;
    };
    if r.flags & EGRESS_F_EXCLUDED != 0 {
        return Class::Route;
    }
    s.nat_addr = r.egress_ip;
    let rule = r.rule;
    // The reply goes back to the node the packet came from, to the MAC of its VXLAN device.
    let Some(inner_macs) = load::<[u8; 12], _>(&XdpPacket { ctx }, s.flow.l4_off + 16) else {
        return Class::Malformed;
    };
    let inner = &s.inner;
    let e = &mut s.snat;
    e.created_ns = t;
    e.last_seen_ns = t;
    e.packets = 0;
    e.bytes = 0;
    e.addr = inner.src;
    e.port = inner.sport;
    e.node_ip = [
        s.flow.src[12],
        s.flow.src[13],
        s.flow.src[14],
        s.flow.src[15],
    ];
    e.node_mac.copy_from_slice(&inner_macs[6..12]);
    e.flags = 0;
    e.src_identity = src_id;
    e.dst_identity = dst_id;
    e.rule = rule;
    events::new_flow(
        inner,
        &EventMeta {
            kind: events::NEW_FLOW,
            reason: 0,
            service_id: 0,
            backend_id: 0,
            src_identity: src_id,
            dst_identity: dst_id,
        },
    );
    Class::New
}

/// Finds a free port on the egress address for the new flow in `s`, and records both
/// directions. `false` when every port tried is taken towards this host and port.
#[inline(never)]
fn allocate(s: &mut Scratch) -> bool {
    let inner = &s.inner;
    let hash = inner.hash();
    let reply = &mut s.ct_key;
    reply.src = inner.dst;
    reply.dst = s.nat_addr;
    reply.sport = inner.dport;
    reply.proto = inner.proto;
    reply.family = inner.family;
    reply.dir = CT_DIR_EGRESS_REPLY;
    reply._pad = 0;
    let mut port = 0u16;
    let mut i = 0u32;
    while i < SNAT_PORT_TRIES {
        // An odd stride visits distinct ports before wrapping around the range.
        let p = SNAT_PORT_MIN + (hash.wrapping_add(i.wrapping_mul(7919)) % PORT_RANGE) as u16;
        s.ct_key.dport = p.to_be();
        if SNAT.insert(&s.ct_key, &s.snat, BPF_NOEXIST as u64).is_ok() {
            port = p.to_be();
            break;
        }
        i += 1;
    }
    if port == 0 {
        return false;
    }
    s.nat_port = port;
    let inner = &s.inner;
    let e = &mut s.snat;
    e.addr = s.nat_addr;
    e.port = port;
    e.node_ip = [0; 4];
    e.node_mac = [0; 6];
    e.packets = 1;
    e.bytes = inner.l3_len as u64;
    s.ct_key = key(inner, CT_DIR_EGRESS);
    let _ = SNAT.insert(&s.ct_key, &s.snat, 0);
    count(Counter::EgressCreated);
    true
}

/// The way out for a translated packet: straight to the host's MAC when the FIB knows it on the
/// legacy link, else through the kernel.
#[inline(never)]
fn route(ctx: &XdpContext, s: &mut Scratch) -> Out {
    let Some(cfg) = CONFIG.get(0) else {
        return Out::Verdict(pass(Counter::MeshPass));
    };
    let inner = &s.inner;
    fib::prepare(
        &mut s.fib,
        true,
        &s.nat_addr,
        &inner.dst,
        cfg.legacy_ifindex,
        inner.l3_len as u16,
    );
    match fib::lookup(ctx, &mut s.fib) {
        Fib::Found if s.fib.ifindex == cfg.legacy_ifindex => Out::Direct,
        Fib::TooBig => Out::Verdict(drop(Counter::DropTooBig)),
        _ => {
            let Some(outer) = load::<[u8; 12], _>(&XdpPacket { ctx }, 0) else {
                return Out::Verdict(pass(Counter::Malformed));
            };
            s.fib.dmac.copy_from_slice(&outer[0..6]);
            s.fib.smac.copy_from_slice(&outer[6..12]);
            Out::Kernel
        }
    }
}

/// For a packet that is not for a VIP: whether it is the reply of an egress flow. If so,
/// `s.backend` now holds the endpoint and its node, for the legacy program to send it there.
#[inline(never)]
pub fn reply_target(s: &mut Scratch) -> bool {
    let f = &s.flow;
    if f.fragment || f.family != FAMILY_V4 {
        return false;
    }
    let Some(e) = SNAT.get_ptr_mut(&key(f, CT_DIR_EGRESS_REPLY)) else {
        return false;
    };
    let t = ct::now(&mut s.clock);
    s.now = t;
    touch(e, f, t);
    // SAFETY: live map value, copied out.
    s.backend = unsafe {
        BackendValue {
            addr: (*e).addr,
            port: (*e).port,
            family: FAMILY_V4,
            node_ip: (*e).node_ip,
            node_mac: (*e).node_mac,
            ..BackendValue::default()
        }
    };
    true
}
