//! Reading the telemetry maps: per-frontend, per-backend and per-node traffic (summed over CPUs),
//! the event settings, and the flow event ring buffer.

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
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

    /// Zeroes a frontend's traffic counters (its id is free again).
    pub fn forget_service_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        let name = names::SVC_STATS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut a: PerCpuArray<&mut MapData, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            name,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(|e| {
                DatapathError::Map {
                    name,
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "per-cpu values",
                        io_error: e,
                    }),
                }
            })?;
        a.set(id, zero, 0)
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
