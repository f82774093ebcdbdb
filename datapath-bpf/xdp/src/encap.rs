//! VXLAN encapsulation in place: grow the head and write the 64-byte header block (outer
//! Ethernet, IPv4, UDP, VXLAN, inner Ethernet) right before the IP header, dropping any VLAN tag.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use meshgw_common::encap::{write_vxlan_block, BLOCK_LEN};
use meshgw_common::parse::store;

use crate::ctx::XdpPacket;
use crate::maps::Scratch;

/// Encapsulates the (already DNATed) packet `s.flow` with `s.enc`. Returns `None` if the head
/// could not be grown or written; the packet is then unusable and must be dropped.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, s: &mut Scratch) -> Option<()> {
    write_vxlan_block(&s.enc, &mut s.block);
    let l3_off = s.flow.l3_off;
    if l3_off > BLOCK_LEN {
        return None;
    }
    let grow = (BLOCK_LEN - l3_off) as i32;
    // SAFETY: the helper only moves `data`; the packet is re-read through a fresh XdpPacket.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -grow) } != 0 {
        return None;
    }
    store(&XdpPacket { ctx }, 0, s.block)
}
