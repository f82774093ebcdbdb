//! VXLAN encapsulation in place: grow the head and write the 64-byte header block (outer
//! Ethernet, IPv4, UDP, VXLAN, inner Ethernet) right before the IP header, dropping any VLAN tag.
//! The block comes from the node's cached template ([`crate::nexthop`]): eight-byte copies and a
//! few patched fields, with the outer IPv4 checksum updated for the length alone (RFC 1624).

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use meshgw_common::csum;
use meshgw_common::encap::BLOCK_LEN;
use meshgw_common::maps::NextHop;
use meshgw_common::parse::{Packet, ETH_LEN};

use crate::ctx::{put, XdpPacket};

/// The template's outer IPv4 total length and UDP length: it is built for an empty inner packet
/// (headers only: IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
const EMPTY_IP_LEN: u16 = (BLOCK_LEN - ETH_LEN) as u16;
const EMPTY_UDP_LEN: u16 = EMPTY_IP_LEN - 20;

/// What a packet adds to the node's template.
pub struct Inner {
    /// Offset of the (already DNATed) packet's IP header in the frame.
    pub l3_off: usize,
    /// Its length.
    pub l3_len: u16,
    /// UDP source port of the outer header, host order.
    pub src_port: u16,
    /// Inner destination MAC (the backend's node).
    pub dst_mac: [u8; 6],
    /// Inner source MAC (the gateway's VTEP).
    pub src_mac: [u8; 6],
    /// Inner EtherType, host order.
    pub ethertype: u16,
}

/// Encapsulates the packet described by `inner` with the template of `nh`. Returns `None` if the
/// head could not be grown or written; the packet is then unusable and must be dropped.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, nh: *const NextHop, inner: &Inner) -> Option<()> {
    let l3_off = inner.l3_off;
    if l3_off > BLOCK_LEN {
        return None;
    }
    let grow = (BLOCK_LEN - l3_off) as i32;
    // SAFETY: the helper only moves `data`; the packet is re-read through a fresh XdpPacket.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -grow) } != 0 {
        return None;
    }
    let p = XdpPacket { ctx }.ptr(0, BLOCK_LEN)?;
    // SAFETY: `nh` is a live map value (or the scratch copy), eight-byte aligned, whose block
    // holds 64 bytes; `p` has BLOCK_LEN writable bytes (checked just above).
    unsafe {
        let t = (*nh).block.as_ptr() as *const u64;
        let mut i = 0;
        while i < 7 {
            put(p, i * 8, t.add(i).read());
            i += 1;
        }
        let check = u16::from_be_bytes([(*nh).block[24], (*nh).block[25]]);
        let ip_len = EMPTY_IP_LEN + inner.l3_len;
        let check = csum::replace(check, &EMPTY_IP_LEN.to_be_bytes(), &ip_len.to_be_bytes());
        put(p, 16, ip_len.to_be());
        put(p, 24, check.to_be());
        put(p, 34, inner.src_port.to_be());
        put(p, 38, (EMPTY_UDP_LEN + inner.l3_len).to_be());
        let d = &inner.dst_mac;
        let s = &inner.src_mac;
        put(p, 50, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
        put(p, 54, u32::from_ne_bytes([d[4], d[5], s[0], s[1]]));
        put(p, 58, u32::from_ne_bytes([s[2], s[3], s[4], s[5]]));
        put(p, 62, inner.ethertype.to_be());
    }
    Some(())
}
