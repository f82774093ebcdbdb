//! Kernel parameters under /proc/sys, written directly (no `sysctl` binary).
//!
//! Paths are given with slashes (`net/ipv6/conf/legacy/proxy_ndp`), relative to /proc/sys or
//! absolute: the dotted form cannot be used because interface names may contain dots.
//! Everything under `net/` is per network namespace: the kernel resolves it in the namespace of
//! the thread that opens the file, so these act where the calling thread is.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::info;

/// Where the kernel exposes its parameters.
const PROC_SYS: &str = "/proc/sys";

/// A failed sysctl access.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The parameter could not be read (missing: wrong interface name, or a kernel without it).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the value.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A path that leaves /proc/sys, or an interface name that cannot be one.
    #[error("invalid sysctl path {0:?}")]
    InvalidPath(String),
}

/// Reverse-path filtering modes (`rp_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpFilter {
    /// No source validation.
    Off = 0,
    /// Strict: the reverse path must leave by the receiving interface.
    Strict = 1,
    /// Loose: the source must be reachable by any interface.
    Loose = 2,
}

/// Writes `value` to the parameter at `path` unless it already holds it; returns whether it
/// changed. Compared after trimming whitespace, as the kernel prints a trailing newline.
pub fn set(path: &str, value: &str) -> Result<bool, SysctlError> {
    let file = resolve(path)?;
    let current = fs::read_to_string(&file).map_err(|source| SysctlError::Read {
        path: file.clone(),
        source,
    })?;
    if current.trim() == value.trim() {
        return Ok(false);
    }
    fs::write(&file, value).map_err(|source| SysctlError::Write {
        path: file.clone(),
        value: value.to_owned(),
        source,
    })?;
    info!(path = %file.display(), old = current.trim(), new = value, "sysctl set");
    Ok(true)
}

/// Reads the parameter at `path`, trimmed.
pub fn get(path: &str) -> Result<String, SysctlError> {
    let file = resolve(path)?;
    fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .map_err(|source| SysctlError::Read { path: file, source })
}

/// Lets interface `ifname` answer ARP for addresses that only a `local` route makes the
/// gateway's (AnyIP, as the IPv4 VIP pool is owned): `arp_ignore` 1 and up answer only for
/// addresses configured on the receiving interface, which such addresses never are, so
/// `ifname` gets 0. The kernel applies max(`all`, interface): a non-zero `all` is moved down
/// onto every other interface (and `default`, for interfaces made later) before it is lowered,
/// so every other interface behaves exactly as before. Returns whether anything changed.
pub fn answer_arp_for_local_routes(ifname: &str) -> Result<bool, SysctlError> {
    let all: u32 = get("net/ipv4/conf/all/arp_ignore")?.parse().unwrap_or(0);
    let mut changed = false;
    if all > 0 {
        let dir = Path::new(PROC_SYS).join("net/ipv4/conf");
        let entries = fs::read_dir(&dir).map_err(|source| SysctlError::Read {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "all" || name == ifname {
                continue;
            }
            let key = format!("net/ipv4/conf/{name}/arp_ignore");
            let own: u32 = get(&key)?.parse().unwrap_or(0);
            if own < all {
                changed |= set(&key, &all.to_string())?;
            }
        }
        changed |= set("net/ipv4/conf/all/arp_ignore", "0")?;
    }
    changed |= set(&format!("net/ipv4/conf/{ifname}/arp_ignore"), "0")?;
    Ok(changed)
}

/// IPv4 forwarding (`net/ipv4/ip_forward`): the kernel slow path needs it, and
/// `bpf_fib_lookup` answers "forwarding disabled" without it.
pub fn ipv4_forwarding(on: bool) -> Result<bool, SysctlError> {
    set("net/ipv4/ip_forward", flag(on))
}

/// IPv6 forwarding on every interface (`net/ipv6/conf/all/forwarding`, which the kernel copies
/// to each interface's own `forwarding`). Proxy NDP answers only on forwarding interfaces.
pub fn ipv6_forwarding(on: bool) -> Result<bool, SysctlError> {
    set("net/ipv6/conf/all/forwarding", flag(on))
}

/// IPv6 forwarding on one interface (`net/ipv6/conf/<ifname>/forwarding`).
pub fn ipv6_forwarding_on(ifname: &str, on: bool) -> Result<bool, SysctlError> {
    set(
        &format!("net/ipv6/conf/{}/forwarding", iface(ifname)?),
        flag(on),
    )
}

/// Proxy NDP on one interface (`net/ipv6/conf/<ifname>/proxy_ndp`): with it (and forwarding),
/// the kernel answers neighbour solicitations for the proxy entries of that interface.
pub fn proxy_ndp(ifname: &str, on: bool) -> Result<bool, SysctlError> {
    set(
        &format!("net/ipv6/conf/{}/proxy_ndp", iface(ifname)?),
        flag(on),
    )
}

/// Delay before answering a multicast solicitation for a proxied address
/// (`net/ipv6/neigh/<ifname>/proxy_delay`, in 1/100 s; the kernel default of 80 delays each
/// answer by a random time of up to 0.8 s, as RFC 4861 asks of proxies).
pub fn proxy_delay(ifname: &str, centiseconds: u32) -> Result<bool, SysctlError> {
    set(
        &format!("net/ipv6/neigh/{}/proxy_delay", iface(ifname)?),
        &centiseconds.to_string(),
    )
}

/// Reverse-path filtering on one interface (`net/ipv4/conf/<ifname>/rp_filter`). The kernel
/// applies the maximum of this and `conf/all/rp_filter`.
pub fn rp_filter(ifname: &str, mode: RpFilter) -> Result<bool, SysctlError> {
    set(
        &format!("net/ipv4/conf/{}/rp_filter", iface(ifname)?),
        &(mode as u8).to_string(),
    )
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}

/// Checks that `name` can be an interface name, so that it cannot walk out of its directory.
fn iface(name: &str) -> Result<&str, SysctlError> {
    // IFNAMSIZ is 16 with the terminating NUL; "." and ".." are refused by the kernel too.
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(name)
    } else {
        Err(SysctlError::InvalidPath(name.to_owned()))
    }
}

/// The file for `path`: relative paths are under /proc/sys; nothing may leave it.
fn resolve(path: &str) -> Result<PathBuf, SysctlError> {
    let rel = match path.strip_prefix(PROC_SYS) {
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        Some(_) => return Err(SysctlError::InvalidPath(path.to_owned())),
        None if path.starts_with('/') => return Err(SysctlError::InvalidPath(path.to_owned())),
        None => path,
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(SysctlError::InvalidPath(path.to_owned()));
    }
    Ok(PathBuf::from(PROC_SYS).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_proc_sys() {
        assert_eq!(
            resolve("net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            resolve("/proc/sys/net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc/passwd",
            "/proc/sysfoo/x",
            "net//x",
            "net/ipv4/",
        ] {
            assert!(resolve(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(iface("eth0.100").is_ok());
        assert!(iface("legacy").is_ok());
        for bad in ["", ".", "..", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(iface(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reading_a_known_parameter() {
        // Present on every Linux with IPv4; reading needs no privilege.
        let v = get("net/ipv4/ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v:?}");
    }
}
