//! Service and backend lookup: (VIP, port, protocol) -> frontend; flow hash -> Maglev slot ->
//! backend.

use crate::maps::{BACKENDS, MAGLEV, SERVICES};
use meshgw_common::maps::{BackendValue, ServiceKey, ServiceValue, MAGLEV_SIZE};
use meshgw_common::parse::Flow;

#[inline(always)]
pub fn service(flow: &Flow) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: the value is copied out at once; the map entry may change afterwards.
    unsafe { SERVICES.get(&key).copied() }
}

/// Backend `id`, if its slot holds one (a removed backend's slot is zeroed: family 0).
#[inline(always)]
pub fn backend(id: u32) -> Option<BackendValue> {
    backend_ref(id).copied()
}

/// The same, in the map: for a path that reads a few fields and must not pay a copy.
#[inline(always)]
pub fn backend_ref(id: u32) -> Option<&'static BackendValue> {
    BACKENDS.get(id).filter(|b| b.family != 0)
}

/// Maps a hash onto 0..MAGLEV_SIZE by multiply-and-shift (Lemire): cheaper than a modulo, and
/// the verifier can see the bound.
#[inline(always)]
fn slot(hash: u32) -> usize {
    ((u64::from(hash) * MAGLEV_SIZE as u64) >> 32) as usize
}

/// The backend the service's Maglev table assigns to this flow hash.
#[inline(always)]
pub fn maglev(svc: &ServiceValue, hash: u32) -> Option<(u32, BackendValue)> {
    let table = MAGLEV.get_ptr(&svc.service_id)?;
    let i = slot(hash);
    if i >= MAGLEV_SIZE {
        return None;
    }
    // SAFETY: `table` points at a live map value and i < MAGLEV_SIZE.
    let id = unsafe { (*table).slots[i] };
    if id == 0 {
        return None;
    }
    Some((id, backend(id)?))
}
