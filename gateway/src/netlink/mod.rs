//! Everything the daemon does through rtnetlink: links, addresses, routes and neighbours, each as
//! an idempotent reconciler; plus sysctls (`sysctl`) and VIP announcements (`announce`).
//!
//! The reconcilers find their own objects again from the kernel alone, so a restarted daemon
//! converges without duplicating or forgetting anything:
//! - addresses: every address on the device the caller gives (the VIP dummy), or only those
//!   inside the VIP pool when the VIPs live on an interface with addresses of its own;
//! - routes: every route of protocol [`RTPROT_MESHGW`] in the main table;
//! - neighbours: the PERMANENT entries on the device given (the VXLAN device);
//! - proxy NDP entries: those on the device given that fall inside the VIP pool.
//!
//! A second run with the same desired state makes no change and reports `Changes::default()`.

// The daemon calls a subset of this API, and which one depends on its configuration (VIPs on a
// device of their own or on the legacy interface); gateway/tests/netlink_*.rs exercise all of it.
#![allow(dead_code)]

mod addr;
pub mod announce;
mod error;
mod link;
mod local;
mod neigh;
mod route;
pub mod sysctl;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::AddAssign;
use std::time::Duration;

use futures::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

pub use error::NetlinkError;

/// The route protocol (`rtm_protocol`) that marks meshgw's routes: `ip route show proto 217`.
///
/// 217 is unassigned in iproute2's `rt_protos` and clear of the numbers routing daemons use
/// (FRR takes 186 to 198). Every route with this protocol in the main table belongs to meshgw and
/// is removed when not desired; routes of any other protocol are never touched.
pub const RTPROT_MESHGW: u8 = 217;

/// How long one request may wait for the kernel's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 3;

/// A handle on the kernel's rtnetlink interface in the current network namespace (the one the
/// thread calling [`Netlink::connect`] is in).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// A network device as [`Netlink::link`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address (all zeros for devices without an Ethernet address).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// What a reconcile changed: `added` counts objects created or rewritten, `removed` objects
/// deleted. Empty when the kernel already matched the desired state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Objects created or rewritten.
    pub added: usize,
    /// Objects deleted.
    pub removed: usize,
}

impl Changes {
    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0
    }
}

impl AddAssign for Changes {
    fn add_assign(&mut self, rhs: Changes) {
        self.added += rhs.added;
        self.removed += rhs.removed;
    }
}

/// Collects the outcome of a reconcile that carries on past a failed object: one route that
/// clashes with somebody else's must not keep the routes to every other node from being
/// installed. The first error is returned once everything else was attempted.
#[derive(Default)]
struct Progress {
    changes: Changes,
    failed: usize,
    first_error: Option<NetlinkError>,
}

impl Progress {
    /// Records a failed operation (logged here, as only the first one is returned).
    fn fail(&mut self, e: NetlinkError) {
        tracing::warn!(error = %e, "netlink operation failed; continuing with the others");
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn finish(self) -> Result<Changes, NetlinkError> {
        match self.first_error {
            None => Ok(self.changes),
            Some(e) => {
                if self.failed > 1 {
                    tracing::warn!(
                        failed = self.failed,
                        "several netlink operations failed; returning the first"
                    );
                }
                Err(e)
            }
        }
    }
}

/// A route meshgw wants in the main table (protocol [`RTPROT_MESHGW`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DesiredRoute {
    /// Destination prefix (host bits are cleared before use).
    pub dst: ipnet::IpNet,
    /// Output interface.
    pub oif: u32,
    /// Gateway; `None` routes the prefix on-link. An IPv4 route may have an IPv6 gateway
    /// (sent as `RTA_VIA`); the reverse is refused by the kernel and by this module.
    pub via: Option<IpAddr>,
    /// `RTNH_F_ONLINK`: use the gateway without checking that a prefix of the device covers it.
    pub onlink: bool,
    /// Lightweight-tunnel encapsulation for a metadata-mode tunnel device.
    pub encap: Option<IpEncap>,
}

