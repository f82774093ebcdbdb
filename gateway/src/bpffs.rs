//! The BPF file system: the pins that keep the datapath alive across restarts live there.

use std::io;
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct we own; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs on /sys/fs/bpf unless `pin_dir` is already on one (fresh machines and minimal
/// images do not mount it).
pub fn ensure_mounted(pin_dir: &Path) -> io::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    let probe = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(root);
    if is_bpffs(probe)? {
        return Ok(());
    }
    if !pin_dir.starts_with(root) {
        return Err(io::Error::other(format!(
            "{} is not on a BPF file system",
            pin_dir.display()
        )));
    }
    std::fs::create_dir_all(root)?;
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}
