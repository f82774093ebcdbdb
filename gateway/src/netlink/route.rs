//! Routes of protocol `RTPROT_MESHGW` in the main table, with lightweight-tunnel encapsulation,
//! and route look-ups.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteIpTunnel, RouteIpTunnelFlags,
    RouteLwEnCapType, RouteLwTunnelEncap, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{debug, info};

use super::{
    is_absent, Changes, DesiredRoute, IpEncap, Netlink, NetlinkError, Progress, RTPROT_MESHGW,
};

/// The main routing table.
const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One of our routes as read back from the kernel.
struct Existing {
    /// The route in the form we would have written it; `None` when it has something we never
    /// write (several next hops, encap options), so that it can only be replaced.
    shape: Option<DesiredRoute>,
    /// The destination, for matching a replacement.
    dst: IpNet,
    /// `RTA_PRIORITY`, part of a route's identity.
    metric: Option<u32>,
    /// The kernel's message, used to delete it precisely.
    msg: RouteMessage,
}

impl Netlink {
    /// Makes the routes of protocol [`RTPROT_MESHGW`] in the main table exactly `desired`.
    /// Routes of other protocols are never touched, even when they have the same destination:
    /// a desired route whose prefix another protocol already holds fails with `EEXIST`.
    /// A route that fails does not stop the others; the first error is returned at the end.
    ///
    /// A route read back is compared on destination, device, gateway, on-link flag and encap,
    /// so an unchanged route is left in place. A changed route is rewritten in place
    /// (`NLM_F_REPLACE` on our own route) rather than deleted and re-added, which would leave
    /// its prefix unrouted for a moment.
    pub async fn reconcile_routes(
        &self,
        desired: &[DesiredRoute],
    ) -> Result<Changes, NetlinkError> {
        let mut want: BTreeSet<DesiredRoute> = BTreeSet::new();
        for r in desired {
            validate(r)?;
            want.insert(normalized(r));
        }
        let mut existing = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            existing.extend(self.our_routes(family).await?);
        }
        let have: BTreeSet<&DesiredRoute> =
            existing.iter().filter_map(|e| e.shape.as_ref()).collect();
        let missing: Vec<&DesiredRoute> = want.iter().filter(|r| !have.contains(r)).collect();
        let mut progress = Progress::default();
        // Stale routes go, except those that a missing route of the same destination replaces.
        let mut replaceable: BTreeSet<IpNet> = BTreeSet::new();
        for e in &existing {
            if e.shape.as_ref().is_some_and(|s| want.contains(s)) {
                continue;
            }
            // NLM_F_REPLACE rewrites the route with the same destination and metric, whatever
            // its protocol; it is only used where that route is known to be ours.
            if e.metric.is_none_or(|m| m == default_metric(&e.dst))
                && missing.iter().any(|r| r.dst == e.dst)
                && replaceable.insert(e.dst)
            {
                continue;
            }
            let op = format!("delete route {} (proto {RTPROT_MESHGW})", e.dst);
            match self
                .change(RouteNetlinkMessage::DelRoute(deletion(&e.msg)), 0, &op)
                .await
            {
                Ok(()) => {
                    info!(dst = %e.dst, "removed route");
                    progress.changes.removed += 1;
                }
                Err(err) if is_absent(&err) => debug!(dst = %e.dst, "route already gone"),
                Err(err) => progress.fail(err),
            }
        }
        for r in missing {
            let replace = replaceable.contains(&r.dst);
            let flags = if replace {
                NLM_F_CREATE | NLM_F_REPLACE
            } else {
                NLM_F_CREATE | NLM_F_EXCL
            };
            let op = format!(
                "{} route {}",
                if replace { "replace" } else { "add" },
                describe(r)
            );
            if let Err(err) = self
                .change(RouteNetlinkMessage::NewRoute(route_message(r)), flags, &op)
                .await
            {
                progress.fail(err);
                continue;
            }
            info!(
                dst = %r.dst,
                oif = r.oif,
                via = ?r.via,
                encap_id = r.encap.map(|e| e.id),
                encap_dst = ?r.encap.map(|e| e.dst),
                replaced = replace,
                "installed route"
            );
            progress.changes.added += 1;
        }
        progress.finish()
    }

    /// RTM_GETROUTE for `dst`: the output interface and the gateway (`None` when `dst` is
    /// on-link), as the kernel would forward a packet to it.
    pub async fn route_get(&self, dst: IpAddr) -> Result<(u32, Option<IpAddr>), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst);
        msg.header.destination_prefix_length = full_prefix(&dst);
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let op = format!("route get {dst}");
        let answer = match self
            .get_one(RouteNetlinkMessage::GetRoute(msg), &op)
            .await?
        {
            RouteNetlinkMessage::NewRoute(m) => m,
            other => {
                return Err(NetlinkError::Unexpected {
                    op,
                    detail: format!("{other:?}"),
                })
            }
        };
        let oif = answer.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let oif = oif.ok_or_else(|| NetlinkError::Unexpected {
            op,
            detail: format!("no output interface ({:?} route)", answer.header.kind),
        })?;
        Ok((oif, gateway_of(&answer.attributes)))
    }

    /// The route messages of protocol `RTPROT_MESHGW` in `table`, of one address family
    /// (filtered here as well: a kernel without strict checking ignores the dump filter).
    pub(super) async fn dump_ours(
        &self,
        family: AddressFamily,
        table: u8,
    ) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        req.header.protocol = RouteProtocol::Other(RTPROT_MESHGW);
        req.header.table = table;
        let answers = self
            .dump(
                RouteNetlinkMessage::GetRoute(req),
                &format!("list {family:?} routes of table {table}"),
            )
            .await?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewRoute(msg)
                    if msg.header.protocol == RouteProtocol::Other(RTPROT_MESHGW)
                        && table_of(&msg) == u32::from(table) =>
                {
                    Some(msg)
                }
                _ => None,
            })
            .collect())
    }

    /// Our routes (protocol `RTPROT_MESHGW`, main table) of one address family.
    async fn our_routes(&self, family: AddressFamily) -> Result<Vec<Existing>, NetlinkError> {
        let mut out = Vec::new();
        for msg in self.dump_ours(family, RouteHeader::RT_TABLE_MAIN).await? {
            let Some(dst) = destination_of(&msg) else {
                continue;
            };
            let metric = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            out.push(Existing {
                shape: shape_of(&msg, dst),
                dst,
                metric,
                msg,
            });
        }
        Ok(out)
    }
}

