//! Cilium's Cluster Mesh kvstore as a read-only peer sees it: key layout, JSON value decoders and
//! the identity label format. Pure: no I/O.
//!
//! The layout is Cilium's stable API (see `shared/cilium-kvstore.md`). Values are decoded
//! leniently where Cilium adds things (unknown fields are ignored, old and new CIDR forms are both
//! accepted) and strictly where a value would otherwise be misread (a wrong type or a missing
//! name is an error, so the caller keeps the last good value instead).

// A complete decoder/state API on purpose (status, tests and the daemon each use a part of it);
// the daemon alone does not call every item.
#![allow(dead_code)]

use std::collections::BTreeMap;

#[path = "kv_compact.rs"]
mod kv_compact;
#[path = "kv_serde.rs"]
mod kv_serde;
#[path = "kv_values.rs"]
mod kv_values;

// Callers name these types through `kvstore::`; a binary crate flags the ones only reached
// through fields as unused re-exports.
#[allow(unused_imports)]
pub use kv_values::{
    Capabilities, ClusterConfig, ClusterService, IpIdentityPair, KvNode, L4Protocol, Labels,
    NamedPort, NodeAddress, PortConfig, Ports, PortsByIp, PORTAL_LABEL,
};

/// The key every Cluster Mesh API server rewrites each minute to show it is alive.
pub const HEARTBEAT_KEY: &str = "cilium/.heartbeat";
/// Parent of the per-cluster `cilium/cluster-config/<cluster>` keys.
pub const CLUSTER_CONFIG_PREFIX: &str = "cilium/cluster-config/";
/// Parent of the sync canaries, `cilium/synced/<cluster>/<prefix>`.
pub const SYNCED_PREFIX: &str = "cilium/synced/";
/// Where a cluster's own API server keeps the exported state.
pub const STATE_PREFIX: &str = "cilium/state/";
/// Where KVStoreMesh keeps the state it copied in (clusters whose config says `cached`).
pub const CACHE_PREFIX: &str = "cilium/cache/";
/// The ipcache address space of the non-cached layout (`cilium/state/ip/v1/default/...`).
pub const DEFAULT_IP_SCOPE: &str = "default";

/// A kvstore key, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvKey {
    /// `cilium/cluster-config/<cluster>`.
    ClusterConfig {
        /// The cluster the configuration describes.
        cluster: String,
    },
    /// `cilium/synced/<cluster>/<prefix>`: `prefix` of `cluster` has been fully written.
    Synced {
        /// The cluster whose data is synced.
        cluster: String,
        /// The data prefix, e.g. `cilium/state/nodes/v1`.
        prefix: String,
    },
    /// `cilium/{state,cache}/services/v1/<cluster>/<namespace>/<name>`.
    Service {
        /// The exporting cluster.
        cluster: String,
        /// Kubernetes namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
    /// `cilium/{state,cache}/nodes/v1/<cluster>/<name>`.
    Node {
        /// The node's cluster.
        cluster: String,
        /// Node name.
        name: String,
    },
    /// `cilium/state/ip/v1/default/<ip>` or `cilium/cache/ip/v1/<cluster>/<ip>`.
    Ip {
        /// `default` (API server layout) or the cluster name (KVStoreMesh cache layout).
        scope: String,
        /// The IP or CIDR exactly as the key spells it.
        ip: String,
    },
    /// `cilium/state/identities/v1/id/<id>` or `cilium/cache/identities/v1/<cluster>/id/<id>`.
    Identity {
        /// The cluster named by the cache layout; `None` in the API server layout, which has
        /// no cluster segment (the API server only holds its own cluster's identities).
        cluster: Option<String>,
        /// Numeric security identity.
        id: u32,
    },
    /// `cilium/.heartbeat`.
    Heartbeat,
    /// Anything else (endpoint slices, identity value keys, other software's keys).
    Other,
}

/// The kinds of exported data a peer lists and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Global services (`services/v1`).
    Services,
    /// Nodes (`nodes/v1`).
    Nodes,
    /// IP to identity pairs, the ipcache (`ip/v1`).
    Ip,
    /// Security identities (`identities/v1`).
    Identities,
}

