//! Makes the BPF maps match the desired datapath. Ids (service ids index the Maglev tables,
//! backend ids are what connection tracking remembers) are read back from the pinned maps on
//! start, so a restarted daemon gives every existing backend the id it had and tracked flows keep
//! their backend. Order is make-before-break: new backends and tables are in place before a
//! service points at them, and nothing is removed until nothing points at it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use aya::maps::lpm_trie::Key;
use meshgw_common::maps::{
    v4_mapped, EgressKey, EgressValue, MaglevTable, NodeKey, NodeValue, PolicyKey, PolicyValue,
    ServiceKey, ServiceValue, EGRESS_F_EXCLUDED, MAX_BACKENDS, MAX_SERVICES, POLICY_ALLOW,
};
use meshgw_datapath::{egress_key, identity_key, Datapath, DatapathError};
use tracing::debug;

use super::Changes;
use crate::desired::{BackendSpec, Desired};
use crate::lb::maglev;

/// Remembers which id each backend and frontend has.
#[derive(Debug, Default)]
pub struct BpfReconciler {
    /// Each backend written: its id, and how many applied frontends point at it (a backend goes
    /// when its count does). One map for both: at 150,000 backends a second one keyed by the
    /// same specs was 11 MB.
    backend_ids: HashMap<BackendSpec, BackendSlot>,
    service_ids: HashMap<ServiceKey, u32>,
    /// The ids of `backend_ids` and `service_ids`, kept beside them: a new id is looked for in
    /// them, and collecting 150,000 ids into a set for each change held a change for 20 ms.
    backend_used: BTreeSet<u32>,
    service_used: BTreeSet<u32>,
    /// The identity trie's entries as written: (prefix length, address) -> identity.
    identities: BTreeMap<(u32, [u8; 16]), u32>,
    /// The policy entries as written.
    policy: BTreeSet<PolicyKey>,
    /// The egress trie's entries as written: (prefix length, key) -> value.
    egress: BTreeMap<(u32, EgressKey), EgressValue>,
    /// Each frontend's backends as last written (its Maglev table and entry follow from them):
    /// an unchanged frontend costs neither a table computation nor a map read.
    applied: HashMap<ServiceKey, Arc<[(BackendSpec, u32)]>>,
    /// Where the next [`BpfReconciler::verify_slice`] starts.
    verify_cursor: Option<ServiceKey>,
    /// Where the next backend and frontend ids are looked for: ids go round their whole range
    /// before a freed one is handed out again, so a tracked flow or a counter that still names
    /// a removed backend's id does not land on the next new backend at once.
    backend_cursor: FreeIds,
    service_cursor: FreeIds,
}

/// A written backend's id and reference count.
#[derive(Clone, Copy, Debug)]
struct BackendSlot {
    id: u32,
    refs: u32,
}

/// Hands out ids 1..=`max` not in use (0 means "no backend" in the Maglev tables), in
/// increasing order from a cursor that wraps back to 1 past `max`; each call starts where the
/// last one stopped, so a pass allocating n ids costs O(n log n) instead of O(n²) (at 50,000
/// services the quadratic scan took minutes). With every id of the range in use, the id past
/// the range is returned and the map insert with it fails (the maps hold `max` entries).
#[derive(Clone, Copy, Debug, Default)]
struct FreeIds {
    next: u32,
}

impl FreeIds {
    fn take(&mut self, used: &BTreeSet<u32>, max: u32) -> u32 {
        let scan = |from: u32| {
            let mut want = from;
            for id in used.range(want..) {
                if *id > want {
                    break;
                }
                want += 1;
            }
            want
        };
        let mut want = scan(self.next.max(1));
        if want > max {
            want = scan(1);
        }
        self.next = want + 1;
        want
    }
}

#[cfg(test)]
fn free_id(used: &BTreeSet<u32>) -> u32 {
    FreeIds::default().take(used, MAX_BACKENDS)
}