/// Rejects routes the kernel cannot hold, with a message that names the route.
fn validate(r: &DesiredRoute) -> Result<(), NetlinkError> {
    let invalid = |reason| NetlinkError::Invalid {
        what: format!("route {}", r.dst),
        reason,
    };
    if r.oif == 0 {
        return Err(invalid("no output interface"));
    }
    if matches!((r.dst, r.via), (IpNet::V6(_), Some(IpAddr::V4(_)))) {
        return Err(invalid(
            "an IPv6 route cannot have an IPv4 gateway (the kernel has no RTA_VIA for IPv6)",
        ));
    }
    if r.onlink && r.via.is_none() {
        return Err(invalid("onlink needs a gateway"));
    }
    Ok(())
}

/// `r` with the host bits of its destination cleared, as the kernel stores it.
fn normalized(r: &DesiredRoute) -> DesiredRoute {
    DesiredRoute {
        dst: r.dst.trunc(),
        ..r.clone()
    }
}

fn describe(r: &DesiredRoute) -> String {
    let mut s = format!("{} dev ifindex {}", r.dst, r.oif);
    if let Some(via) = r.via {
        s.push_str(&format!(" via {via}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if let Some(e) = r.encap {
        s.push_str(&format!(" encap ip id {} dst {}", e.id, e.dst));
    }
    s
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn full_prefix(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The metric the kernel gives a route added without one.
fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// The RTM_NEWROUTE message for `r`.
fn route_message(r: &DesiredRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = match r.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    h.destination_prefix_length = r.dst.prefix_len();
    h.table = RouteHeader::RT_TABLE_MAIN;
    h.protocol = RouteProtocol::Other(RTPROT_MESHGW);
    // What iproute2 does: a route without a gateway reaches its destination directly.
    h.scope = if r.via.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    h.kind = RouteType::Unicast;
    if r.onlink {
        h.flags |= RouteFlags::Onlink;
    }
    msg.attributes.push(RouteAttribute::Table(RT_TABLE_MAIN));
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.addr(),
        )));
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    match (r.dst, r.via) {
        (IpNet::V4(_), Some(IpAddr::V6(gw))) => {
            msg.attributes.push(RouteAttribute::Via(RouteVia::from(gw)))
        }
        (_, Some(gw)) => msg
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw))),
        (_, None) => {}
    }
    if let Some(e) = r.encap {
        msg.attributes
            .push(RouteAttribute::EncapType(RouteLwEnCapType::Ip));
        msg.attributes.push(RouteAttribute::Encap(vec![
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(e.id)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(e.dst)),
        ]));
    }
    msg
}

/// The RTM_DELROUTE message for an existing route of ours: its key (table, destination,
/// metric), its next hop, and our protocol, which the kernel checks, so that a route of another
/// protocol can never be the one deleted.
fn deletion(existing: &RouteMessage) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = existing.header.clone();
    msg.header.protocol = RouteProtocol::Other(RTPROT_MESHGW);
    msg.attributes = existing
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Table(_)
                    | RouteAttribute::Destination(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::Via(_)
            )
        })
        .cloned()
        .collect();
    msg
}

