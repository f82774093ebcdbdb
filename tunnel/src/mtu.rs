//! Tunnel MTUs: the inner MTU is the underlay MTU minus the encapsulation overhead, so that an
//! encapsulated full-size packet still fits the underlay and is never fragmented or lost.

/// How packets are wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// VXLAN: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
    Vxlan,
    /// WireGuard over an IPv4 underlay: IPv4 20 + UDP 8 + WireGuard header 16 + tag 16.
    WireguardV4,
    /// WireGuard over an IPv6 underlay: IPv6 40 + UDP 8 + 16 + 16.
    WireguardV6,
}

impl Encap {
    /// Bytes the encapsulation adds to each inner packet.
    pub const fn overhead(self) -> u32 {
        match self {
            Encap::Vxlan => 50,
            Encap::WireguardV4 => 60,
            Encap::WireguardV6 => 80,
        }
    }
}

/// The inner MTU for an underlay MTU; `None` if it would be below IPv4's minimum of 576 (an
/// underlay that small cannot carry a usable tunnel).
pub fn tunnel_mtu(underlay_mtu: u32, encap: Encap) -> Option<u32> {
    underlay_mtu
        .checked_sub(encap.overhead())
        .filter(|m| *m >= 576)
}

/// The TCP MSS that fits an MTU: minus the IP and TCP headers (20 + 20 for IPv4, 40 + 20 for
/// IPv6).
pub fn mss_for(mtu: u32, ipv6: bool) -> u32 {
    mtu.saturating_sub(if ipv6 { 60 } else { 40 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_match_the_wire_formats() {
        assert_eq!(tunnel_mtu(1500, Encap::Vxlan), Some(1450));
        assert_eq!(tunnel_mtu(1500, Encap::WireguardV4), Some(1440));
        assert_eq!(tunnel_mtu(1500, Encap::WireguardV6), Some(1420));
        assert_eq!(tunnel_mtu(9000, Encap::WireguardV4), Some(8940));
        assert_eq!(tunnel_mtu(600, Encap::WireguardV6), None);
        assert_eq!(mss_for(1440, false), 1400);
        assert_eq!(mss_for(1420, true), 1360);
    }

    #[test]
    fn a_full_inner_packet_encapsulated_fits_the_underlay() {
        // WireGuard data message: 16-byte header, the inner packet (padded to 16 bytes but
        // never beyond the MTU), 16-byte tag.
        for underlay in [1280u32, 1400, 1500, 9000] {
            for (encap, outer_ip) in [(Encap::WireguardV4, 20), (Encap::WireguardV6, 40)] {
                let inner = tunnel_mtu(underlay, encap).unwrap_or(0);
                let padded = (inner.div_ceil(16) * 16).min(inner);
                assert!(outer_ip + 8 + 16 + padded + 16 <= underlay, "{underlay}");
            }
        }
    }
}
