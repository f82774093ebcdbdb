//! Errors of the datapath crate.

use std::path::PathBuf;

/// What can go wrong loading, attaching or programming the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (verifier rejection, missing privileges, bad pins).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded, attached or replaced.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: String,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The devmap refused an entry for a reason other than a map error.
    #[error("devmap: {0}")]
    Devmap(String),
    /// The per-packet benchmark's replay harness was given something it cannot replay.
    #[error("replay: {0}")]
    Replay(String),
    /// A map the object needs is missing (a build of the XDP crate out of step with this one).
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    /// A program the object needs is missing.
    #[error("the XDP object has no program {0}")]
    MissingProgram(String),
    /// A map pinned by an earlier release has another layout: reusing it would corrupt state.
    #[error(
        "pinned map {path} has key/value/max sizes {found:?}, this release needs {expected:?}; \
         run `meshgw down` to remove the old datapath (drops connection tracking) and start again"
    )]
    PinnedMapMismatch {
        /// The pin.
        path: PathBuf,
        /// (key size, value size, max entries) found.
        found: (u32, u32, u32),
        /// (key size, value size, max entries) expected.
        expected: (u32, u32, u32),
    },
    /// A link pin could not be created, opened or removed.
    #[error("link pin {path}: {message}")]
    LinkPin {
        /// The pin.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// File system work under the pin directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
