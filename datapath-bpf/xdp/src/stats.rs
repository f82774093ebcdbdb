//! Counter increments: per-CPU slots, so a plain add is race-free and needs no atomics.

use crate::maps::STATS;
use meshgw_common::stats::Counter;

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and the pointer is non-null.
        unsafe { *slot += 1 };
    }
}
