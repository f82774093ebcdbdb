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

/// A zero [`Traffic`] for every possible CPU (the value a per-CPU map entry is created with).
fn zero_per_cpu(name: &'static str) -> Result<PerCpuValues<Traffic>, DatapathError> {
    let syscall = |call, io_error| DatapathError::Map {
        name,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| syscall("nr_cpus", e))?;
    PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(|e| syscall("per-cpu values", e))
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
        let name = names::SVC_STATS;
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

    /// Traffic per backend id that has seen any (client -> backend direction).
    pub fn backend_traffic(&self) -> Result<Vec<(u32, Traffic)>, DatapathError> {
        self.hashed_traffic(names::BACKEND_STATS)
    }

    /// Traffic sent into the tunnel per node (IPv4 address bytes).
    pub fn node_traffic(&self) -> Result<Vec<([u8; 4], Traffic)>, DatapathError> {
        self.hashed_traffic(names::NODE_STATS)
    }

    /// ICMP echo packets sent to each VIP (IPv4-mapped for IPv4) the map counts for.
    pub fn vip_icmp_traffic(&self) -> Result<Vec<([u8; 16], Traffic)>, DatapathError> {
        self.hashed_traffic(names::VIP_ICMP)
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
            h.insert(*new, zero_per_cpu(name)?, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
        }
        Ok(())
    }

    /// Zeroes a frontend's traffic counters (its id is free again).
    pub fn forget_service_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        let name = names::SVC_STATS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut a: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        a.set(id, zero_per_cpu(name)?, 0)
            .map_err(|source| DatapathError::Map { name, source })
    }

    /// Drops a backend's traffic counters (its id is free again).
    pub fn forget_backend_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        let name = names::BACKEND_STATS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut h: PerCpuHashMap<&mut MapData, u32, Traffic> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        match h.remove(&id) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map { name, source }),
        }
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
