//! AnyIP: `local` routes of protocol `RTPROT_MESHGW` in the local table. One such route for the
//! IPv4 VIP pool makes the kernel accept (and, on the legacy interface, answer ARP for) every
//! address of the pool without an address per VIP: 50,000 host addresses on one interface cost
//! the kernel quadratic time (every address insert walks the others and resyncs the FIB), one
//! route costs nothing.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{debug, info};

use super::{is_absent, Changes, Netlink, NetlinkError, Progress, RTPROT_MESHGW};

/// The local routing table (where the kernel keeps the routes of its own addresses).
const RT_TABLE_LOCAL: u8 = 255;

impl Netlink {
    /// Makes our `local` IPv4 routes (protocol [`RTPROT_MESHGW`], local table) exactly `desired`
    /// on device `oif`: one route per prefix, `local <prefix> dev <oif> table local scope host`.
    /// Local routes of other protocols (the kernel's own for its addresses) are never touched.
    pub async fn reconcile_local_routes(
        &self,
        oif: u32,
        desired: &[Ipv4Net],
    ) -> Result<Changes, NetlinkError> {
        let want: BTreeSet<(Ipv4Net, u32)> = desired.iter().map(|n| (n.trunc(), oif)).collect();
        let mut progress = Progress::default();
        let mut have = BTreeSet::new();
        for (dst, dev, msg) in self.our_local_routes().await? {
            if want.contains(&(dst, dev)) {
                have.insert((dst, dev));
                continue;
            }
            let op = format!("delete local route {dst} dev ifindex {dev}");
            match self
                .change(RouteNetlinkMessage::DelRoute(msg), 0, &op)
                .await
            {
                Ok(()) => {
                    info!(dst = %dst, oif = dev, "removed local route");
                    progress.changes.removed += 1;
                }
                Err(e) if is_absent(&e) => debug!(dst = %dst, "local route already gone"),
                Err(e) => progress.fail(e),
            }
        }
        for (dst, dev) in want.difference(&have) {
            let op = format!("add local route {dst} dev ifindex {dev}");
            let msg = RouteNetlinkMessage::NewRoute(local_route(*dst, *dev));
            match self.change(msg, NLM_F_CREATE | NLM_F_EXCL, &op).await {
                Ok(()) => {
                    info!(dst = %dst, oif = dev, "installed local route (the kernel accepts the whole prefix)");
                    progress.changes.added += 1;
                }
                Err(e) => progress.fail(e),
            }
        }
        progress.finish()
    }

    /// Our local IPv4 routes: (destination, device, the kernel's message for deleting it).
    async fn our_local_routes(&self) -> Result<Vec<(Ipv4Net, u32, RouteMessage)>, NetlinkError> {
        let mut out = Vec::new();
        for msg in self.dump_ours(AddressFamily::Inet, RT_TABLE_LOCAL).await? {
            if msg.header.kind != RouteType::Local {
                continue;
            }
            let mut dst = None;
            let mut oif = 0;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(*v4),
                    RouteAttribute::Oif(i) => oif = *i,
                    _ => {}
                }
            }
            let Some(net) =
                dst.and_then(|d| Ipv4Net::new(d, msg.header.destination_prefix_length).ok())
            else {
                continue;
            };
            out.push((net, oif, msg));
        }
        Ok(out)
    }
}

/// The RTM_NEWROUTE message for `local <dst> dev <oif> table local proto meshgw scope host`.
fn local_route(dst: Ipv4Net, oif: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = AddressFamily::Inet;
    h.destination_prefix_length = dst.prefix_len();
    h.table = RT_TABLE_LOCAL;
    h.protocol = RouteProtocol::Other(RTPROT_MESHGW);
    h.scope = RouteScope::Host;
    h.kind = RouteType::Local;
    msg.attributes
        .push(RouteAttribute::Table(u32::from(RT_TABLE_LOCAL)));
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            dst.network(),
        )));
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg
}

#[cfg(test)]
mod tests {
    use super::super::route::table_of;
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};

    #[test]
    fn local_route_message_reads_back() {
        let net: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let msg = local_route(net, 7);
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let parsed = RouteMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(parsed.header.kind, RouteType::Local);
        assert_eq!(parsed.header.scope, RouteScope::Host);
        assert_eq!(parsed.header.protocol, RouteProtocol::Other(RTPROT_MESHGW));
        assert_eq!(table_of(&parsed), 255);
        assert_eq!(parsed.header.destination_prefix_length, 16);
        assert!(parsed
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                net.network()
            ))));
    }
}
