//! Service telemetry rendered when a client asks (the API's `status`, `/metrics`), from the
//! frontends and the counters the observer keeps. Rendered ahead and kept, the telemetry of
//! 50,000 frontends and their 150,000 backends (an `addr:port` string each) was the daemon's
//! largest view, though nothing reads it most seconds.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use meshgw_common::maps::ServiceKey;
use meshgw_common::telemetry::Traffic;

use super::{BackendTelemetry, ServiceTelemetry};
use crate::desired::{addr_from16, BackendSpec};
use crate::flows::health::BackendHealth;

/// One frontend as the telemetry names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendInfo {
    /// The frontend's map key.
    pub key: ServiceKey,
    /// Its id in the datapath (its traffic counters' index).
    pub service_id: u32,
    /// `namespace/name`.
    pub service: Arc<str>,
    /// Its backends and their weights: the desired state's list, shared rather than copied.
    specs: Arc<[(BackendSpec, u32)]>,
    /// Each backend's id, in the order of `specs`; 0 for one the datapath does not have.
    ids: Box<[u32]>,
}

impl FrontendInfo {
    /// The frontend `key` with the backends `specs`, whose ids `id_of` tells.
    pub fn new(
        key: ServiceKey,
        service_id: u32,
        service: Arc<str>,
        specs: Arc<[(BackendSpec, u32)]>,
        id_of: impl Fn(&BackendSpec) -> Option<u32>,
    ) -> FrontendInfo {
        let ids = specs.iter().map(|(b, _)| id_of(b).unwrap_or(0)).collect();
        FrontendInfo {
            key,
            service_id,
            service,
            specs,
            ids,
        }
    }

    /// A frontend whose backends (weight 1) have the ids given beside them.
    #[cfg(test)]
    pub fn with_ids(
        key: ServiceKey,
        service_id: u32,
        service: &str,
        backends: &[(u32, BackendSpec)],
    ) -> FrontendInfo {
        let specs: Arc<[(BackendSpec, u32)]> = backends.iter().map(|(_, b)| (*b, 1)).collect();
        let ids: HashMap<BackendSpec, u32> = backends.iter().map(|(id, b)| (*b, *id)).collect();
        FrontendInfo::new(key, service_id, service.into(), specs, |b| {
            ids.get(b).copied()
        })
    }

    /// The backends the datapath has, with their ids.
    pub fn backends(&self) -> impl Iterator<Item = (u32, &BackendSpec)> + Clone {
        self.ids
            .iter()
            .zip(self.specs.iter())
            .filter(|(id, _)| **id != 0)
            .map(|(id, (b, _))| (*id, b))
    }

    /// Whether this frontend has the backends `specs` under the ids `id_of` tells.
    pub fn same_backends(
        &self,
        specs: &[(BackendSpec, u32)],
        id_of: impl Fn(&BackendSpec) -> Option<u32>,
    ) -> bool {
        self.specs.len() == specs.len()
            && self
                .ids
                .iter()
                .zip(self.specs.iter())
                .zip(specs)
                .all(|((id, (a, _)), (b, _))| a == b && *id == id_of(b).unwrap_or(0))
    }

    /// Holds `specs` (the same backends, see [`FrontendInfo::same_backends`]) instead: the
    /// desired state's new list, so that the one it replaced is freed.
    pub fn share(&mut self, specs: &Arc<[(BackendSpec, u32)]>) {
        self.specs = specs.clone();
    }
}

/// A live backend's traffic as last read, and the node it is on (a node's traffic is the sum of
/// its backends').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendTraffic {
    /// Packets and bytes.
    pub traffic: Traffic,
    /// The node's underlay address.
    pub node: Ipv4Addr,
}

/// What the service telemetry is rendered from, kept up to date by the observer.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// The frontends, sorted by key.
    pub frontends: Vec<FrontendInfo>,
    /// Frontend traffic by service id, as last read.
    pub services: HashMap<u32, Traffic>,
    /// Live backend traffic by backend id, as last read.
    pub backends: HashMap<u32, BackendTraffic>,
    /// Flows connection tracking holds, per (VIP, port, protocol), as of the last refresh.
    pub connections: BTreeMap<(IpAddr, u16, u8), u64>,
    /// Passive health per backend (`addr:port`), as of the last refresh.
    pub health: HashMap<String, BackendHealth>,
}

impl ServiceCounters {
    /// Every frontend's telemetry, in key order.
    pub fn render(&self) -> Arc<[Arc<ServiceTelemetry>]> {
        // One string per node, shared by its backends.
        let mut node_text: HashMap<Ipv4Addr, Arc<str>> = HashMap::new();
        self.frontends
            .iter()
            .map(|f| Arc::new(self.render_one(f, &mut node_text)))
            .collect()
    }

    fn render_one(
        &self,
        f: &FrontendInfo,
        node_text: &mut HashMap<Ipv4Addr, Arc<str>>,
    ) -> ServiceTelemetry {
        let t = self
            .services
            .get(&f.service_id)
            .copied()
            .unwrap_or_default();
        let vip = addr_from16(f.key.addr, f.key.family);
        let port = u16::from_be(f.key.port);
        ServiceTelemetry {
            service: f.service.clone(),
            vip,
            port,
            proto: Cow::Borrowed(if f.key.proto == 6 { "tcp" } else { "udp" }),
            packets: t.packets,
            bytes: t.bytes,
            connections: self
                .connections
                .get(&(vip, port, f.key.proto))
                .copied()
                .unwrap_or(0),
            backends: f
                .backends()
                .map(|(id, spec)| {
                    let t = self
                        .backends
                        .get(&id)
                        .map(|b| b.traffic)
                        .unwrap_or_default();
                    let backend = SocketAddr::new(spec.addr, spec.port).to_string();
                    let h = self.health.get(&backend).copied().unwrap_or_default();
                    BackendTelemetry {
                        backend,
                        node: node_text
                            .entry(spec.node_ip)
                            .or_insert_with(|| Arc::from(spec.node_ip.to_string()))
                            .clone(),
                        active: true,
                        packets: t.packets,
                        bytes: t.bytes,
                        health: h.health,
                        answered: h.answered,
                        unanswered: h.unanswered,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
