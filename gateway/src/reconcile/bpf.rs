//! Makes the BPF maps match the desired datapath. Ids (service ids index the Maglev tables,
//! backend ids are what connection tracking remembers) are read back from the pinned maps on
//! start, so a restarted daemon gives every existing backend the id it had and tracked flows keep
//! their backend. Order is make-before-break: new backends and tables are in place before a
//! service points at them, and nothing is removed until nothing points at it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use meshgw_common::maps::{
    v4_mapped, EgressKey, EgressValue, MaglevTable, NodeKey, NodeValue, PolicyKey, PolicyValue,
    ServiceKey, ServiceValue, EGRESS_F_EXCLUDED, POLICY_ALLOW,
};
use meshgw_datapath::{egress_key, identity_key, Datapath, DatapathError};
use tracing::debug;

use super::Changes;
use crate::desired::{BackendSpec, Desired};
use crate::lb::maglev;

/// Remembers which id each backend and frontend has.
#[derive(Debug, Default)]
pub struct BpfReconciler {
    backend_ids: HashMap<BackendSpec, u32>,
    service_ids: HashMap<ServiceKey, u32>,
    /// The identity trie's entries as written: (prefix length, address) -> identity.
    identities: BTreeMap<(u32, [u8; 16]), u32>,
    /// The policy entries as written.
    policy: BTreeSet<PolicyKey>,
    /// The egress trie's entries as written: (prefix length, key) -> value.
    egress: BTreeMap<(u32, EgressKey), EgressValue>,
    /// Each frontend's backends as last written (its Maglev table and entry follow from them):
    /// an unchanged frontend costs neither a table computation nor a map read.
    applied: HashMap<ServiceKey, Vec<(BackendSpec, u32)>>,
}

/// Hands out the smallest ids ≥ 1 not in use (0 means "no backend" in the Maglev tables), in
/// increasing order, over a set that only grows meanwhile: each call starts where the last one
/// stopped, so a pass allocating n ids costs O(n log n) instead of O(n²) (at 50,000 services the
/// quadratic scan took minutes).
#[derive(Default)]
struct FreeIds {
    next: u32,
}

impl FreeIds {
    fn take(&mut self, used: &BTreeSet<u32>) -> u32 {
        let mut want = self.next.max(1);
        for id in used.range(want..) {
            if *id > want {
                break;
            }
            want += 1;
        }
        self.next = want + 1;
        want
    }
}

#[cfg(test)]
fn free_id(used: &BTreeSet<u32>) -> u32 {
    FreeIds::default().take(used)
}

impl BpfReconciler {
    /// The id a frontend was given, once written (telemetry names counters by it).
    pub fn service_id(&self, k: &ServiceKey) -> Option<u32> {
        self.service_ids.get(k).copied()
    }

    /// The id a backend was given, once written.
    pub fn backend_id(&self, b: &crate::desired::BackendSpec) -> Option<u32> {
        self.backend_ids.get(b).copied()
    }

    /// Recovers the ids already in the (possibly pinned) maps.
    pub fn recover(dp: &mut Datapath) -> Result<Self, DatapathError> {
        let mut r = BpfReconciler::default();
        for item in dp.backends()?.iter() {
            let (id, v) = item.map_err(|source| DatapathError::Map {
                name: "MGW_BACKENDS",
                source,
            })?;
            r.backend_ids.insert(BackendSpec::from_value(&v), id);
        }
        for item in dp.services()?.iter() {
            let (k, v) = item.map_err(|source| DatapathError::Map {
                name: "MGW_SERVICES",
                source,
            })?;
            r.service_ids.insert(k, v.service_id);
        }
        let trie = dp.identities()?;
        for item in trie.iter() {
            let (k, id) = item.map_err(|source| DatapathError::Map {
                name: "MGW_IDENTITIES",
                source,
            })?;
            r.identities.insert((k.prefix_len(), k.data()), id);
        }
        r.policy = dp.policy()?.keys().filter_map(Result::ok).collect();
        let trie = dp.egress()?;
        for item in trie.iter() {
            let (k, v) = item.map_err(|source| DatapathError::Map {
                name: "MGW_EGRESS",
                source,
            })?;
            r.egress.insert((k.prefix_len(), k.data()), v);
        }
        debug!(
            backends = r.backend_ids.len(),
            services = r.service_ids.len(),
            "recovered datapath ids"
        );
        Ok(r)
    }

