//! Reading the telemetry maps: per-frontend, per-backend and per-node traffic (summed over CPUs),
//! the event settings, and the flow event ring buffer.

use std::collections::BTreeSet;

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use meshgw_common::telemetry::{names, EventsConfig, Traffic};

use crate::error::DatapathError;
use crate::loader::Datapath;

fn sum(values: impl IntoIterator<Item = Traffic>) -> Traffic {
    values.into_iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
    })
}

impl Datapath {
    /// Sets the event settings (sampling rate, which events are sent).
    pub fn set_events_config(&mut self, cfg: &EventsConfig) -> Result<(), DatapathError> {
        let name = names::EVENTS_CONFIG;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut a: Array<&mut MapData, EventsConfig> =
            Array::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        a.set(0, cfg, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Traffic of each frontend in `ids` (client -> VIP direction), summed over CPUs.
    pub fn service_traffic(&self, ids: &[u32]) -> Result<Vec<(u32, Traffic)>, DatapathError> {
        self.array_traffic(names::SVC_STATS, ids)
    }

    /// Traffic of each backend in `ids` (client -> backend direction), summed over CPUs.
    pub fn backend_traffic(&self, ids: &[u32]) -> Result<Vec<(u32, Traffic)>, DatapathError> {
        self.array_traffic(names::BACKEND_STATS, ids)
    }

    fn array_traffic(
        &self,
        name: &'static str,
        ids: &[u32],
    ) -> Result<Vec<(u32, Traffic)>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        let a: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        ids.iter()
            .map(|id| {
                let v = a
                    .get(id, 0)
                    .map_err(|source| DatapathError::Map { name, source })?;
                Ok((*id, sum(v.iter().copied())))
            })
            .collect()
    }

    /// Traffic sent into the tunnel per node (IPv4 address bytes): the sum of the traffic of
    /// the node's live `backends` (id, node) and of its removed ones. Nodes without any are
    /// left out.
    pub fn node_traffic(
        &self,
        backends: &[(u32, [u8; 4])],
    ) -> Result<Vec<([u8; 4], Traffic)>, DatapathError> {
        let mut nodes: std::collections::BTreeMap<[u8; 4], Traffic> =
            self.retired_node_traffic()?.into_iter().collect();
        let ids: Vec<u32> = backends.iter().map(|(id, _)| *id).collect();
        for ((_, t), (_, node)) in self.backend_traffic(&ids)?.into_iter().zip(backends) {
            let n = nodes.entry(*node).or_default();
            n.packets += t.packets;
            n.bytes += t.bytes;
        }
        Ok(nodes.into_iter().filter(|(_, t)| t.packets > 0).collect())
    }

    /// Traffic of backends that were removed, per node (user space folds a removed backend's
    /// totals in; see [`Datapath::forget_backend_traffic`]).
    pub fn retired_node_traffic(&self) -> Result<Vec<([u8; 4], Traffic)>, DatapathError> {
        self.hashed_traffic(names::NODE_STATS)
    }

    fn hashed_traffic<K: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, Traffic)>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        let h: PerCpuHashMap<&MapData, K, Traffic> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let mut out = Vec::new();
        for item in h.iter() {
            // An entry deleted while iterating ends that entry, not the walk.
            let Ok((k, v)) = item else { continue };
            out.push((k, sum(v.iter().copied())));
        }
        Ok(out)
    }

    /// ICMP echo packets sent to each VIP (IPv4-mapped for IPv4) the map counts for.
    pub fn vip_icmp_traffic(&self) -> Result<Vec<([u8; 16], Traffic)>, DatapathError> {
        self.hashed_traffic(names::VIP_ICMP)
    }

    /// The ping counters of the VIPs in `keys` (IPv4-mapped for IPv4); a key the map does not
    /// hold (a VIP removed meanwhile) is left out. One lookup each: a slice of a large set can
    /// be read without walking the whole map.
    pub fn vip_icmp_traffic_of(
        &self,
        keys: &[[u8; 16]],
    ) -> Result<Vec<([u8; 16], Traffic)>, DatapathError> {
        let name = names::VIP_ICMP;
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        let h: PerCpuHashMap<&MapData, [u8; 16], Traffic> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            match h.get(k, 0) {
                Ok(v) => out.push((*k, sum(v.iter().copied()))),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(DatapathError::Map { name, source }),
            }
        }
        Ok(out)
    }

    /// Makes the VIPs whose pings are counted exactly `vips`: entries of VIPs that went are
    /// removed, new VIPs start at zero, and the counts of the others are kept (so the sync is
    /// idempotent, and a restarted daemon keeps the counts the pinned map holds).
    pub fn sync_vip_icmp(&mut self, vips: &BTreeSet<[u8; 16]>) -> Result<(), DatapathError> {
        let name = names::VIP_ICMP;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut h: PerCpuHashMap<&mut MapData, [u8; 16], Traffic> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let present: BTreeSet<[u8; 16]> = h.keys().filter_map(Result::ok).collect();
        for gone in present.difference(vips) {
            match h.remove(gone) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DatapathError::Map { name, source }),
            }
        }
        for new in vips.difference(&present) {
            h.insert(*new, Self::on_one_cpu(name, Traffic::default())?, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
        }
        Ok(())
    }

    /// Per-CPU values of `t` on the first CPU, the default (zero) on the others.
    pub(crate) fn on_one_cpu<T: aya::Pod + Default>(
        name: &'static str,
        t: T,
    ) -> Result<PerCpuValues<T>, DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            name,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        let mut v: Vec<T> = (0..cpus).map(|_| T::default()).collect();
        v[0] = t;
        PerCpuValues::try_from(v).map_err(|e| DatapathError::Map {
            name,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "per-cpu values",
                io_error: e,
            }),
        })
    }

    /// Zeroes a frontend's traffic counters (its id is free again).
    pub fn forget_service_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        self.zero_slot(names::SVC_STATS, id)
    }

    /// Zeroes slot `id` of the per-CPU traffic array `name`.
    fn zero_slot(&mut self, name: &'static str, id: u32) -> Result<(), DatapathError> {
        let zero = Self::on_one_cpu(name, Traffic::default())?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut a: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        a.set(id, zero, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Zeroes a removed backend's traffic counters (its id is free again), first adding them to
    /// its node's removed-backend total so that the node's traffic stays whole. Call it once
    /// the backend is gone from `MGW_BACKENDS`: from then on nothing counts on the id.
    pub fn forget_backend_traffic(&mut self, id: u32, node: [u8; 4]) -> Result<(), DatapathError> {
        let Some((_, t)) = self.backend_traffic(&[id])?.pop() else {
            return Ok(());
        };
        if t.packets > 0 {
            let name = names::NODE_STATS;
            let old = self
                .retired_node_traffic()?
                .into_iter()
                .find(|(k, _)| *k == node)
                .map_or(Traffic::default(), |(_, t)| t);
            let total = Self::on_one_cpu(
                name,
                Traffic {
                    packets: old.packets + t.packets,
                    bytes: old.bytes + t.bytes,
                },
            )?;
            let map = self
                .ebpf
                .map_mut(name)
                .ok_or(DatapathError::MissingMap(name))?;
            let mut h: PerCpuHashMap<&mut MapData, [u8; 4], Traffic> = PerCpuHashMap::try_from(map)
                .map_err(|source| DatapathError::Map { name, source })?;
            h.insert(node, total, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
        }
        self.zero_slot(names::BACKEND_STATS, id)
    }

    /// Takes the flow event ring buffer out of the datapath object, for a reader that owns it.
    /// A second call fails with [`DatapathError::MissingMap`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let name = names::EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        RingBuf::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }
}