impl Kind {
    /// Every kind, in listing order.
    pub const ALL: [Kind; 4] = [Kind::Services, Kind::Nodes, Kind::Ip, Kind::Identities];

    fn segment(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::Nodes => "nodes",
            Kind::Ip => "ip",
            Kind::Identities => "identities",
        }
    }

    /// The kind's root, without trailing slash, e.g. `cilium/state/nodes/v1`: the prefix a
    /// sync canary names.
    pub fn root(self, cached: bool) -> String {
        let base = if cached { CACHE_PREFIX } else { STATE_PREFIX };
        format!("{base}{}/v1", self.segment())
    }

    /// The prefix a peer lists and watches for `cluster`'s data of this kind. It ends with `/`
    /// so that `cluster1` does not also match `cluster10`.
    pub fn list_prefix(self, cluster: &str, cached: bool) -> String {
        let root = self.root(cached);
        match (self, cached) {
            (Kind::Services | Kind::Nodes, _) => format!("{root}/{cluster}/"),
            (Kind::Ip, false) => format!("{root}/{DEFAULT_IP_SCOPE}/"),
            (Kind::Ip, true) => format!("{root}/{cluster}/"),
            (Kind::Identities, false) => format!("{root}/id/"),
            (Kind::Identities, true) => format!("{root}/{cluster}/id/"),
        }
    }

    /// The kind and root (e.g. `cilium/cache/ip/v1`) a key or list prefix falls under.
    pub fn of_key(key: &str) -> Option<(Kind, bool, &str)> {
        let (cached, rest) = if let Some(r) = key.strip_prefix(STATE_PREFIX) {
            (false, r)
        } else {
            (true, key.strip_prefix(CACHE_PREFIX)?)
        };
        let kind = Kind::ALL.into_iter().find(|k| {
            rest.strip_prefix(k.segment())
                .and_then(|r| r.strip_prefix("/v1"))
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })?;
        let root_len = key.len() - rest.len() + kind.segment().len() + "/v1".len();
        Some((kind, cached, &key[..root_len]))
    }
}

/// Errors decoding a kvstore value.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Not the JSON Cilium writes for this kind of key (syntax, a wrong type, a missing field).
    #[error("malformed {what}: {source}")]
    Json {
        /// What was being decoded.
        what: &'static str,
        /// serde's description, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// Decodes, but breaks a rule Cilium's own reader enforces (e.g. an empty name).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// The broken rule.
        reason: String,
    },
    /// An identity value that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// What was being decoded.
        what: &'static str,
    },
}

fn nonempty(parts: &[&str]) -> bool {
    parts.iter().all(|p| !p.is_empty())
}

/// Classifies a key. Keys of the KVStoreMesh cache layout (`cilium/cache/...`) map to the same
/// variants as the API server layout (`cilium/state/...`).
pub fn parse_key(key: &str) -> KvKey {
    if key == HEARTBEAT_KEY {
        return KvKey::Heartbeat;
    }
    if let Some(cluster) = key.strip_prefix(CLUSTER_CONFIG_PREFIX) {
        if !cluster.is_empty() && !cluster.contains('/') {
            return KvKey::ClusterConfig {
                cluster: cluster.to_string(),
            };
        }
        return KvKey::Other;
    }
    if let Some(rest) = key.strip_prefix(SYNCED_PREFIX) {
        return match rest.split_once('/') {
            Some((cluster, prefix)) if !cluster.is_empty() && !prefix.is_empty() => KvKey::Synced {
                cluster: cluster.to_string(),
                prefix: prefix.to_string(),
            },
            _ => KvKey::Other,
        };
    }
    let (cached, rest) = match (
        key.strip_prefix(STATE_PREFIX),
        key.strip_prefix(CACHE_PREFIX),
    ) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return KvKey::Other,
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let s = |p: &str| p.to_string();
    match parts.as_slice() {
        ["services", "v1", c, ns, n] if nonempty(&[c, ns, n]) => KvKey::Service {
            cluster: s(c),
            namespace: s(ns),
            name: s(n),
        },
        ["nodes", "v1", c, n] if nonempty(&[c, n]) => KvKey::Node {
            cluster: s(c),
            name: s(n),
        },
        // A CIDR entry's key carries its own slash: `.../10.0.0.0/8`.
        ["ip", "v1", scope, ip @ ..]
            if (1..=2).contains(&ip.len()) && nonempty(ip) && !scope.is_empty() =>
        {
            KvKey::Ip {
                scope: s(scope),
                ip: ip.join("/"),
            }
        }
        ["identities", "v1", "id", id] if !cached => match parse_id(id) {
            Some(id) => KvKey::Identity { cluster: None, id },
            None => KvKey::Other,
        },
        ["identities", "v1", c, "id", id] if cached && !c.is_empty() => match parse_id(id) {
            Some(id) => KvKey::Identity {
                cluster: Some(s(c)),
                id,
            },
            None => KvKey::Other,
        },
        _ => KvKey::Other,
    }
}