    /// Makes the next [`BpfReconciler::apply`] check every frontend against the maps again (the
    /// periodic drift repair), not only the changed ones.
    pub fn forget_applied(&mut self) {
        self.applied.clear();
    }

    /// Applies `d` to the maps; returns what changed.
    pub fn apply(&mut self, dp: &mut Datapath, d: &Desired) -> Result<Changes, DatapathError> {
        let mut ch = Changes::default();
        let merr = |name: &'static str| move |source| DatapathError::Map { name, source };

        // 1. Backends: allocate ids for new ones and write them.
        let wanted: BTreeSet<BackendSpec> = d
            .frontends
            .values()
            .flat_map(|f| f.backends.iter().map(|(b, _)| *b))
            .collect();
        let mut used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
        let mut free = FreeIds::default();
        // A known id holds its spec's value (written, or recovered from the map itself): read
        // back only on a repair pass.
        let verify = self.applied.is_empty();
        {
            let mut backends = dp.backends()?;
            for spec in &wanted {
                let (id, new) = match self.backend_ids.get(spec) {
                    Some(id) => (*id, false),
                    None => {
                        let id = free.take(&used);
                        used.insert(id);
                        self.backend_ids.insert(*spec, id);
                        (id, true)
                    }
                };
                if !new && !verify {
                    continue;
                }
                let v = spec.value();
                if new || backends.get(&id, 0).ok() != Some(v) {
                    backends.insert(id, v, 0).map_err(merr("MGW_BACKENDS"))?;
                    ch.written += 1;
                }
            }
        }

        // 2. Maglev tables and service entries.
        let mut svc_used: BTreeSet<u32> = self.service_ids.values().copied().collect();
        let mut free = FreeIds::default();
        for (key, fe) in &d.frontends {
            let id = match self.service_ids.get(key) {
                Some(id) => *id,
                None => {
                    let id = free.take(&svc_used);
                    svc_used.insert(id);
                    self.service_ids.insert(*key, id);
                    id
                }
            };
            if self.applied.get(key) == Some(&fe.backends) {
                continue;
            }
            let names: Vec<(String, u32)> = fe
                .backends
                .iter()
                .map(|(b, w)| (b.maglev_name(), *w))
                .collect();
            let mut table = MaglevTable::filled(0);
            if let Some(slots) = maglev::table(&names) {
                for (slot, idx) in table.slots.iter_mut().zip(slots) {
                    *slot = self
                        .backend_ids
                        .get(&fe.backends[idx].0)
                        .copied()
                        .unwrap_or(0);
                }
            }
            {
                let mut maglev = dp.maglev()?;
                let same = maglev.get(&id, 0).is_ok_and(|t| t.slots == table.slots);
                if !same {
                    maglev.insert(id, table, 0).map_err(merr("MGW_MAGLEV"))?;
                    ch.written += 1;
                }
            }
            let v = ServiceValue {
                service_id: id,
                backend_count: fe.backends.len() as u32,
                ..Default::default()
            };
            let mut services = dp.services()?;
            if services.get(key, 0).ok() != Some(v) {
                services.insert(*key, v, 0).map_err(merr("MGW_SERVICES"))?;
                ch.written += 1;
            }
            self.applied.insert(*key, fe.backends.clone());
        }

        // 3. Frontends no longer wanted, then their tables.
        let stale: Vec<(ServiceKey, u32)> = self
            .service_ids
            .iter()
            .filter(|(k, _)| !d.frontends.contains_key(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (key, id) in stale {
            if dp.services()?.remove(&key).is_ok() {
                ch.removed += 1;
            }
            let _ = dp.maglev()?.remove(&id);
            // The id may be reused: its traffic counters must start again from zero.
            let _ = dp.forget_service_traffic(id);
            self.service_ids.remove(&key);
            self.applied.remove(&key);
        }

        // 4. Backends nothing points at. Tracked flows that used them move on their next packet.
        let stale: Vec<(BackendSpec, u32)> = self
            .backend_ids
            .iter()
            .filter(|(b, _)| !wanted.contains(b))
            .map(|(b, id)| (*b, *id))
            .collect();
        for (spec, id) in stale {
            if dp.backends()?.remove(&id).is_ok() {
                ch.removed += 1;
            }
            // After the removal: nothing counts on the id any more, and its traffic moves to
            // its node's total whole.
            let _ = dp.forget_backend_traffic(id, spec.node_ip.octets());
            self.backend_ids.remove(&spec);
        }

        // 5. Source identities and policy entries, against what was written (recovered from
        // the maps on start): new ones first, stale ones after, so a changed policy never has a
        // moment with neither the old nor the new allow entry.
        let want: BTreeMap<(u32, [u8; 16]), u32> = d
            .identities
            .iter()
            .map(|(net, id)| {
                let k = identity_key(*net);
                ((k.prefix_len(), k.data()), *id)
            })
            .collect();
        if want != self.identities {
            let mut trie = dp.identities()?;
            for (&(plen, data), &id) in &want {
                if self.identities.get(&(plen, data)) != Some(&id) {
                    trie.insert(&Key::new(plen, data), id, 0)
                        .map_err(merr("MGW_IDENTITIES"))?;
                    ch.written += 1;
                }
            }
            for &(plen, data) in self.identities.keys() {
                if !want.contains_key(&(plen, data)) {
                    let _ = trie.remove(&Key::new(plen, data));
                    ch.removed += 1;
                }
            }
            self.identities = want;
        }
        if d.policy != self.policy {
            let mut pol = dp.policy()?;
            let allow = PolicyValue {
                verdict: POLICY_ALLOW,
            };
            for k in d.policy.difference(&self.policy) {
                pol.insert(*k, allow, 0).map_err(merr("MGW_POLICY"))?;
                ch.written += 1;
            }
            for k in self.policy.difference(&d.policy) {
                let _ = pol.remove(k);
                ch.removed += 1;
            }
            self.policy = d.policy.clone();
        }

        // 6. Egress rules, the same way.
        let want: BTreeMap<(u32, EgressKey), EgressValue> = d
            .egress
            .iter()
            .map(|((ep, net), e)| {
                let k = egress_key(*ep, *net);
                let v = EgressValue {
                    egress_ip: v4_mapped(e.egress_ip.octets()),
                    flags: if e.excluded { EGRESS_F_EXCLUDED } else { 0 },
                    rule: e.rule,
                };
                ((k.prefix_len(), k.data()), v)
            })
            .collect();
        if want != self.egress {
            let mut trie = dp.egress()?;
            for (&(plen, data), v) in &want {
                if self.egress.get(&(plen, data)) != Some(v) {
                    trie.insert(&Key::new(plen, data), *v, 0)
                        .map_err(merr("MGW_EGRESS"))?;
                    ch.written += 1;
                }
            }
            for &(plen, data) in self.egress.keys() {
                if !want.contains_key(&(plen, data)) {
                    let _ = trie.remove(&Key::new(plen, data));
                    ch.removed += 1;
                }
            }
            self.egress = want;
        }

        // 7. Nodes.
        let mut nodes = dp.nodes()?;
        let existing: BTreeMap<NodeKey, NodeValue> = nodes.iter().filter_map(Result::ok).collect();
        for ip in &d.nodes {
            let k = NodeKey { ip: ip.octets() };
            if !existing.contains_key(&k) {
                nodes
                    .insert(k, NodeValue::default(), 0)
                    .map_err(merr("MGW_NODES"))?;
                ch.written += 1;
            }
        }
        for k in existing.keys() {
            if !d.nodes.contains(&Ipv4Addr::from(k.ip)) {
                let _ = nodes.remove(k);
                ch.removed += 1;
            }
        }
        Ok(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::free_id;
    use std::collections::BTreeSet;

    #[test]
    fn successive_ids_fill_holes_in_order() {
        let mut used: BTreeSet<u32> = [1, 2, 4, 7].into_iter().collect();
        let mut free = super::FreeIds::default();
        let mut got = Vec::new();
        for _ in 0..4 {
            let id = free.take(&used);
            used.insert(id);
            got.push(id);
        }
        assert_eq!(got, [3, 5, 6, 8]);
    }

    #[test]
    fn free_id_fills_holes_and_never_returns_zero() {
        assert_eq!(free_id(&BTreeSet::new()), 1);
        assert_eq!(free_id(&[1, 2, 4].into_iter().collect()), 3);
        assert_eq!(free_id(&[2, 3].into_iter().collect()), 1);
        assert_eq!(free_id(&[1, 2, 3].into_iter().collect()), 4);
    }
}