/// Moves the flow cache's epoch (see `Datapath::invalidate_flow_cache`). A failure is logged and
/// the pass goes on: cached entries then end within their second anyway.
fn invalidate_flow_cache(dp: &mut Datapath) {
    if let Err(e) = dp.invalidate_flow_cache() {
        tracing::warn!(error = %e, "flow cache not invalidated; cached flows end within a second");
    }
}

/// Removes backend `id` from the map (1 if it was there) and then its traffic counters: after the
/// removal nothing counts on the id any more, so its traffic moves to its node's total whole.
fn remove_backend(dp: &mut Datapath, id: u32, spec: &BackendSpec) -> Result<usize, DatapathError> {
    let removed = usize::from(dp.backends()?.remove(&id).is_ok());
    let _ = dp.forget_backend_traffic(id, spec.node_ip.octets());
    Ok(removed)
}

impl BpfReconciler {
    /// The id a frontend was given, once written (telemetry names counters by it).
    pub fn service_id(&self, k: &ServiceKey) -> Option<u32> {
        self.service_ids.get(k).copied()
    }

    /// The id a backend was given, once written.
    pub fn backend_id(&self, b: &crate::desired::BackendSpec) -> Option<u32> {
        self.backend_ids.get(b).map(|s| s.id)
    }

    /// Recovers the ids already in the (possibly pinned) maps.
    pub fn recover(dp: &mut Datapath) -> Result<Self, DatapathError> {
        let mut r = BpfReconciler::default();
        for item in dp.backends()?.iter() {
            let (id, v) = item.map_err(|source| DatapathError::Map {
                name: "MGW_BACKENDS",
                source,
            })?;
            r.backend_ids
                .insert(BackendSpec::from_value(&v), BackendSlot { id, refs: 0 });
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
        r.backend_used = r.backend_ids.values().map(|s| s.id).collect();
        r.service_used = r.service_ids.values().copied().collect();
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

    /// Applies `d` to the maps; returns what changed. Every frontend is looked at (an
    /// unchanged one costs a comparison, or, after [`BpfReconciler::forget_applied`], a read
    /// back of its entries); backends nothing points at any more go at the end.
    pub fn apply(&mut self, dp: &mut Datapath, d: &Desired) -> Result<Changes, DatapathError> {
        // A known id holds its spec's value (written, or recovered from the map itself): read
        // back only on a repair pass.
        let verify = self.applied.is_empty();
        // Wanted frontends first, then the ones no longer wanted: make-before-break.
        let mut keys: Vec<ServiceKey> = d.frontends.keys().copied().collect();
        keys.extend(
            self.service_ids
                .keys()
                .filter(|k| !d.frontends.contains_key(k))
                .copied(),
        );
        let mut ch = self.apply_frontends_inner(dp, d, &keys, verify)?;
        // The references are recounted from what is applied now (after a repair forgot what was
        // applied, the per-frontend bookkeeping could not know what each frontend had), and
        // backends nothing points at go, recovered ones included.
        for slot in self.backend_ids.values_mut() {
            slot.refs = 0;
        }
        for backends in self.applied.values() {
            for (b, _) in backends.iter() {
                if let Some(slot) = self.backend_ids.get_mut(b) {
                    slot.refs += 1;
                }
            }
        }
        let stale: Vec<(BackendSpec, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, slot)| slot.refs == 0)
            .map(|(b, slot)| (*b, slot.id))
            .collect();
        for (spec, id) in stale {
            self.backend_ids.remove(&spec);
            self.backend_used.remove(&id);
            ch.removed += remove_backend(dp, id, &spec)?;
        }
        ch += self.apply_rest(dp, d)?;
        Ok(ch)
    }

    /// Applies only the frontends `keys` of `d` (present: written if changed; absent: removed),
    /// and removes the backends that no frontend points at any more. What an event changed
    /// costs map writes for its own frontends, not a pass over every frontend.
    pub fn apply_frontends(
        &mut self,
        dp: &mut Datapath,
        d: &Desired,
        keys: &[ServiceKey],
    ) -> Result<Changes, DatapathError> {
        self.apply_frontends_inner(dp, d, keys, false)
    }

    /// The drift repair in slices: re-reads the entries of at most `n` frontends (the next ones
    /// after the previous slice, wrapping around) and rewrites what differs. A change never
    /// waits for a whole-map verification; every frontend is still verified once per round.
    pub fn verify_slice(
        &mut self,
        dp: &mut Datapath,
        d: &Desired,
        n: usize,
    ) -> Result<Changes, DatapathError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = match self.verify_cursor {
            Some(k) => (Excluded(k), Unbounded),
            None => (Unbounded, Unbounded),
        };
        let keys: Vec<ServiceKey> = d.frontends.range(start).take(n).map(|(k, _)| *k).collect();
        self.verify_cursor = if keys.len() < n {
            None
        } else {
            keys.last().copied()
        };
        self.apply_frontends_inner(dp, d, &keys, true)
    }