/// The table a route is in (`RTA_TABLE`, else the header's 8-bit field).
pub(super) fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn destination_of(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    match (addr, msg.header.address_family) {
        (Some(a), _) => IpNet::new(a, len).ok(),
        // A default route carries no RTA_DST.
        (None, AddressFamily::Inet) => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).ok(),
        (None, AddressFamily::Inet6) => {
            IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).ok()
        }
        _ => None,
    }
}

fn gateway_of(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// Reads a kernel route back into the form we write. The kernel reports every field of an IP
/// tunnel encap (`src 0.0.0.0 ttl 0 tos 0` and the flags) even when unset, so defaults are
/// accepted; anything set beyond id and dst is not ours to keep.
fn shape_of(msg: &RouteMessage, dst: IpNet) -> Option<DesiredRoute> {
    let mut oif = None;
    let mut encap_type = None;
    let mut encap_attrs: Option<&Vec<RouteLwTunnelEncap>> = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::EncapType(t) => encap_type = Some(*t),
            RouteAttribute::Encap(e) => encap_attrs = Some(e),
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let encap = match (encap_type, encap_attrs) {
        (None | Some(RouteLwEnCapType::None), None) => None,
        (Some(RouteLwEnCapType::Ip), Some(attrs)) => Some(ip_encap_of(attrs)?),
        _ => return None,
    };
    Some(DesiredRoute {
        dst,
        oif: oif?,
        via: gateway_of(&msg.attributes),
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        encap,
    })
}

fn ip_encap_of(attrs: &[RouteLwTunnelEncap]) -> Option<IpEncap> {
    let mut id = None;
    let mut dst = None;
    for a in attrs {
        match a {
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(v)) => id = Some(*v),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(v)) => dst = Some(*v),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Source(s)) if s.is_unspecified() => {}
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(0) | RouteIpTunnel::Tos(0)) => {}
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Flags(f))
                if f.is_empty() || *f == RouteIpTunnelFlags::Key => {}
            _ => return None,
        }
    }
    Some(IpEncap { id: id?, dst: dst? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};

    fn sample() -> DesiredRoute {
        DesiredRoute {
            dst: "10.244.1.0/24".parse().unwrap(),
            oif: 9,
            via: Some("10.244.1.130".parse().unwrap()),
            onlink: true,
            encap: Some(IpEncap {
                id: 2,
                dst: Ipv4Addr::new(172, 18, 0, 11),
            }),
        }
    }

    #[test]
    fn written_route_reads_back_identical() {
        let r = sample();
        let msg = route_message(&r);
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let parsed = RouteMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(parsed.header.protocol, RouteProtocol::Other(RTPROT_MESHGW));
        assert_eq!(shape_of(&parsed, r.dst), Some(r));
    }

    #[test]
    fn kernel_encap_defaults_are_accepted() {
        let attrs = vec![
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(2)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(Ipv4Addr::new(172, 18, 0, 11))),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Source(Ipv4Addr::UNSPECIFIED)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(0)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Tos(0)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Flags(RouteIpTunnelFlags::empty())),
        ];
        assert_eq!(
            ip_encap_of(&attrs),
            Some(IpEncap {
                id: 2,
                dst: Ipv4Addr::new(172, 18, 0, 11)
            })
        );
        let mut with_ttl = attrs.clone();
        with_ttl.push(RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(64)));
        assert_eq!(ip_encap_of(&with_ttl), None);
    }

    #[test]
    fn ipv6_route_with_ipv4_gateway_is_rejected() {
        let r = DesiredRoute {
            dst: "fd00:244:1::/64".parse().unwrap(),
            via: Some("10.244.1.1".parse().unwrap()),
            ..sample()
        };
        assert!(matches!(validate(&r), Err(NetlinkError::Invalid { .. })));
        assert!(validate(&sample()).is_ok());
    }

    #[test]
    fn ipv4_route_with_ipv6_gateway_uses_rta_via() {
        let r = DesiredRoute {
            via: Some("fe80::1".parse().unwrap()),
            ..sample()
        };
        let msg = route_message(&r);
        assert!(msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Via(RouteVia::Inet6(_)))));
        assert_eq!(gateway_of(&msg.attributes), r.via);
    }

    #[test]
    fn host_bits_are_cleared() {
        let r = DesiredRoute {
            dst: "10.244.1.7/24".parse().unwrap(),
            ..sample()
        };
        assert_eq!(
            normalized(&r).dst,
            "10.244.1.0/24".parse::<IpNet>().unwrap()
        );
    }
}
