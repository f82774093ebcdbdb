//! Typed access to the maps, and the layout table used to check pinned maps on reuse.

use std::mem::size_of;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::Pod;
use meshgw_common::maps::{
    flow_cache_slot_of, names, BackendValue, ClientHop, CtEntry, CtKey, EgressKey, EgressValue,
    FlowCacheEntry, GatewayConfig, MaglevTable, NextHop, NodeKey, NodeValue, PolicyKey,
    PolicyValue, ServiceKey, ServiceValue, SnatEntry, BACKEND_SLOTS, CLIENT_HOP_SLOTS, CT_MAX,
    DEV_LEGACY, DEV_MESH, FLOW_CACHE_SLOTS, MAX_EGRESS, MAX_IDENTITY_PREFIXES, MAX_MAGLEV,
    MAX_NODES, MAX_POLICY, MAX_SERVICES, NEXTHOP_SLOTS, SNAT_MAX,
};
use meshgw_common::stats::{Counter, COUNTER_SLOTS};
use meshgw_common::telemetry::{
    names as tnames, EventsConfig, Traffic, BACKEND_TRAFFIC_SLOTS, MAX_NODE_STATS,
};

use crate::error::DatapathError;
use crate::loader::Datapath;

/// Key size, value size (None: not checked) and capacity of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes, where this release fixes it.
    pub value_size: Option<u32>,
    /// Capacity.
    pub max_entries: u32,
}

impl MapLayout {
    /// This release's layout of the map called `name`.
    pub fn of(name: &str) -> Option<MapLayout> {
        let l = |k: usize, v: Option<usize>, m: u32| MapLayout {
            key_size: k as u32,
            value_size: v.map(|v| v as u32),
            max_entries: m,
        };
        Some(match name {
            names::CONFIG => l(4, Some(size_of::<GatewayConfig>()), 1),
            names::SERVICES => l(
                size_of::<ServiceKey>(),
                Some(size_of::<ServiceValue>()),
                MAX_SERVICES,
            ),
            names::MAGLEV => l(4, Some(size_of::<MaglevTable>()), MAX_MAGLEV),
            names::BACKENDS => l(4, Some(size_of::<BackendValue>()), BACKEND_SLOTS),
            names::NODES => l(
                size_of::<NodeKey>(),
                Some(size_of::<NodeValue>()),
                MAX_NODES,
            ),
            names::CT => l(size_of::<CtKey>(), Some(size_of::<CtEntry>()), CT_MAX),
            names::DEVMAP => l(4, None, 2),
            names::STATS => l(4, Some(8), COUNTER_SLOTS),
            names::IDENTITIES => l(20, Some(4), MAX_IDENTITY_PREFIXES),
            names::POLICY => l(
                size_of::<PolicyKey>(),
                Some(size_of::<PolicyValue>()),
                MAX_POLICY,
            ),
            names::EGRESS => l(
                4 + size_of::<EgressKey>(),
                Some(size_of::<EgressValue>()),
                MAX_EGRESS,
            ),
            names::SNAT => l(size_of::<CtKey>(), Some(size_of::<SnatEntry>()), SNAT_MAX),
            tnames::EVENTS_CONFIG => l(4, Some(size_of::<EventsConfig>()), 1),
            tnames::SVC_STATS => l(4, Some(size_of::<Traffic>()), MAX_SERVICES),
            tnames::BACKEND_STATS => l(4, Some(size_of::<Traffic>()), BACKEND_TRAFFIC_SLOTS),
            tnames::NODE_STATS => l(4, Some(size_of::<Traffic>()), MAX_NODE_STATS),
            tnames::VIP_ICMP => l(16, Some(size_of::<Traffic>()), MAX_SERVICES),
            _ => return None,
        })
    }
}

/// `MGW_BACKENDS`: an array indexed by backend id whose empty slots are all zero (family 0),
/// with the operations of a map from id to backend. The datapath reads a slot without a lock
/// while user space writes it, so a slot changes between empty and full in two writes that
/// leave every intermediate state either the old or the new backend, never a mix of both.
pub struct Backends<T> {
    slots: Array<T, BackendValue>,
}

