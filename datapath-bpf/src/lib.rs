//! The user-space side of meshgw's XDP datapath: the compiled object, loading with every map
//! pinned in bpffs (so a restart or an upgrade keeps the connection-tracking state and the packet
//! path never stops), link-based attachment with atomic program replacement, typed map access, and
//! `BPF_PROG_TEST_RUN` for tests and benchmarks.
//!
//! The map layouts themselves live in [`meshgw_common`], shared with the programs.

mod error;
mod loader;
mod maps;
mod telemetry;
mod testrun;

pub use error::DatapathError;
pub use loader::{AttachMode, Datapath, Program};
pub use maps::{egress_key, identity_key, Backends, MapLayout};
pub use meshgw_common as common;
pub use testrun::{action, Replay, RunResult};

/// The XDP object built from `datapath-bpf/xdp` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshgw-xdp.o"));

/// The packets-per-second benchmark's generator and sink (`meshgw_common::bench`), built from
/// `datapath-bpf/xdp/src/bin/meshgw-bench.rs`: an object of its own, never loaded by the gateway.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshgw-bench.o"));
