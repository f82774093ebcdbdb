//! Loading and attaching. Maps are pinned as `<pin_dir>/maps/<NAME>` and reused when present, so
//! a new daemon (or a new release) continues with the state the old one left; XDP links are pinned
//! as `<pin_dir>/links/<program>-<ifindex>`, so the programs stay attached when the daemon exits,
//! and a restart swaps the program inside the existing link (`bpf_link_update`): no gap in which
//! packets miss the datapath.

use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use meshgw_common::maps::{names, programs};
use tracing::{debug, info, warn};

use crate::error::DatapathError;
use crate::maps::MapLayout;

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fast path; veth supports it).
    Native,
    /// Generic XDP in the stack (works everywhere, slower).
    Skb,
    /// Native, falling back to generic where the driver lacks XDP.
    Auto,
}

/// The XDP programs of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// On the legacy interface.
    Legacy,
    /// On the mesh interface.
    Mesh,
    /// A plain pass (for veth peers needing NAPI).
    Pass,
}

impl Program {
    /// The program's name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Program::Legacy => programs::LEGACY,
            Program::Mesh => programs::MESH,
            Program::Pass => programs::PASS,
        }
    }
}

/// The loaded datapath.
pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Datapath {
    /// Loads the object with every map pinned under `pin_dir/maps`, reusing maps already pinned
    /// there (after checking that their layout is this release's).
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        let maps_dir = pin_dir.join("maps");
        fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        fs::create_dir_all(pin_dir.join("links")).map_err(io_err(pin_dir))?;
        let paths: Vec<(&'static str, PathBuf)> = names::ALL
            .iter()
            .chain(meshgw_common::telemetry::names::ALL.iter())
            .map(|n| (*n, maps_dir.join(n)))
            .collect();
        let mut reused = 0;
        for (name, path) in &paths {
            if path.exists() {
                check_layout(name, path)?;
                reused += 1;
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(crate::OBJECT)?;
        info!(pin_dir = %pin_dir.display(), reused_maps = reused, "datapath object loaded");
        let mut dp = Self {
            ebpf,
            pin_dir: Some(pin_dir.to_path_buf()),
        };
        dp.load_programs()?;
        Ok(dp)
    }

    /// Loads the object with private, unpinned maps (tests and benchmarks).
    pub fn load_private() -> Result<Self, DatapathError> {
        let ebpf = EbpfLoader::new().load(crate::OBJECT)?;
        let mut dp = Self {
            ebpf,
            pin_dir: None,
        };
        dp.load_programs()?;
        Ok(dp)
    }

    fn load_programs(&mut self) -> Result<(), DatapathError> {
        for p in [Program::Legacy, Program::Mesh, Program::Pass] {
            self.xdp_mut(p)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name: p.name().into(),
                    source,
                })?;
        }
        Ok(())
    }

    pub(crate) fn xdp(&self, p: Program) -> Result<&Xdp, DatapathError> {
        self.ebpf
            .program(p.name())
            .and_then(|prog| <&Xdp>::try_from(prog).ok())
            .ok_or_else(|| DatapathError::MissingProgram(p.name().into()))
    }

    fn xdp_mut(&mut self, p: Program) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(p.name())
            .and_then(|prog| <&mut Xdp>::try_from(prog).ok())
            .ok_or_else(|| DatapathError::MissingProgram(p.name().into()))
    }

    fn link_pin(&self, p: Program, ifindex: u32) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join("links").join(format!("{}-{ifindex}", p.name())))
    }

    /// Attaches `p` to `ifindex`. With a pin directory: if a pinned link for this program and
    /// interface exists, the loaded program atomically replaces the one in it; otherwise a new link
    /// is created and pinned. Pinned links of the same program on other interfaces are removed
    /// (the configuration moved it), which detaches them.
    pub fn attach(
        &mut self,
        p: Program,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<(), DatapathError> {
        let pin = self.link_pin(p, ifindex);
        if let Some(pin) = &pin {
            self.remove_other_pins(p, pin)?;
        }
        let perr = |source| DatapathError::Program {
            name: p.name().into(),
            source,
        };
        let existing = match &pin {
            Some(path) if path.exists() => match PinnedLink::from_pin(path) {
                Ok(link) => Some(link),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "stale link pin removed");
                    fs::remove_file(path).map_err(io_err(path))?;
                    None
                }
            },
            _ => None,
        };
        let prog = self.xdp_mut(p)?;
        let (id, replaced) = match existing {
            Some(pinned) => {
                let fd = FdLink::from(pinned);
                let xdp_link = aya::programs::xdp::XdpLink::try_from(fd).map_err(|e| {
                    DatapathError::LinkPin {
                        path: pin.clone().unwrap_or_default(),
                        message: e.to_string(),
                    }
                })?;
                (prog.attach_to_link(xdp_link).map_err(perr)?, true)
            }
            None => {
                let id = match mode {
                    AttachMode::Native => prog.attach_to_if_index(ifindex, XdpMode::Driver),
                    AttachMode::Skb => prog.attach_to_if_index(ifindex, XdpMode::Skb),
                    AttachMode::Auto => prog
                        .attach_to_if_index(ifindex, XdpMode::Driver)
                        .or_else(|_| prog.attach_to_if_index(ifindex, XdpMode::Skb)),
                }
                .map_err(perr)?;
                (id, false)
            }
        };
        // Own the link outside `Ebpf`, so that dropping the loader never detaches it.
        let link = prog.take_link(id).map_err(perr)?;
        match pin {
            Some(path) if !replaced => {
                let fd = FdLink::try_from(link).map_err(|e| DatapathError::LinkPin {
                    path: path.clone(),
                    message: format!("XDP was attached without a bpf_link ({e}); cannot pin it"),
                })?;
                fd.pin(&path).map_err(|e| DatapathError::LinkPin {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                info!(
                    program = p.name(),
                    ifindex, "XDP program attached (new pinned link)"
                );
            }
            Some(_) => info!(
                program = p.name(),
                ifindex, "XDP program replaced in pinned link"
            ),
            None => {
                // Unpinned datapaths (tests) keep the link alive for the process lifetime.
                std::mem::forget(link);
                debug!(
                    program = p.name(),
                    ifindex, "XDP program attached (unpinned)"
                );
            }
        }
        Ok(())
    }

    fn remove_other_pins(&self, p: Program, keep: &Path) -> Result<(), DatapathError> {
        let Some(dir) = keep.parent() else {
            return Ok(());
        };
        let prefix = format!("{}-", p.name());
        let entries = fs::read_dir(dir).map_err(io_err(dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix));
            if is_ours && path != keep {
                info!(path = %path.display(), "removing link pin of an interface no longer configured");
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Detaches everything and removes the pin directory: the datapath is gone, state included.
    pub fn remove_pins(pin_dir: &Path) -> Result<bool, DatapathError> {
        if !pin_dir.exists() {
            return Ok(false);
        }
        fs::remove_dir_all(pin_dir).map_err(io_err(pin_dir))?;
        Ok(true)
    }

    /// The pin directory, if maps are pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }
}

fn check_layout(name: &'static str, path: &Path) -> Result<(), DatapathError> {
    let Some(expected) = MapLayout::of(name) else {
        return Ok(());
    };
    let info = MapInfo::from_pin(path).map_err(|source| DatapathError::Map { name, source })?;
    let found = (info.key_size(), info.value_size(), info.max_entries());
    let want = (
        expected.key_size,
        expected.value_size.unwrap_or(found.1),
        expected.max_entries,
    );
    if found != want {
        return Err(DatapathError::PinnedMapMismatch {
            path: path.to_path_buf(),
            found,
            expected: want,
        });
    }
    Ok(())
}