impl<T: std::borrow::Borrow<MapData>> Backends<T> {
    /// Wraps the (opened or pinned) array.
    pub fn new(slots: Array<T, BackendValue>) -> Self {
        Self { slots }
    }

    /// Backend `id`; [`MapError::KeyNotFound`] for an empty slot.
    pub fn get(&self, id: &u32, flags: u64) -> Result<BackendValue, MapError> {
        let v = self.slots.get(id, flags)?;
        if v.family == 0 {
            return Err(MapError::KeyNotFound);
        }
        Ok(v)
    }

    /// Every backend with its id, in id order (one read per slot: for recovery and tests, not
    /// for a hot loop).
    pub fn iter(&self) -> impl Iterator<Item = Result<(u32, BackendValue), MapError>> + '_ {
        (1..self.slots.len()).filter_map(|id| match self.get(&id, 0) {
            Ok(v) => Some(Ok((id, v))),
            Err(MapError::KeyNotFound) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// The ids of every backend.
    pub fn keys(&self) -> impl Iterator<Item = Result<u32, MapError>> + '_ {
        self.iter().map(|r| r.map(|(id, _)| id))
    }
}

impl<T: std::borrow::BorrowMut<MapData>> Backends<T> {
    /// Writes backend `id` (`v.family` must not be 0). Into an empty slot in two writes, the
    /// family last, so that no packet sees the backend half written; a full slot is overwritten
    /// in one (it never reads as empty meanwhile, which would move the flows tracked on it).
    pub fn insert(
        &mut self,
        id: u32,
        v: impl std::borrow::Borrow<BackendValue>,
        flags: u64,
    ) -> Result<(), MapError> {
        let v = *v.borrow();
        if self.slots.get(&id, 0)?.family == 0 {
            let hidden = BackendValue { family: 0, ..v };
            self.slots.set(id, hidden, flags)?;
        }
        self.slots.set(id, v, flags)
    }