    fn apply_frontends_inner(
        &mut self,
        dp: &mut Datapath,
        d: &Desired,
        keys: &[ServiceKey],
        verify: bool,
    ) -> Result<Changes, DatapathError> {
        let mut ch = Changes::default();
        let merr = |name: &'static str| move |source| DatapathError::Map { name, source };
        let mut free = self.backend_cursor;
        let mut svc_free = self.service_cursor;
        // Backends whose last reference went in this call.
        let mut released: Vec<BackendSpec> = Vec::new();
        for key in keys {
            let Some(fe) = d.frontends.get(key) else {
                // No longer wanted: the entry, then its table.
                if let Some(id) = self.service_ids.remove(key) {
                    self.service_used.remove(&id);
                    if dp.services()?.remove(key).is_ok() {
                        ch.removed += 1;
                        // Cached flows of the VIP would go on for up to a second, counted on
                        // an id about to be freed.
                        invalidate_flow_cache(dp);
                    }
                    let _ = dp.maglev()?.remove(&id);
                    // The id may be reused: its traffic counters must start again from zero.
                    let _ = dp.forget_service_traffic(id);
                }
                if let Some(old) = self.applied.remove(key) {
                    self.unref(&old, &mut released);
                }
                continue;
            };
            // 1. Backends: ids for new ones, written before any table points at them.
            {
                let mut backends = dp.backends()?;
                for (spec, _) in fe.backends.iter() {
                    let (id, new) = match self.backend_ids.get(spec) {
                        Some(slot) => (slot.id, false),
                        None => {
                            let id = free.take(&self.backend_used, MAX_BACKENDS);
                            self.backend_used.insert(id);
                            self.backend_ids.insert(*spec, BackendSlot { id, refs: 0 });
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
            // 2. Its Maglev table and service entry.
            let id = match self.service_ids.get(key) {
                Some(id) => *id,
                None => {
                    let id = svc_free.take(&self.service_used, MAX_SERVICES - 1);
                    self.service_used.insert(id);
                    self.service_ids.insert(*key, id);
                    id
                }
            };
            let old = self.applied.get(key);
            if !verify && old == Some(&fe.backends) {
                // Equal but from a new pass: hold the desired state's list, not a second copy.
                self.share_applied(key, &fe.backends);
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
                        .map_or(0, |s| s.id);
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
            let was = services.get(key, 0).ok();
            if was != Some(v) {
                services.insert(*key, v, 0).map_err(merr("MGW_SERVICES"))?;
                ch.written += 1;
                // A service left without backends drops its flows' packets at once; cached
                // flows on a backend another service still uses would go on for up to a second.
                if v.backend_count == 0 && was.is_some_and(|w| w.backend_count > 0) {
                    invalidate_flow_cache(dp);
                }
            }
            if old != Some(&fe.backends) {
                for (b, _) in fe.backends.iter() {
                    if let Some(slot) = self.backend_ids.get_mut(b) {
                        slot.refs += 1;
                    }
                }
                if let Some(old) = self.applied.insert(*key, fe.backends.clone()) {
                    self.unref(&old, &mut released);
                }
            } else {
                self.share_applied(key, &fe.backends);
            }
        }
        // 3. Backends nothing points at any more. Tracked flows that used them move on their
        // next packet.
        for spec in released {
            if self.backend_ids.get(&spec).is_none_or(|s| s.refs > 0) {
                continue;
            }
            if let Some(slot) = self.backend_ids.remove(&spec) {
                self.backend_used.remove(&slot.id);
                ch.removed += remove_backend(dp, slot.id, &spec)?;
            }
        }
        self.backend_cursor = free;
        self.service_cursor = svc_free;
        Ok(ch)
    }

    /// Makes the record of what `key` has applied the desired state's own list (equal to it):
    /// every full pass builds new lists, and keeping the old ones would hold each twice.
    fn share_applied(&mut self, key: &ServiceKey, backends: &Arc<[(BackendSpec, u32)]>) {
        if let Some(a) = self.applied.get_mut(key) {
            if !Arc::ptr_eq(a, backends) {
                *a = backends.clone();
            }
        }
    }

    /// Drops one reference to each backend of `old`; those left with none are `released`.
    fn unref(&mut self, old: &[(BackendSpec, u32)], released: &mut Vec<BackendSpec>) {
        for (b, _) in old {
            if let Some(slot) = self.backend_ids.get_mut(b) {
                if slot.refs > 0 {
                    slot.refs -= 1;
                    if slot.refs == 0 {
                        released.push(*b);
                    }
                }
            }
        }
    }

    /// Identities, policy, egress rules and nodes (a full pass only: events about services
    /// never change them).
    fn apply_rest(&mut self, dp: &mut Datapath, d: &Desired) -> Result<Changes, DatapathError> {
        let mut ch = Changes::default();
        let merr = |name: &'static str| move |source| DatapathError::Map { name, source };
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

    /// The incremental paths against real (private, unpinned) maps. Needs root to load the
    /// programs; fails, never skips, without it.
    mod maps {
        use std::collections::BTreeSet;
        use std::net::{IpAddr, Ipv4Addr};

        use aya::maps::MapError;
        use meshgw_common::maps::{v4_mapped, ServiceKey, FAMILY_V4};
        use meshgw_datapath::Datapath;

        use super::super::BpfReconciler;
        use crate::catalog::ServiceName;
        use crate::desired::{BackendSpec, Desired, Frontend};

        fn key(i: u8) -> ServiceKey {
            ServiceKey {
                addr: v4_mapped([10, 200, 0, i]),
                port: 80u16.to_be(),
                proto: 6,
                family: FAMILY_V4,
            }
        }

        fn backend(i: u8) -> BackendSpec {
            BackendSpec {
                addr: IpAddr::V4(Ipv4Addr::new(10, 244, 1, i)),
                port: 8080,
                node_ip: Ipv4Addr::new(172, 18, 0, 11),
                node_mac: [2, 0xaa, 0, 0, 0, 1],
                identity: 0,
            }
        }

        fn frontend(name: &str, backends: &[u8]) -> Frontend {
            Frontend {
                service: ServiceName {
                    namespace: "default".into(),
                    name: name.into(),
                },
                port_name: "http".into(),
                backends: backends.iter().map(|b| (backend(*b), 1)).collect(),
            }
        }

        /// The backend addresses the maps give frontend `k` (service -> Maglev -> backends).
        fn served(dp: &mut Datapath, k: &ServiceKey) -> Option<BTreeSet<[u8; 16]>> {
            let id = dp.services().unwrap().get(k, 0).ok()?.service_id;
            let table = dp.maglev().unwrap().get(&id, 0).ok()?;
            let backends = dp.backends().unwrap();
            let ids: BTreeSet<u32> = table.slots.iter().copied().filter(|s| *s != 0).collect();
            Some(
                ids.iter()
                    .map(|id| backends.get(id, 0).expect("slot names a backend").addr)
                    .collect(),
            )
        }

        fn count_backends(dp: &mut Datapath) -> usize {
            dp.backends()
                .unwrap()
                .keys()
                .collect::<Result<Vec<u32>, MapError>>()
                .unwrap()
                .len()
        }

        #[test]
        fn a_change_touches_only_its_service_and_a_restart_converges() {
            assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (loads BPF maps)");
            let mut dp = Datapath::load_private().expect("loading the datapath");
            let mut d = Desired::default();
            d.frontends.insert(key(1), frontend("a", &[1, 2, 3]));
            d.frontends.insert(key(2), frontend("b", &[3, 4]));
            d.frontends.insert(key(3), frontend("c", &[5]));
            let mut r = BpfReconciler::default();
            r.apply(&mut dp, &d).unwrap();
            assert_eq!(count_backends(&mut dp), 5);
            let b_before = served(&mut dp, &key(2)).unwrap();

            // One backend of a changes (2 -> 6): one backend written, one table, one removed.
            d.frontends.insert(key(1), frontend("a", &[1, 3, 6]));
            let ch = r.apply_frontends(&mut dp, &d, &[key(1)]).unwrap();
            assert_eq!((ch.written, ch.removed), (2, 1), "{ch:?}");
            let a = served(&mut dp, &key(1)).unwrap();
            let want: BTreeSet<[u8; 16]> = [1, 3, 6]
                .iter()
                .map(|i| v4_mapped([10, 244, 1, *i]))
                .collect();
            assert_eq!(a, want);
            assert_eq!(served(&mut dp, &key(2)).unwrap(), b_before, "b untouched");
            assert_eq!(count_backends(&mut dp), 5, "2 went, 6 came");

            // a drops backend 3, which b still uses: it stays.
            d.frontends.insert(key(1), frontend("a", &[1, 6]));
            let ch = r.apply_frontends(&mut dp, &d, &[key(1)]).unwrap();
            assert_eq!(ch.removed, 0, "3 is still b's: {ch:?}");
            assert_eq!(served(&mut dp, &key(2)).unwrap(), b_before);

            // c goes: its entry, its table and its only backend.
            d.frontends.remove(&key(3));
            let ch = r.apply_frontends(&mut dp, &d, &[key(3)]).unwrap();
            assert_eq!(ch.removed, 2, "service entry and backend 5: {ch:?}");
            assert!(served(&mut dp, &key(3)).is_none());
            assert_eq!(count_backends(&mut dp), 4);

            // A restart: ids recovered from the maps, the full pass finds nothing to do.
            let mut r = BpfReconciler::recover(&mut dp).unwrap();
            let ch = r.apply(&mut dp, &d).unwrap();
            assert_eq!((ch.written, ch.removed), (0, 0), "{ch:?}");

            // Drift (an entry deleted behind the daemon's back) is repaired by the slices.
            dp.services().unwrap().remove(&key(2)).unwrap();
            let mut repaired = 0;
            for _ in 0..2 {
                repaired += r.verify_slice(&mut dp, &d, 1).unwrap().written;
            }
            assert_eq!(repaired, 1);
            assert_eq!(served(&mut dp, &key(2)).unwrap(), b_before);
        }

        #[test]
        fn a_service_that_goes_or_loses_its_last_backend_empties_the_flow_cache() {
            assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (loads BPF maps)");
            let mut dp = Datapath::load_private().expect("loading the datapath");
            let mut d = Desired::default();
            d.frontends.insert(key(1), frontend("a", &[1, 2]));
            d.frontends.insert(key(2), frontend("b", &[2]));
            let mut r = BpfReconciler::default();
            r.apply(&mut dp, &d).unwrap();
            let epoch = |dp: &Datapath| dp.flow_cache_epoch().unwrap();
            let start = epoch(&dp);
            // A backend change leaves cached flows alone (they follow their backend's slot).
            d.frontends.insert(key(1), frontend("a", &[1, 3]));
            r.apply_frontends(&mut dp, &d, &[key(1)]).unwrap();
            assert_eq!(epoch(&dp), start);
            // a loses all its backends: its cached flows must stop (a backend slot another
            // service uses would otherwise keep serving them).
            d.frontends.insert(key(1), frontend("a", &[]));
            r.apply_frontends(&mut dp, &d, &[key(1)]).unwrap();
            assert_eq!(epoch(&dp), start + 1, "a has no backend left");
            d.frontends.insert(key(1), frontend("a", &[]));
            r.apply_frontends(&mut dp, &d, &[key(1)]).unwrap();
            assert_eq!(epoch(&dp), start + 1, "still none: nothing new to stop");
            d.frontends.remove(&key(2));
            r.apply_frontends(&mut dp, &d, &[key(2)]).unwrap();
            assert_eq!(epoch(&dp), start + 2, "b removed");
        }

        #[test]
        fn an_equal_desired_state_from_a_new_pass_is_shared_not_copied() {
            assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (loads BPF maps)");
            let mut dp = Datapath::load_private().expect("loading the datapath");
            let mut d = Desired::default();
            d.frontends.insert(key(1), frontend("a", &[1, 2]));
            let mut r = BpfReconciler::default();
            r.apply(&mut dp, &d).unwrap();
            // A new pass builds equal lists of its own: nothing to write, and the record of
            // what was applied now holds the new pass's list (the old one can go).
            let mut again = Desired::default();
            again.frontends.insert(key(1), frontend("a", &[1, 2]));
            for ch in [
                r.apply_frontends(&mut dp, &again, &[key(1)]).unwrap(),
                r.apply(&mut dp, &again).unwrap(),
            ] {
                assert_eq!((ch.written, ch.removed), (0, 0), "{ch:?}");
                assert!(std::sync::Arc::ptr_eq(
                    &r.applied[&key(1)],
                    &again.frontends[&key(1)].backends
                ));
                assert!(!std::sync::Arc::ptr_eq(
                    &r.applied[&key(1)],
                    &d.frontends[&key(1)].backends
                ));
            }
        }
    }

    #[test]
    fn successive_ids_fill_holes_in_order() {
        let mut used: BTreeSet<u32> = [1, 2, 4, 7].into_iter().collect();
        let mut free = super::FreeIds::default();
        let mut got = Vec::new();
        for _ in 0..4 {
            let id = free.take(&used, meshgw_common::maps::MAX_BACKENDS);
            used.insert(id);
            got.push(id);
        }
        assert_eq!(got, [3, 5, 6, 8]);
    }

    #[test]
    fn ids_go_round_their_range_before_a_freed_one_is_reused() {
        let mut free = super::FreeIds::default();
        let mut used: BTreeSet<u32> = BTreeSet::new();
        for want in [1, 2, 3] {
            assert_eq!(free.take(&used, 4), want);
            used.insert(want);
        }
        // 1 is freed: the cursor goes on to 4 first, then wraps and finds 1.
        used.remove(&1);
        assert_eq!(free.take(&used, 4), 4);
        used.insert(4);
        assert_eq!(free.take(&used, 4), 1);
        used.insert(1);
        // Every id of the range in use: the one past it (whose insert the full map refuses).
        assert_eq!(free.take(&used, 4), 5);
    }

    #[test]
    fn free_id_fills_holes_and_never_returns_zero() {
        assert_eq!(free_id(&BTreeSet::new()), 1);
        assert_eq!(free_id(&[1, 2, 4].into_iter().collect()), 3);
        assert_eq!(free_id(&[2, 3].into_iter().collect()), 1);
        assert_eq!(free_id(&[1, 2, 3].into_iter().collect()), 4);
    }
}
