//! The daemon's small JSON files under the state directory (VIP assignments, identities, the
//! status): written atomically, so a reader or a crash never sees half a file.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

/// Writes `value` to `path` as pretty JSON: to a temporary file beside it, then renamed.
/// Streamed through a buffer: the status of a large catalog is tens of MB as one string.
pub fn save<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    serde_json::to_writer_pretty(&mut w, value).map_err(std::io::Error::other)?;
    w.flush()?;
    drop(w);
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
