//! The daemon's small JSON files under the state directory (VIP assignments, identities, the
//! status): written atomically, so a reader or a crash never sees half a file.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

/// Writes `value` to `path` as pretty JSON: to a temporary file beside it, then renamed.
pub fn save<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Reads `path`; a missing file is the default, an unreadable one too, with a warning naming
/// `what` (state that can be rebuilt must never stop the daemon).
pub fn load_or_default<T: DeserializeOwned + Default>(path: &Path, what: &str) -> T {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "{what} unreadable; starting afresh");
            T::default()
        }),
        Err(_) => T::default(),
    }
}