/// `LWTUNNEL_ENCAP_IP` metadata attached to a route: what `ip route ... encap ip id 2 dst
/// 172.18.0.11` sets. An external-mode VXLAN device takes the VNI and the remote endpoint of
/// each packet from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpEncap {
    /// Tunnel id: the VNI for VXLAN.
    pub id: u64,
    /// Remote tunnel endpoint (IPv4 underlay).
    pub dst: Ipv4Addr,
}

/// A permanent neighbour entry meshgw wants on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DesiredNeighbour {
    /// Neighbour address.
    pub ip: IpAddr,
    /// Its link-layer address.
    pub mac: [u8; 6],
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns the task
    /// that drives it on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        // Strict checking makes the kernel filter dumps (routes by protocol and table, addresses
        // and neighbours by device): a gateway with a full routing table must not copy all of
        // it on every reconcile. Answers are still filtered here too.
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection_with_strict_check().map_err(NetlinkError::Socket)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for code that drives rtnetlink itself (the tunnel
    /// crate's VXLAN device).
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Sends one request and returns the messages of the answer; an error answer becomes
    /// [`NetlinkError::Kernel`] with the kernel's errno.
    async fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|_| NetlinkError::Closed { op: op.to_owned() })?;
        let collect = async {
            let mut out = Vec::new();
            while let Some(answer) = answers.next().await {
                match &answer.payload {
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(NetlinkError::Kernel {
                                op: op.to_owned(),
                                source: io::Error::from_raw_os_error(code.get().saturating_abs()),
                            });
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::Unexpected {
                            op: op.to_owned(),
                            detail: "netlink overrun".to_owned(),
                        })
                    }
                    NetlinkPayload::InnerMessage(_) => out.push(answer),
                    _ => {}
                }
            }
            Ok(out)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, collect).await {
            Ok(result) => result,
            Err(_) => Err(NetlinkError::Timeout {
                op: op.to_owned(),
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// A request that changes something: sent with `NLM_F_ACK` (plus `flags`), so that the
    /// kernel's verdict is awaited.
    async fn change(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<(), NetlinkError> {
        self.exchange(
            msg,
            NLM_F_REQUEST | rtnetlink::packet_core::NLM_F_ACK | flags,
            op,
        )
        .await
        .map(|_| ())
    }

    /// A dump request; returns the inner messages. A dump the kernel flags as interrupted by a
    /// concurrent change is repeated, since a reconcile must not act on an inconsistent view.
    async fn dump(
        &self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let answers = self
                .exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, op)
                .await?;
            if answers
                .iter()
                .any(|m| m.header.flags & NLM_F_DUMP_INTR != 0)
            {
                continue;
            }
            return Ok(answers.into_iter().filter_map(inner).collect());
        }
        Err(NetlinkError::Unexpected {
            op: op.to_owned(),
            detail: format!("dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"),
        })
    }

    /// A request answered by exactly one message (a get by key).
    async fn get_one(
        &self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<RouteNetlinkMessage, NetlinkError> {
        let answers = self.exchange(msg, NLM_F_REQUEST, op).await?;
        answers
            .into_iter()
            .find_map(inner)
            .ok_or_else(|| NetlinkError::Unexpected {
                op: op.to_owned(),
                detail: "empty answer".to_owned(),
            })
    }
}

fn inner(m: NetlinkMessage<RouteNetlinkMessage>) -> Option<RouteNetlinkMessage> {
    match m.payload {
        NetlinkPayload::InnerMessage(i) => Some(i),
        _ => None,
    }
}

/// True when `e` is the kernel saying that the object does not exist (`ENOENT`, `ENODEV`,
/// `ESRCH`, `EADDRNOTAVAIL`): the state a removal wanted anyway.
fn is_absent(e: &NetlinkError) -> bool {
    matches!(
        e.errno(),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Formats a MAC address as `02:aa:00:00:00:01` for logs.
fn mac_str(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}
