//! meshgw's XDP datapath. Two programs share one set of maps:
//! - `meshgw_legacy` (legacy interface): VIP lookup, backend selection (connection tracking, then
//!   Maglev), DNAT, VXLAN encapsulation, redirect to the mesh interface.
//! - `meshgw_mesh` (mesh interface): VXLAN from known nodes carrying replies of tracked flows is
//!   reverse-NATed, decapsulated and redirected to the legacy interface; endpoints' own flows to
//!   the legacy network are source-NATed by egress rules and checked by policy.
//!
//! Everything else is `XDP_PASS`: the kernel stays the slow path and the final judge of validity.
//! Stages live in their own modules, as in Cilium's `bpf/`: parsing and rewriting (pure, in
//! `meshgw-common`), [`ct`] and [`lookup`], [`policy`], [`encap`] and [`decap`], [`egress`] (source NAT
//! towards the legacy network), [`fib`].
#![no_std]
#![no_main]

mod ct;
mod ctx;
mod decap;
mod egress;
mod encap;
mod events;
mod fib;
mod flowcache;
mod legacy;
mod lookup;
mod maps;
mod mesh;
mod nexthop;
mod policy;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Entry point on the legacy interface.
#[xdp]
pub fn meshgw_legacy(ctx: XdpContext) -> u32 {
    legacy::run(&ctx)
}

/// Entry point on the mesh interface.
#[xdp]
pub fn meshgw_mesh(ctx: XdpContext) -> u32 {
    mesh::run(&ctx)
}

/// A plain pass: attached to veth peers that must have NAPI to receive redirected frames.
#[xdp]
pub fn meshgw_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
