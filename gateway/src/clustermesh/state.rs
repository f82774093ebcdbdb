//! One remote cluster's view of the Cluster Mesh kvstore, kept up to date by list and watch
//! events. Pure: the etcd client feeds it.
//!
//! Two rules shape it. A malformed value never replaces a good one (Cilium adds fields and a
//! writer can be buggy; losing a service over one bad write would withdraw a portal). And a key
//! missing from a list is only treated as deleted once the cluster's sync canary for that prefix
//! says the server has written everything; before that, a freshly restarted Cluster Mesh API
//! lists a partial store, and trusting it would withdraw portals that are about to come back.

// A complete decoder/state API on purpose (status, tests and the daemon each use a part of it);
// the daemon alone does not call every item.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;
use tracing::{debug, warn};

#[path = "kv_checks.rs"]
mod kv_checks;
#[path = "kv_held.rs"]
mod kv_held;

use kv_checks::{check_ip, key_prefix};
use kv_held::{count_stale, purge, remove, sweep, upsert, Map};

use super::kvstore::{
    self, ClusterConfig, ClusterService, IpIdentityPair, Kind, KvError, KvKey, KvNode,
    DEFAULT_IP_SCOPE,
};

/// A kvstore watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// A key was created or updated.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// A key was deleted (or its lease expired).
    Delete {
        /// The key.
        key: String,
    },
}

/// What an event did to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Something a reader can see changed (data, the config, or whether the cluster is synced).
    Changed,
    /// The event repeated what was known.
    Unchanged,
    /// A malformed value was skipped; the previous value (if any) is kept. The reason names the
    /// key.
    Skipped(String),
    /// A key of no interest, or of another cluster.
    Ignored,
}

/// Sizes and counters, for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Services held.
    pub services: usize,
    /// Nodes held.
    pub nodes: usize,
    /// IP identity pairs held.
    pub ips: usize,
    /// Identities held.
    pub identities: usize,
    /// Entries missing from the last list, kept until the sync canary confirms their deletion.
    pub stale: usize,
    /// Malformed values skipped so far.
    pub skipped: u64,
    /// When the last event (of any kind) arrived.
    pub last_event: Option<Instant>,
    /// When the server's heartbeat was last seen.
    pub last_heartbeat: Option<Instant>,
}

/// One remote cluster's services, nodes, ipcache and identities.
#[derive(Clone, Debug)]
pub struct ClusterState {
    name: String,
    config: Option<ClusterConfig>,
    services: Map<(Box<str>, Box<str>), ClusterService>,
    nodes: Map<String, KvNode>,
    /// Keyed by prefix (a host is its /32 or /128), so a backend's entry is one lookup.
    ips: Map<IpNet, IpIdentityPair>,
    identities: Map<u32, BTreeMap<String, String>>,
    /// Kind roots (`cilium/state/nodes/v1`) whose sync canary was seen on this connection.
    canaries: BTreeSet<String>,
    /// Kind roots fully listed on this connection.
    listed: BTreeSet<String>,
    skipped: u64,
    last_skipped: Option<(String, String)>,
    last_event: Option<Instant>,
    last_heartbeat: Option<Instant>,
}

