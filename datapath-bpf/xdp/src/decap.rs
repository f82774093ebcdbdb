//! VXLAN decapsulation in place: drop the outer headers and write a fresh Ethernet header (with
//! the client's 802.1Q tag where it had one) right before the inner IP header.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use meshgw_common::parse::{store, ETH_LEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, VLAN_LEN};

use crate::ctx::XdpPacket;

/// The Ethernet header the decapsulated packet gets.
pub struct L2 {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// `Some(tci)` writes an 802.1Q tag.
    pub vlan: Option<u16>,
    pub v4: bool,
}

/// Removes everything before `l3_off` (the inner IP header) and writes `l2` in front of it.
/// `None` if the packet could not be shrunk or written; the caller drops it.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, l3_off: usize, l2: &L2) -> Option<()> {
    let l2_len = if l2.vlan.is_some() {
        ETH_LEN + VLAN_LEN
    } else {
        ETH_LEN
    };
    if l3_off < l2_len || l3_off > 512 {
        return None;
    }
    let shrink = (l3_off - l2_len) as i32;
    // SAFETY: moves `data` forward within the packet; re-read through a fresh XdpPacket.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, shrink) } != 0 {
        return None;
    }
    let pkt = XdpPacket { ctx };
    let ethertype = if l2.v4 { ETH_P_IP } else { ETH_P_IPV6 };
    let mut h = [0u8; 18];
    h[0..6].copy_from_slice(&l2.dmac);
    h[6..12].copy_from_slice(&l2.smac);
    match l2.vlan {
        Some(tci) => {
            h[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
            h[14..16].copy_from_slice(&tci.to_be_bytes());
            h[16..18].copy_from_slice(&ethertype.to_be_bytes());
            store(&pkt, 0, h)
        }
        None => {
            h[12..14].copy_from_slice(&ethertype.to_be_bytes());
            let mut u = [0u8; 14];
            u.copy_from_slice(&h[0..14]);
            store(&pkt, 0, u)
        }
    }
}
