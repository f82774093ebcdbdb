//! The checks Cilium's own reader makes before it accepts a value, beyond decoding: the value
//! is the entity its key names, of the cluster it claims.

use super::super::kvstore::{self, ClusterService, IpIdentityPair, KvError, KvNode};
use super::ClusterState;

impl ClusterState {
    fn invalid(what: &'static str, reason: String) -> KvError {
        KvError::Invalid { what, reason }
    }

    /// The cluster id the config announces, when it announces one.
    fn config_id(&self) -> Option<u32> {
        self.config.as_ref().map(|c| c.id).filter(|id| *id != 0)
    }

    /// Decodes a service and applies the checks Cilium's own reader makes: the value must be
    /// the service its key names, of this cluster (and of its id, once the config gives it).
    pub(super) fn check_service(
        &self,
        value: &[u8],
        namespace: &str,
        name: &str,
    ) -> Result<ClusterService, KvError> {
        let svc = kvstore::decode_service(value)?;
        if *svc.cluster != *self.name || &*svc.namespace != namespace || &*svc.name != name {
            let reason = format!(
                "the value is {}/{}/{}, the key names {}/{namespace}/{name}",
                svc.cluster, svc.namespace, svc.name, self.name
            );
            return Err(Self::invalid("service", reason));
        }
        match self.config_id() {
            Some(id) if svc.cluster_id != id => Err(Self::invalid(
                "service",
                format!(
                    "clusterID {} differs from the cluster config's id {id}",
                    svc.cluster_id
                ),
            )),
            _ => Ok(svc),
        }
    }

    pub(super) fn check_node(&self, value: &[u8], name: &str) -> Result<KvNode, KvError> {
        let node = kvstore::decode_node(value)?;
        if node.cluster != self.name || node.name != name {
            let reason = format!(
                "the value is {}/{}, the key names {}/{name}",
                node.cluster, node.name, self.name
            );
            return Err(Self::invalid("node", reason));
        }
        match self.config_id() {
            // Old writers left ClusterID 0: only a different non-zero id is a contradiction.
            Some(id) if node.cluster_id != 0 && node.cluster_id != id => Err(Self::invalid(
                "node",
                format!(
                    "ClusterID {} differs from the cluster config's id {id}",
                    node.cluster_id
                ),
            )),
            _ => Ok(node),
        }
    }
}

/// Decodes an ipcache entry and checks it is the one its key names (`ip` as the key spells
/// it, an address or a CIDR).
/// The prefix an ipcache key names (`10.0.0.1`, `10.0.0.0/24`, `fd00::1`), `None` if it is
/// neither an address nor a CIDR.
pub(super) fn key_prefix(ip: &str) -> Option<ipnet::IpNet> {
    match ip.parse::<ipnet::IpNet>() {
        Ok(net) => Some(net),
        Err(_) => ip.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from),
    }
}

pub(super) fn check_ip(value: &[u8], ip: &str) -> Result<IpIdentityPair, KvError> {
    let pair = kvstore::decode_ip_pair(value)?;
    match key_prefix(ip) {
        Some(net) if net == pair.prefix() => Ok(pair),
        Some(_) => Err(KvError::Invalid {
            what: "ip identity pair",
            reason: format!("the value is {}, the key names {ip}", pair.prefix()),
        }),
        None => Err(KvError::Invalid {
            what: "ip identity pair",
            reason: format!("the key's {ip:?} is not an IP or CIDR"),
        }),
    }
}