impl ClusterState {
    /// An empty view of `cluster`.
    pub fn new(cluster: &str) -> Self {
        ClusterState {
            name: cluster.to_string(),
            config: None,
            services: BTreeMap::new(),
            nodes: BTreeMap::new(),
            ips: BTreeMap::new(),
            identities: BTreeMap::new(),
            canaries: BTreeSet::new(),
            listed: BTreeSet::new(),
            skipped: 0,
            last_skipped: None,
            last_event: None,
            last_heartbeat: None,
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's `cilium/cluster-config/<cluster>`, once read.
    pub fn config(&self) -> Option<&ClusterConfig> {
        self.config.as_ref()
    }

    /// Whether the server writes sync canaries. Until the config says otherwise, assume it
    /// does: waiting for a canary that never comes keeps stale entries, the safe side.
    fn canaries_expected(&self) -> bool {
        self.config
            .as_ref()
            .is_none_or(|c| c.capabilities.synced_canaries)
    }

    /// Applies one watch event. A malformed value is skipped with a warning and the previous
    /// good value (if any) kept; returns what happened.
    pub fn apply(&mut self, ev: KvEvent) -> Applied {
        self.last_event = Some(Instant::now());
        match ev {
            KvEvent::Put { key, value } => self.put(&key, &value),
            KvEvent::Delete { key } => self.delete(&key),
        }
    }

    fn mine(&self, cluster: &str) -> bool {
        cluster == self.name
    }

    fn skip(&mut self, key: &str, error: &KvError) -> Applied {
        let reason = format!("{key}: {error}");
        warn!(cluster = %self.name, key, error = %error, "skipping a malformed kvstore value; the previous value is kept");
        self.skipped += 1;
        self.last_skipped = Some((key.to_string(), error.to_string()));
        Applied::Skipped(reason)
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Applied {
        match kvstore::parse_key(key) {
            KvKey::ClusterConfig { cluster } if self.mine(&cluster) => {
                match kvstore::decode_cluster_config(value) {
                    Ok(cfg) if self.config.as_ref() == Some(&cfg) => Applied::Unchanged,
                    Ok(cfg) => {
                        self.config = Some(cfg);
                        if !self.canaries_expected() {
                            // No canary will ever come: lists are complete as they are.
                            self.purge_all();
                        }
                        Applied::Changed
                    }
                    Err(e) => self.skip(key, &e),
                }
            }
            KvKey::Synced { cluster, prefix } if self.mine(&cluster) => {
                // The value is a timestamp; only the key's presence matters.
                if !self.canaries.insert(prefix.clone()) {
                    return Applied::Unchanged;
                }
                debug!(cluster = %self.name, prefix = %prefix, "sync canary seen");
                self.purge_root(&prefix);
                Applied::Changed
            }
            KvKey::Service {
                cluster,
                namespace,
                name,
            } if self.mine(&cluster) => match self.check_service(value, &namespace, &name) {
                Ok(svc) => upsert(&mut self.services, service_id(namespace, name), key, svc),
                Err(e) => self.skip(key, &e),
            },
            KvKey::Node { cluster, name } if self.mine(&cluster) => {
                match self.check_node(value, &name) {
                    Ok(node) => upsert(&mut self.nodes, name, key, node),
                    Err(e) => self.skip(key, &e),
                }
            }
            KvKey::Ip { scope, ip } if scope == DEFAULT_IP_SCOPE || self.mine(&scope) => {
                match check_ip(value, &ip) {
                    Ok(pair) => upsert(&mut self.ips, pair.prefix(), key, pair),
                    Err(e) => self.skip(key, &e),
                }
            }
            KvKey::Identity { cluster, id } if cluster.as_deref().is_none_or(|c| self.mine(c)) => {
                match kvstore::decode_identity(value) {
                    Ok(labels) => upsert(&mut self.identities, id, key, labels),
                    Err(e) => self.skip(key, &e),
                }
            }
            KvKey::Heartbeat => {
                self.last_heartbeat = self.last_event;
                Applied::Ignored
            }
            _ => Applied::Ignored,
        }
    }

    fn delete(&mut self, key: &str) -> Applied {
        match kvstore::parse_key(key) {
            KvKey::ClusterConfig { cluster } if self.mine(&cluster) => match self.config.take() {
                Some(_) => Applied::Changed,
                None => Applied::Unchanged,
            },
            // A canary goes away when the server restarts with an empty store: from now on its
            // lists are partial again.
            KvKey::Synced { cluster, prefix } if self.mine(&cluster) => {
                match self.canaries.remove(&prefix) {
                    true => Applied::Changed,
                    false => Applied::Unchanged,
                }
            }
            KvKey::Service {
                cluster,
                namespace,
                name,
            } if self.mine(&cluster) => {
                remove(&mut self.services, &service_id(namespace, name), key)
            }
            KvKey::Node { cluster, name } if self.mine(&cluster) => {
                remove(&mut self.nodes, &name, key)
            }
            KvKey::Ip { scope, ip } if scope == DEFAULT_IP_SCOPE || self.mine(&scope) => {
                match key_prefix(&ip) {
                    Some(net) => remove(&mut self.ips, &net, key),
                    None => Applied::Unchanged,
                }
            }
            KvKey::Identity { cluster, id } if cluster.as_deref().is_none_or(|c| self.mine(c)) => {
                remove(&mut self.identities, &id, key)
            }
            _ => Applied::Ignored,
        }
    }

    fn purge_root(&mut self, root: &str) -> bool {
        let r = Some(root);
        // Non-short-circuiting `|`: every map must be purged.
        purge(&mut self.services, r)
            | purge(&mut self.nodes, r)
            | purge(&mut self.ips, r)
            | purge(&mut self.identities, r)
    }

    fn purge_all(&mut self) -> bool {
        purge(&mut self.services, None)
            | purge(&mut self.nodes, None)
            | purge(&mut self.ips, None)
            | purge(&mut self.identities, None)
    }

    /// The result of (re)listing `prefix`: the entries present now. Entries held under `prefix`
    /// but missing from the list are deleted only once the sync canary of their prefix has been
    /// seen (or the config says the server writes none); until then they are kept, marked
    /// stale, and deleted when the canary arrives unless a put revives them first. Returns
    /// whether anything a reader can see changed.
    pub fn replace_prefix(&mut self, prefix: &str, entries: Vec<(String, Vec<u8>)>) -> bool {
        self.last_event = Some(Instant::now());
        let synced_before = self.is_synced();
        let present: BTreeSet<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let mut changed = false;
        for (key, value) in entries {
            changed |= self.put(&key, &value) == Applied::Changed;
        }
        let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();

        let expect = self.canaries_expected();
        let canaries = &self.canaries;
        let may_delete = |key: &str| {
            !expect || Kind::of_key(key).is_some_and(|(_, _, root)| canaries.contains(root))
        };
        changed |= sweep(&mut self.services, prefix, &present, may_delete);
        changed |= sweep(&mut self.nodes, prefix, &present, may_delete);
        changed |= sweep(&mut self.ips, prefix, &present, may_delete);
        changed |= sweep(&mut self.identities, prefix, &present, may_delete);

        // The config and the canaries have no canary of their own: their lists are complete.
        let config_key = kvstore::cluster_config_key(&self.name);
        if config_key.starts_with(prefix)
            && !present.contains(config_key.as_str())
            && self.config.take().is_some()
        {
            changed = true;
        }
        let name = self.name.clone();
        self.canaries.retain(|root| {
            let key = kvstore::synced_key(&name, root);
            !key.starts_with(prefix) || present.contains(key.as_str())
        });

        for kind in Kind::ALL {
            for cached in [false, true] {
                // Only a list of the kind's whole prefix (or wider) is a full list.
                if kind.list_prefix(&self.name, cached).starts_with(prefix) {
                    self.listed.insert(kind.root(cached));
                }
            }
        }
        changed || synced_before != self.is_synced()
    }

    /// The next lists come from a new connection: canaries and lists seen on the previous one
    /// no longer vouch for them (a restarted Cluster Mesh API starts empty and writes its
    /// canaries again once resynced). Call it when the client (re)connects; data is kept.
    pub fn reconnected(&mut self) {
        self.canaries.clear();
        self.listed.clear();
    }

    /// Services, by namespace then name.
    pub fn services(&self) -> impl Iterator<Item = &ClusterService> {
        self.services.values().map(|h| &*h.value)
    }

    /// One service.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ClusterService> {
        self.services
            .get(&service_id(namespace.into(), name.into()))
            .map(|h| &*h.value)
    }

    /// Nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &KvNode> {
        self.nodes.values().map(|h| &*h.value)
    }

    /// IP identity pairs, ordered by the prefix they name (a host is its /32 or /128).
    pub fn ip_pairs(&self) -> impl Iterator<Item = &IpIdentityPair> {
        self.ips.values().map(|h| &*h.value)
    }

    /// The ipcache entry of host address `ip` (its /32 or /128), if the cluster exports one.
    pub fn ip_pair(&self, ip: IpAddr) -> Option<&IpIdentityPair> {
        self.ips.get(&IpNet::from(ip)).map(|h| &*h.value)
    }

    /// The labels of identity `id` (`"k8s:app" -> "web"`).
    pub fn identity_labels(&self, id: u32) -> Option<&BTreeMap<String, String>> {
        self.identities.get(&id).map(|h| &*h.value)
    }

    fn kind_synced(&self, kind: Kind) -> bool {
        let expect = self.canaries_expected();
        [false, true].into_iter().any(|cached| {
            let root = kind.root(cached);
            self.listed.contains(&root) && (!expect || self.canaries.contains(&root))
        })
    }

    /// Whether the services and nodes are complete: each prefix has been listed on this
    /// connection and its sync canary seen (or, when the config says the server writes no
    /// canaries, listed once).
    pub fn is_synced(&self) -> bool {
        self.kind_synced(Kind::Services) && self.kind_synced(Kind::Nodes)
    }

    /// Sizes and counters.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            services: self.services.len(),
            nodes: self.nodes.len(),
            ips: self.ips.len(),
            identities: self.identities.len(),
            stale: count_stale(&self.services)
                + count_stale(&self.nodes)
                + count_stale(&self.ips)
                + count_stale(&self.identities),
            skipped: self.skipped,
            last_event: self.last_event,
            last_heartbeat: self.last_heartbeat,
        }
    }

    /// The last skipped value: its key and why.
    pub fn last_skipped(&self) -> Option<&(String, String)> {
        self.last_skipped.as_ref()
    }
}

/// The services map's key: namespace and name.
fn service_id(namespace: String, name: String) -> (Box<str>, Box<str>) {
    (namespace.into_boxed_str(), name.into_boxed_str())
}

#[cfg(test)]
#[path = "kv_state_tests.rs"]
mod tests;
