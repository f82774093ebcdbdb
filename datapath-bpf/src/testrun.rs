//! `BPF_PROG_TEST_RUN`: runs a loaded program on a frame in the kernel, without an interface.
//! The packet tests compare its output bytes exactly; the benchmarks time it.

use aya::programs::{TestRun, TestRunOptions};
use std::time::Duration;

use crate::error::DatapathError;
use crate::loader::{Datapath, Program};

/// The outcome of a test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The XDP action (`XDP_PASS` = 2, `XDP_DROP` = 1, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's average time per run.
    pub duration: Duration,
}

/// XDP action codes.
pub mod action {
    /// Error in the program.
    pub const ABORTED: u32 = 0;
    /// Dropped.
    pub const DROP: u32 = 1;
    /// Handed to the kernel stack.
    pub const PASS: u32 = 2;
    /// Sent back out of the receiving interface.
    pub const TX: u32 = 3;
    /// Redirected (devmap).
    pub const REDIRECT: u32 = 4;
}

impl Datapath {
    /// Runs program `p` on `frame` `repeat` times (the output is that of the last run). FIB
    /// lookups resolve in the calling thread's network namespace.
    pub fn run(&self, p: Program, frame: &[u8], repeat: u32) -> Result<RunResult, DatapathError> {
        // Room for the 64-byte encapsulation the legacy program may add.
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let r = self
            .xdp(p)?
            .test_run(opts)
            .map_err(|source| DatapathError::Program {
                name: p.name().into(),
                source,
            })?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            action: r.return_value,
            frame: out,
            duration: r.duration,
        })
    }
}
