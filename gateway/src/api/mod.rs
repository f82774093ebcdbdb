//! The local control API: JSON lines over a Unix socket (root only, mode 0600), each message
//! carrying the protocol `version`. `meshgw status`, `meshgw flows` and `meshgw top` are its
//! clients; nothing but the daemon reads the BPF maps for them.
//!
//! Requests (one line each): `{"version":1,"request":"status"}` answers one [`Reply::Snapshot`];
//! `{"version":1,"request":"flows","follow":false,"filter":{...}}` answers the flows held, one
//! [`Reply::Flow`] a line, then [`Reply::End`] (or, with `follow`, keeps sending new flows).

pub mod client;
pub mod server;
pub mod services;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::daemon::status::Status;
use crate::flows::health::Health;
use crate::flows::{Filter, FlowRecord};

/// The protocol version this build speaks.
pub const API_VERSION: u32 = 1;

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version of the client.
    pub version: u32,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum RequestBody {
    /// The status and the telemetry snapshot.
    Status,
    /// Flows.
    Flows {
        /// Keep the stream open and send flows as they are seen.
        #[serde(default)]
        follow: bool,
        /// Which flows.
        #[serde(default)]
        filter: Filter,
        /// Only the most recent this many of the listing (0: all).
        #[serde(default)]
        limit: usize,
    },
}

/// A reply line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version of the daemon.
    pub version: u32,
    /// The answer.
    #[serde(flatten)]
    pub body: ReplyBody,
}

/// What a reply carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum ReplyBody {
    /// The answer to `status`.
    Snapshot(Box<Snapshot>),
    /// One flow.
    Flow(Box<FlowRecord>),
    /// No more flows.
    End,
    /// The request could not be served.
    Error {
        /// Why.
        message: String,
    },
}

/// A service frontend's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTelemetry {
    /// `namespace/name` (shared with the daemon's view of the frontend).
    pub service: Arc<str>,
    /// The VIP.
    pub vip: IpAddr,
    /// Frontend port.
    pub port: u16,
    /// "tcp" or "udp".
    pub proto: Cow<'static, str>,
    /// Packets client -> VIP.
    pub packets: u64,
    /// Bytes client -> VIP.
    pub bytes: u64,
    /// Flows connection tracking holds (those the daemon saw start).
    pub connections: u64,
    /// The backends.
    pub backends: Vec<BackendTelemetry>,
}

/// A backend's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTelemetry {
    /// `addr:port`.
    pub backend: String,
    /// The node hosting it (underlay address; shared by the node's backends).
    pub node: Arc<str>,
    /// Whether it is in the service's Maglev table (false: draining, the cluster withdrew it).
    pub active: bool,
    /// Packets sent to it.
    pub packets: u64,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Passive health from the connections it answered or not (see [`crate::flows::health`]).
    #[serde(default)]
    pub health: Health,
    /// TCP connections of the last minute it answered.
    #[serde(default)]
    pub answered: u64,
    /// TCP connections of the last minute it left unanswered.
    #[serde(default)]
    pub unanswered: u64,
}

/// Traffic into the tunnel to one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTelemetry {
    /// `cluster/name`, when known.
    pub node: String,
    /// Underlay address.
    pub address: String,
    /// Packets sent.
    pub packets: u64,
    /// Bytes sent (inner L3).
    pub bytes: u64,
    /// Tunnel kind: "vxlan" (Cilium VTEP), or another gateway's tunnel (e.g. "wireguard").
    #[serde(default)]
    pub kind: String,
    /// Seconds since the tunnel's last handshake; `None` for kinds without one (VXLAN).
    #[serde(default)]
    pub handshake_age_s: Option<u64>,
}

/// Pings to one VIP (ICMP/ICMPv6 echo packets, which the kernel answers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipTelemetry {
    /// The VIP.
    pub vip: IpAddr,
    /// ICMP echo packets received for it.
    pub icmp_packets: u64,
    /// Their bytes (IP packets).
    pub icmp_bytes: u64,
}

/// Flow event statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Flows held in memory.
    pub held: u64,
    /// New-flow events read.
    pub new_flows: u64,
    /// Sample events read.
    pub samples: u64,
    /// Drop events read.
    pub drops: u64,
}

/// What the daemon knows, refreshed every second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix milliseconds of the refresh.
    pub taken_at_ms: u64,
    /// The published status (clusters, portals, nodes, problems).
    pub status: Status,
    /// The datapath counters by name.
    pub counters: BTreeMap<String, u64>,
    /// Per frontend, rendered when asked for (see [`services`]).
    pub services: std::sync::Arc<[std::sync::Arc<ServiceTelemetry>]>,
    /// Per tunnel peer.
    pub nodes: Vec<NodeTelemetry>,
    /// Per VIP: the pings it received.
    #[serde(default)]
    pub vips: Vec<VipTelemetry>,
    /// Flow events.
    pub flows: FlowStats,
}

#[cfg(test)]
mod tests;