    /// Empties slot `id`: the family first (from then on the datapath sees no backend and moves
    /// the flows tracked on it), then the rest. [`MapError::KeyNotFound`] if it was empty.
    pub fn remove(&mut self, id: &u32) -> Result<(), MapError> {
        let v = self.get(id, 0)?;
        self.slots.set(*id, BackendValue { family: 0, ..v }, 0)?;
        self.slots.set(*id, BackendValue::default(), 0)
    }
}

/// The identity trie's key for a prefix.
pub fn identity_key(net: ipnet::IpNet) -> Key<[u8; 16]> {
    match net {
        ipnet::IpNet::V4(n) => Key::new(
            u32::from(n.prefix_len()) + 96,
            meshgw_common::maps::v4_mapped(n.network().octets()),
        ),
        ipnet::IpNet::V6(n) => Key::new(u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// The egress trie's key: endpoint `src` exactly, destination prefix `dst` (same family; IPv4
/// addresses IPv4-mapped).
pub fn egress_key(src: std::net::IpAddr, dst: ipnet::IpNet) -> Key<EgressKey> {
    let mapped = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(v4) => meshgw_common::maps::v4_mapped(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let dst_bits = match dst {
        ipnet::IpNet::V4(n) => u32::from(n.prefix_len()) + 96,
        ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    Key::new(
        128 + dst_bits,
        EgressKey {
            src: mapped(src),
            dst: mapped(dst.network()),
        },
    )
}

impl Datapath {
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }

    /// A typed hash map handle.
    pub fn hash_map<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DatapathError> {
        HashMap::try_from(self.map_mut(name)?).map_err(|source| DatapathError::Map { name, source })
    }

    /// A read-only typed hash map handle.
    pub fn hash_map_ref<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<&MapData, K, V>, DatapathError> {
        HashMap::try_from(self.map(name)?).map_err(|source| DatapathError::Map { name, source })
    }

    /// The gateway-wide settings.
    pub fn config(&self) -> Result<GatewayConfig, DatapathError> {
        let name = names::CONFIG;
        let a: Array<&MapData, GatewayConfig> = Array::try_from(self.map(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        a.get(&0, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Writes the gateway-wide settings.
    pub fn set_config(&mut self, cfg: &GatewayConfig) -> Result<(), DatapathError> {
        let name = names::CONFIG;
        let mut a: Array<&mut MapData, GatewayConfig> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        a.set(0, cfg, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Points the devmap's slots at the mesh and legacy interfaces.
    pub fn set_devices(
        &mut self,
        mesh_ifindex: u32,
        legacy_ifindex: u32,
    ) -> Result<(), DatapathError> {
        let name = names::DEVMAP;
        let mut m = aya::maps::DevMap::try_from(self.map_mut(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        let xerr = |e: aya::maps::xdp::XdpMapError| match e {
            aya::maps::xdp::XdpMapError::MapError(source) => DatapathError::Map { name, source },
            other => DatapathError::Devmap(other.to_string()),
        };
        m.set(DEV_MESH, mesh_ifindex, None, 0).map_err(xerr)?;
        m.set(DEV_LEGACY, legacy_ifindex, None, 0).map_err(xerr)
    }

    /// Services map.
    pub fn services(
        &mut self,
    ) -> Result<HashMap<&mut MapData, ServiceKey, ServiceValue>, DatapathError> {
        self.hash_map(names::SERVICES)
    }

    /// Maglev tables.
    pub fn maglev(&mut self) -> Result<HashMap<&mut MapData, u32, MaglevTable>, DatapathError> {
        self.hash_map(names::MAGLEV)
    }

    /// Backends map.
    pub fn backends(&mut self) -> Result<Backends<&mut MapData>, DatapathError> {
        let name = names::BACKENDS;
        Array::try_from(self.map_mut(name)?)
            .map(Backends::new)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Known nodes.
    pub fn nodes(&mut self) -> Result<HashMap<&mut MapData, NodeKey, NodeValue>, DatapathError> {
        self.hash_map(names::NODES)
    }

    /// Connection tracking.
    pub fn ct(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtEntry>, DatapathError> {
        self.hash_map(names::CT)
    }

    /// Policy entries.
    pub fn policy(
        &mut self,
    ) -> Result<HashMap<&mut MapData, PolicyKey, PolicyValue>, DatapathError> {
        self.hash_map(names::POLICY)
    }

    /// Source identities by prefix (keys: 16-byte addresses, IPv4-mapped with the prefix length
    /// plus 96; see [`identity_key`]).
    pub fn identities(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], u32>, DatapathError> {
        let name = names::IDENTITIES;
        LpmTrie::try_from(self.map_mut(name)?).map_err(|source| DatapathError::Map { name, source })
    }

    /// Egress rules by (endpoint, destination prefix); see [`egress_key`].
    pub fn egress(
        &mut self,
    ) -> Result<LpmTrie<&mut MapData, EgressKey, EgressValue>, DatapathError> {
        let name = names::EGRESS;
        LpmTrie::try_from(self.map_mut(name)?).map_err(|source| DatapathError::Map { name, source })
    }

    /// Source-NAT entries of egress flows.
    pub fn snat(&mut self) -> Result<HashMap<&mut MapData, CtKey, SnatEntry>, DatapathError> {
        self.hash_map(names::SNAT)
    }

    /// Packets and bytes of the forward flow `key` that the flow cache sent and has not added to
    /// its tracking entry yet, summed over CPUs: what a reader adds to the entry's counters for
    /// the flow's count (an idle flow's last second stays in the cache until its slot is
    /// reused). One read: the flow's slot on every CPU.
    pub fn flow_cache_pending(&self, key: &CtKey) -> Result<(u64, u64), DatapathError> {
        Ok(self
            .flow_cache_slot(flow_cache_slot_of(key))?
            .iter()
            .filter(|e| e.holds(key))
            .fold((0, 0), |(p, b), e| (p + e.packets, b + e.bytes)))
    }

    /// Slot `slot` of the flow cache, on every CPU.
    fn flow_cache_slot(
        &self,
        slot: u32,
    ) -> Result<aya::maps::PerCpuValues<FlowCacheEntry>, DatapathError> {
        let name = names::FLOW_CACHE;
        let a: PerCpuArray<&MapData, FlowCacheEntry> = PerCpuArray::try_from(self.map(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        a.get(&slot, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// [`Datapath::flow_cache_pending`] of every flow the cache holds something for, by forward
    /// tracking key: one read per slot ([`FLOW_CACHE_SLOTS`] in all), which beats one read per
    /// flow once a reader follows more flows than there are slots.
    pub fn flow_cache_pending_all(
        &self,
    ) -> Result<std::collections::HashMap<CtKey, (u64, u64)>, DatapathError> {
        let mut out = std::collections::HashMap::new();
        for slot in 0..FLOW_CACHE_SLOTS {
            for e in self.flow_cache_slot(slot)?.iter() {
                if e.family != 0 && e.packets != 0 {
                    let t: &mut (u64, u64) = out.entry(e.forward_key()).or_default();
                    t.0 += e.packets;
                    t.1 += e.bytes;
                }
            }
        }
        Ok(out)
    }

    /// The flow cache's epoch (see [`Datapath::invalidate_flow_cache`]), for diagnostics and
    /// tests.
    pub fn flow_cache_epoch(&self) -> Result<u32, DatapathError> {
        let name = names::FLOW_EPOCH;
        let a: Array<&MapData, u32> = Array::try_from(self.map(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        a.get(&0, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Empties the flow cache on every CPU at once: one write, since an entry only serves
    /// packets while it carries the current epoch. For a change that must stop cached flows at
    /// once rather than within the entries' one-second life: a service removed.
    pub fn invalidate_flow_cache(&mut self) -> Result<(), DatapathError> {
        let epoch = self.flow_cache_epoch()?;
        let name = names::FLOW_EPOCH;
        let mut a: Array<&mut MapData, u32> = Array::try_from(self.map_mut(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        a.set(0, epoch.wrapping_add(1), 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Empties the next-hop caches (mesh nodes and legacy clients): the next packet to each asks
    /// the FIB again. For a neighbour or route change that must apply at once rather than within
    /// the caches' age bound.
    pub fn flush_nexthops(&mut self) -> Result<(), DatapathError> {
        self.clear_per_cpu_array::<NextHop>(names::NEXTHOP, NEXTHOP_SLOTS)?;
        self.clear_per_cpu_array::<ClientHop>(names::CLIENT_HOPS, CLIENT_HOP_SLOTS)
    }

    /// The nodes the next-hop cache holds an entry for, on any CPU, fresh or not (one read per
    /// slot: for diagnostics and tests).
    pub fn cached_next_hop_nodes(
        &self,
    ) -> Result<std::collections::BTreeSet<[u8; 4]>, DatapathError> {
        let name = names::NEXTHOP;
        let a: PerCpuArray<&MapData, NextHop> = PerCpuArray::try_from(self.map(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        let mut nodes = std::collections::BTreeSet::new();
        for slot in 0..NEXTHOP_SLOTS {
            let per_cpu = a
                .get(&slot, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
            nodes.extend(
                per_cpu
                    .iter()
                    .map(|nh| nh.node_ip)
                    .filter(|ip| *ip != [0; 4]),
            );
        }
        Ok(nodes)
    }

    /// Writes the default (all zero: an empty cache slot) into every slot of the per-CPU array
    /// `name`, on every CPU.
    fn clear_per_cpu_array<T: Pod + Default>(
        &mut self,
        name: &'static str,
        slots: u32,
    ) -> Result<(), DatapathError> {
        let mut a: PerCpuArray<&mut MapData, T> = PerCpuArray::try_from(self.map_mut(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        for slot in 0..slots {
            let empty = Self::on_one_cpu(name, T::default())?;
            a.set(slot, empty, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
        }
        Ok(())
    }

    /// The counters, summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        let name = names::STATS;
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(name)?)
            .map_err(|source| DatapathError::Map { name, source })?;
        let mut out = Vec::with_capacity(Counter::ALL.len());
        for c in Counter::ALL {
            let per_cpu = a
                .get(&(c as u32), 0)
                .map_err(|source| DatapathError::Map { name, source })?;
            out.push((c, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64, DatapathError> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| v))
    }
}
