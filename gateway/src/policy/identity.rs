//! Gateway-local security identities: one per distinct label set of a legacy prefix or a static
//! backend, numbered in Cilium's local scope (bit 24 set, as Cilium numbers CIDR identities, so
//! they never collide with a cluster's own identities), kept stable across restarts in
//! `<state_dir>/identities.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The first local identity.
pub const LOCAL_BASE: u32 = 1 << 24;

/// Label set (as a stable text key) -> identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalIdentities {
    assigned: BTreeMap<String, u32>,
    #[serde(skip)]
    dirty: bool,
}

fn text(kind: &str, labels: &BTreeMap<String, String>) -> String {
    let mut s = String::from(kind);
    for (k, v) in labels {
        s.push(';');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

impl LocalIdentities {
    /// `<state_dir>/identities.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("identities.json")
    }

    /// Reads the file; a missing or unreadable file is a fresh start.
    pub fn load(path: &Path) -> Self {
        crate::statefile::load_or_default(path, "identities")
    }

    /// Writes the file if an identity was added since the last save.
    pub fn save_if_changed(&mut self, path: &Path) -> std::io::Result<()> {
        if self.dirty {
            crate::statefile::save(path, self)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The identity of a label set of `kind` ("src" or "dst"), allocated if new.
    pub fn get(&mut self, kind: &str, labels: &BTreeMap<String, String>) -> u32 {
        let t = text(kind, labels);
        if let Some(id) = self.assigned.get(&t) {
            return *id;
        }
        let id = self
            .assigned
            .values()
            .max()
            .map_or(LOCAL_BASE + 1, |m| m + 1);
        self.assigned.insert(t, id);
        self.dirty = true;
        id
    }
}
