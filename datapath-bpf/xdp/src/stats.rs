//! Counter increments (per-CPU slots, so a plain add is race-free and needs no atomics), and the
//! verdicts that count as they decide.

use aya_ebpf::bindings::xdp_action;

use crate::maps::STATS;
use meshgw_common::stats::Counter;

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and the pointer is non-null.
        unsafe { *slot += 1 };
    }
}

/// Counts `c` and hands the packet to the kernel.
#[inline(always)]
pub fn pass(c: Counter) -> u32 {
    count(c);
    xdp_action::XDP_PASS
}

/// Counts `c` and drops the packet.
#[inline(always)]
pub fn drop(c: Counter) -> u32 {
    count(c);
    xdp_action::XDP_DROP
}
