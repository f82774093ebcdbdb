//! Shared between the XDP programs (`no_std`, BPF target) and user space: the layouts of every
//! map key and value (`#[repr(C)]`, fixed sizes checked at compile time), the counters, and the
//! packet logic that can be written as pure functions (parsing, checksums, hashing, the VXLAN
//! header block), so that it is unit-tested on the host without a kernel.
#![no_std]

pub mod bench;
pub mod csum;
pub mod encap;
pub mod hash;
pub mod maps;
pub mod parse;
pub mod stats;
pub mod telemetry;

#[cfg(test)]
extern crate std;
