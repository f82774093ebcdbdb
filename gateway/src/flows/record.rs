//! A flow as the API, `meshgw flows`, the dashboard and IPFIX see it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What happened to a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Load-balanced into the mesh.
    Forwarded,
    /// Dropped by the datapath (see the reason).
    Dropped,
}

impl Verdict {
    /// Upper-case, as Hubble prints it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "forwarded" => Ok(Verdict::Forwarded),
            "dropped" => Ok(Verdict::Dropped),
            _ => Err(format!("{s:?}: expected \"forwarded\" or \"dropped\"")),
        }
    }
}

/// One side of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Address.
    pub addr: IpAddr,
    /// Port (ICMP: 0).
    pub port: u16,
    /// Security identity (0: unknown, policy not enforced).
    pub identity: u32,
    /// The identity's labels, `key=value`.
    pub labels: Vec<String>,
}

/// A flow: one 5-tuple with one verdict, aggregated over its packets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unix milliseconds of the first packet.
    pub first_seen_ms: u64,
    /// Unix milliseconds of the last packet known.
    pub last_seen_ms: u64,
    /// The client.
    pub src: Endpoint,
    /// What the client addressed (the VIP and frontend port).
    pub dst: Endpoint,
    /// The service, `namespace/name`, when known.
    pub service: Option<String>,
    /// The backend chosen, `addr:port`, when one was.
    pub backend: Option<String>,
    /// "TCP", "UDP", or the protocol number.
    pub proto: String,
    /// Protocol number.
    pub proto_num: u8,
    /// Forwarded or dropped.
    pub verdict: Verdict,
    /// Why it was dropped (the counter name, e.g. `drop_policy`).
    pub reason: Option<String>,
    /// Packets (client -> VIP direction).
    pub packets: u64,
    /// Bytes of those packets (L3).
    pub bytes: u64,
    /// Packets the backend sent back (backend -> client), as connection tracking counts them.
    #[serde(default)]
    pub reply_packets: u64,
    /// Bytes of those replies (L3).
    #[serde(default)]
    pub reply_bytes: u64,
    /// Egress flows: the address and port the flow left with (source NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    /// Whether connection tracking still holds the flow.
    pub active: bool,
}

/// Which flows to show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only flows to this VIP.
    #[serde(default)]
    pub vip: Option<IpAddr>,
    /// Only this verdict.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// Only flows whose printed line contains this text (case-insensitive).
    #[serde(default)]
    pub text: Option<String>,
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.vip.is_none_or(|v| r.dst.addr == v)
            && self.verdict.is_none_or(|v| r.verdict == v)
            && self
                .text
                .as_deref()
                .is_none_or(|t| t.is_empty() || r.line().to_lowercase().contains(&t.to_lowercase()))
    }
}

fn side(e: &Endpoint) -> String {
    let addr = match e.addr {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => format!("[{a}]"),
        a => a.to_string(),
    };
    let mut s = format!("{addr}:{}", e.port);
    if e.identity != 0 {
        s.push_str(&format!(" ({}", e.identity));
        if !e.labels.is_empty() {
            s.push(' ');
            s.push_str(&e.labels.join(","));
        }
        s.push(')');
    }
    s
}

/// `HH:MM:SS.mmm` of a Unix millisecond time (UTC).
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

impl FlowRecord {
    /// The Hubble-style line without the time: source -> destination, service, verdict, reason.
    pub fn line(&self) -> String {
        let mut s = format!("{} -> {}", side(&self.src), side(&self.dst));
        if let Some(svc) = &self.service {
            s.push_str(&format!(" {svc}"));
        }
        if let Some(b) = &self.backend {
            s.push_str(&format!(" via {b}"));
        }
        if let Some(n) = &self.snat {
            s.push_str(&format!(" as {n}"));
        }
        s.push_str(&format!(" {} {}", self.proto, self.verdict.label()));
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        s.push_str(&format!(" {} pkts {} B", self.packets, self.bytes));
        if self.verdict == Verdict::Forwarded {
            s.push_str(&format!(
                ", {} pkts {} B back",
                self.reply_packets, self.reply_bytes
            ));
        }
        s
    }

    /// The full text line, as `meshgw flows` prints it.
    pub fn text(&self) -> String {
        format!("{}  {}", clock(self.last_seen_ms), self.line())
    }
}
