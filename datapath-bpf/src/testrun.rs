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
        test_run(self.xdp(p)?, p.name(), frame, repeat)
    }
}

/// Runs the loaded XDP program `prog` (named `name`, for errors) on `frame` `repeat` times.
fn test_run(
    prog: &aya::programs::Xdp,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<RunResult, DatapathError> {
    // Room for the 64-byte encapsulation the legacy program may add.
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .map_err(|source| DatapathError::Program {
            name: name.into(),
            source,
        })?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        action: r.return_value,
        frame: out,
        duration: r.duration,
    })
}

/// The per-packet benchmark's replay harness (`meshgw_bench_replay` in [`crate::BENCH_OBJECT`]):
/// with it, the kernel's `repeat` can time a program that rewrites its frame, each repetition
/// starting from the same frame with the caches as the previous one left them.
pub struct Replay {
    ebpf: aya::Ebpf,
}

impl Replay {
    /// Loads the bench object's replay program and maps (nothing is pinned or attached).
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = aya::EbpfLoader::new().load(crate::BENCH_OBJECT)?;
        let name = meshgw_common::bench::names::REPLAY;
        let p: &mut aya::programs::Xdp = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| DatapathError::MissingProgram(name.into()))?;
        p.load().map_err(|source| DatapathError::Program {
            name: name.into(),
            source,
        })?;
        Ok(Replay { ebpf })
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }
}

fn replay_map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Datapath {
    /// Runs program `p` `repeat` times through `replay`, every repetition on `frame` as given
    /// (at most `REPLAY_MAX_LEN` bytes). The result's duration includes the replay's restore and
    /// tail call: time the empty program the same way and subtract it.
    pub fn run_replayed(
        &self,
        replay: &mut Replay,
        p: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, DatapathError> {
        use meshgw_common::bench::{names, ReplayFrame, REPLAY_MAX_LEN};
        if frame.len() < 8 || frame.len() > REPLAY_MAX_LEN {
            return Err(DatapathError::Replay(format!(
                "a replayed frame has 8 to {REPLAY_MAX_LEN} bytes, not {}",
                frame.len()
            )));
        }
        let mut r = ReplayFrame {
            len: frame.len() as u32,
            pad: 0,
            frame: [0; REPLAY_MAX_LEN],
        };
        r.frame[..frame.len()].copy_from_slice(frame);
        let mut a: aya::maps::Array<_, ReplayFrame> =
            aya::maps::Array::try_from(replay.map(names::REPLAY_FRAME)?)
                .map_err(replay_map_err(names::REPLAY_FRAME))?;
        a.set(0, r, 0)
            .map_err(replay_map_err(names::REPLAY_FRAME))?;
        let fd = self
            .xdp(p)?
            .fd()
            .map_err(|source| DatapathError::Program {
                name: p.name().into(),
                source,
            })?
            .try_clone()
            .map_err(|e| DatapathError::Replay(format!("duplicating the program's fd: {e}")))?;
        let mut progs = aya::maps::ProgramArray::try_from(replay.map(names::REPLAY_PROGS)?)
            .map_err(replay_map_err(names::REPLAY_PROGS))?;
        progs
            .set(0, &fd, 0)
            .map_err(replay_map_err(names::REPLAY_PROGS))?;
        let name = meshgw_common::bench::names::REPLAY;
        let prog: &aya::programs::Xdp =
            replay
                .ebpf
                .program(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| DatapathError::MissingProgram(name.into()))?;
        test_run(prog, name, frame, repeat)
    }
}
