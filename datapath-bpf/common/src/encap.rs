//! The VXLAN header block the legacy program writes in front of a DNATed packet: outer Ethernet,
//! outer IPv4, UDP, VXLAN and the inner Ethernet header, 64 bytes in all, built as one pure
//! function so that its bytes are checked on the host.

/// Outer headers: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const OUTER_LEN: usize = 50;
/// Outer headers plus the inner Ethernet header.
pub const BLOCK_LEN: usize = OUTER_LEN + 14;
/// VXLAN flags byte: the VNI is valid (RFC 7348 "I" flag).
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// TTL of the outer IPv4 header (the kernel VXLAN driver's default is 64 too).
pub const OUTER_TTL: u8 = 64;

/// Everything the block depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapParams {
    /// Outer destination MAC (next hop towards the node, from the FIB).
    pub outer_dst_mac: [u8; 6],
    /// Outer source MAC (the mesh interface).
    pub outer_src_mac: [u8; 6],
    /// Outer IPv4 source (the gateway's mesh address).
    pub src_ip: [u8; 4],
    /// Outer IPv4 destination (the node).
    pub dst_ip: [u8; 4],
    /// UDP source port, host order.
    pub src_port: u16,
    /// UDP destination port, network order (as stored in the config map).
    pub dst_port_be: u16,
    /// VNI, host order (24 bits used).
    pub vni: u32,
    /// Inner destination MAC.
    pub inner_dst_mac: [u8; 6],
    /// Inner source MAC.
    pub inner_src_mac: [u8; 6],
    /// Inner EtherType, host order.
    pub inner_ethertype: u16,
    /// Length of the inner IP packet (what follows the inner Ethernet header).
    pub inner_l3_len: u16,
}

/// Builds the 64-byte block. The outer IPv4 header has DF clear, so a path with a smaller MTU
/// fragments rather than black-holes (MTU handling proper comes with the tunnel MTU work).
#[inline(always)]
pub fn vxlan_block(p: &EncapParams) -> [u8; BLOCK_LEN] {
    let mut b = [0u8; BLOCK_LEN];
    write_vxlan_block(p, &mut b);
    b
}

/// Writes the block into `b` (every byte), for callers that keep it off the stack.
#[inline(always)]
pub fn write_vxlan_block(p: &EncapParams, b: &mut [u8; BLOCK_LEN]) {
    *b = [0u8; BLOCK_LEN];
    let udp_len = (8 + 8 + 14 + p.inner_l3_len as usize) as u16;
    let ip_len = 20 + udp_len;
    let mut i = 0;
    while i < 6 {
        b[i] = p.outer_dst_mac[i];
        b[6 + i] = p.outer_src_mac[i];
        b[OUTER_LEN + i] = p.inner_dst_mac[i];
        b[OUTER_LEN + 6 + i] = p.inner_src_mac[i];
        i += 1;
    }
    b[12] = 0x08; // IPv4
                  // Outer IPv4 header at 14.
    b[14] = 0x45;
    b[16..18].copy_from_slice(&ip_len.to_be_bytes());
    b[22] = OUTER_TTL;
    b[23] = 17;
    b[26..30].copy_from_slice(&p.src_ip);
    b[30..34].copy_from_slice(&p.dst_ip);
    let mut ip = [0u8; 20];
    ip.copy_from_slice(&b[14..34]);
    let check = crate::csum::ipv4_header(&ip);
    b[24..26].copy_from_slice(&check.to_be_bytes());
    // UDP at 34; checksum zero (RFC 7348 allows it for IPv4 outer headers).
    b[34..36].copy_from_slice(&p.src_port.to_be_bytes());
    b[36..38].copy_from_slice(&p.dst_port_be.to_ne_bytes());
    b[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // VXLAN at 42.
    b[42] = VXLAN_FLAG_VNI;
    let vni = p.vni.to_be_bytes();
    b[46] = vni[1];
    b[47] = vni[2];
    b[48] = vni[3];
    // Inner EtherType at 62.
    b[62..64].copy_from_slice(&p.inner_ethertype.to_be_bytes());
}

/// Reads the VNI of a VXLAN header whose "I" flag is set.
#[inline(always)]
pub fn vxlan_vni(hdr: &[u8; 8]) -> Option<u32> {
    if hdr[0] & VXLAN_FLAG_VNI == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layout_matches_rfc7348() {
        let p = EncapParams {
            outer_dst_mac: [2, 0, 0, 0, 0, 0x11],
            outer_src_mac: [2, 0, 0, 0, 0, 0x01],
            src_ip: [172, 18, 0, 1],
            dst_ip: [172, 18, 0, 11],
            src_port: 40_000,
            dst_port_be: 8472u16.to_be(),
            vni: 2,
            inner_dst_mac: [2, 0xaa, 0, 0, 0, 1],
            inner_src_mac: [2, 0xbb, 0, 0, 0, 1],
            inner_ethertype: 0x0800,
            inner_l3_len: 60,
        };
        let b = vxlan_block(&p);
        assert_eq!(&b[0..6], &p.outer_dst_mac);
        assert_eq!(&b[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 20 + 8 + 8 + 14 + 60);
        let mut ip = [0u8; 20];
        ip.copy_from_slice(&b[14..34]);
        ip[10] = 0;
        ip[11] = 0;
        assert_eq!(
            u16::from_be_bytes([b[24], b[25]]),
            crate::csum::ipv4_header(&ip)
        );
        assert_eq!(u16::from_be_bytes([b[36], b[37]]), 8472);
        assert_eq!(u16::from_be_bytes([b[38], b[39]]), 8 + 8 + 14 + 60);
        assert_eq!(&b[40..42], &[0, 0], "outer UDP checksum is zero");
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[42..50]);
        assert_eq!(vxlan_vni(&v), Some(2));
        assert_eq!(&b[50..56], &p.inner_dst_mac);
        assert_eq!(&b[62..64], &[0x08, 0x00]);
    }

    #[test]
    fn vni_needs_the_i_flag() {
        assert_eq!(vxlan_vni(&[0, 0, 0, 0, 0, 0, 2, 0]), None);
        assert_eq!(
            vxlan_vni(&[8, 0, 0, 0, 0x12, 0x34, 0x56, 0]),
            Some(0x12_3456)
        );
    }
}