fn parse_id(s: &str) -> Option<u32> {
    // u32::from_str also takes "+5", which Cilium never writes: such a key is not an identity.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The prefixes a peer lists and watches for `cluster`'s services, nodes, IPs and identities,
/// in the layout the cluster's config announces (`cached`: KVStoreMesh's `cilium/cache/`).
pub fn prefixes(cluster: &str, cached: bool) -> Vec<String> {
    Kind::ALL
        .iter()
        .map(|k| k.list_prefix(cluster, cached))
        .collect()
}

/// The sync canary of `prefix` (a kind root such as `cilium/state/nodes/v1`; a trailing `/` is
/// dropped) for `cluster`.
pub fn synced_key(cluster: &str, prefix: &str) -> String {
    format!("{SYNCED_PREFIX}{cluster}/{}", prefix.trim_end_matches('/'))
}

/// `cilium/cluster-config/<cluster>`.
pub fn cluster_config_key(cluster: &str) -> String {
    format!("{CLUSTER_CONFIG_PREFIX}{cluster}")
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(|source| KvError::Json { what, source })
}

fn require(what: &'static str, fields: &[(&str, &str)]) -> Result<(), KvError> {
    match fields.iter().find(|(_, v)| v.is_empty()) {
        Some((field, _)) => Err(KvError::Invalid {
            what,
            reason: format!("`{field}` is empty"),
        }),
        None => Ok(()),
    }
}

/// Decodes a `services/v1` value. Cilium's reader rejects a service without cluster, namespace
/// or name; so does this one.
pub fn decode_service(bytes: &[u8]) -> Result<ClusterService, KvError> {
    let svc: ClusterService = json("service", bytes)?;
    require(
        "service",
        &[
            ("cluster", &svc.cluster),
            ("namespace", &svc.namespace),
            ("name", &svc.name),
        ],
    )?;
    Ok(svc)
}

/// Decodes a `nodes/v1` value.
pub fn decode_node(bytes: &[u8]) -> Result<KvNode, KvError> {
    let node: KvNode = json("node", bytes)?;
    require("node", &[("Name", &node.name)])?;
    Ok(node)
}

/// Decodes an `ip/v1` value.
pub fn decode_ip_pair(bytes: &[u8]) -> Result<IpIdentityPair, KvError> {
    json("ip identity pair", bytes)
}

/// Decodes a `cilium/cluster-config/<cluster>` value.
pub fn decode_cluster_config(bytes: &[u8]) -> Result<ClusterConfig, KvError> {
    json("cluster config", bytes)
}

/// Decodes an `identities/v1/id/<id>` value (labels, not JSON).
pub fn decode_identity(bytes: &[u8]) -> Result<BTreeMap<String, String>, KvError> {
    let text = std::str::from_utf8(bytes).map_err(|_| KvError::NotUtf8 { what: "identity" })?;
    Ok(parse_identity_labels(text))
}

/// Parses identity labels as Cilium writes them, `source:key=value;` repeated, into
/// `"source:key" -> "value"`. The value is everything after the first `=` (it may itself contain
/// `=`); a label without `=` (e.g. `reserved:host`) has an empty value; the trailing `;` is
/// optional and empty segments are skipped.
pub fn parse_identity_labels(value: &str) -> BTreeMap<String, String> {
    value
        .split(';')
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[cfg(test)]
#[path = "kv_tests.rs"]
mod tests;
