//! `ensure_vxlan` and `remove_vxlan` against the real kernel, in a throw-away network namespace.
//!
//! These need root and panic with "needs root" otherwise; they never pass silently.
// A panic is how a test reports failure, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;

use meshgw_tunnel::vxlan::{ensure_vxlan, remove_vxlan, VxlanSpec, CILIUM_VXLAN_PORT};
use meshgw_tunnel::TunnelError;

/// A network namespace deleted on drop, also when the test panics.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("needs root: the VXLAN tests create network namespaces and devices (run `make test` as root)");
        }
        let name = format!("mgwt-vx-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns(name);
        run(Command::new("ip").args(["netns", "add", &ns.0]));
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.0]).args(args))
    }

    /// Runs the future made by `f` on a current-thread runtime on a thread inside the namespace
    /// (the rtnetlink socket belongs to the namespace of the thread that opens it).
    fn block_on<F, T>(&self, f: impl FnOnce(rtnetlink::Handle) -> F + Send) -> T
    where
        F: Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.0);
        thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap();
                // SAFETY: setns with a valid namespace fd; it moves this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                    tokio::spawn(conn);
                    f(handle).await
                })
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// `ip -d link show dev <dev>` as one line of words.
    fn details(&self, dev: &str) -> String {
        self.ip(&["-d", "link", "show", "dev", dev])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace with the underlay `mesh0` (172.18.0.1/24); returns it and mesh0's ifindex.
fn underlay(tag: &str) -> (Netns, u32) {
    let ns = Netns::new(tag);
    ns.ip(&[
        "link", "add", "mesh0", "type", "veth", "peer", "name", "sw0",
    ]);
    ns.ip(&["addr", "add", "172.18.0.1/24", "dev", "mesh0"]);
    ns.ip(&["link", "set", "mesh0", "up"]);
    let out = ns.ip(&["-o", "link", "show", "dev", "mesh0"]);
    let index = out.split(':').next().unwrap().trim().parse().unwrap();
    (ns, index)
}

fn spec(lower: u32) -> VxlanSpec {
    VxlanSpec {
        name: "vx0".to_owned(),
        port: CILIUM_VXLAN_PORT,
        local: Some(Ipv4Addr::new(172, 18, 0, 1)),
        lower: Some(lower),
        mac: Some([0x02, 0x6d, 0x67, 0, 0, 1]),
        mtu: Some(1450),
    }
}

#[test]
fn ensure_is_idempotent() {
    let (ns, mesh) = underlay("idem");
    let s = spec(mesh);
    let (first, second) = ns.block_on(|h| async move {
        let first = ensure_vxlan(&h, &s).await.unwrap();
        let second = ensure_vxlan(&h, &s).await.unwrap();
        (first, second)
    });
    assert_eq!(first, second, "the same device is kept");
    let d = ns.details("vx0");
    for want in [
        "vxlan external",
        "local 172.18.0.1",
        "dev mesh0",
        "dstport 8472",
        "nolearning",
        "noudpcsum",
        "link/ether 02:6d:67:00:00:01",
        "mtu 1450",
        "state UNKNOWN",
    ] {
        assert!(d.contains(want), "missing {want:?} in: {d}");
    }
    assert!(
        d.contains(",UP,") || d.contains("<UP,") || d.contains(",UP>"),
        "device is up: {d}"
    );
}

#[test]
fn live_properties_are_corrected_in_place() {
    let (ns, mesh) = underlay("adjust");
    let s = spec(mesh);
    let s2 = s.clone();
    let first = ns.block_on(|h| async move { ensure_vxlan(&h, &s).await.unwrap() });
    ns.ip(&["link", "set", "vx0", "down"]);
    let mut changed = s2;
    changed.mac = Some([0x02, 0x6d, 0x67, 0, 0, 2]);
    changed.mtu = Some(1400);
    let again = ns.block_on(|h| async move { ensure_vxlan(&h, &changed).await.unwrap() });
    assert_eq!(
        first, again,
        "MAC, MTU and up are changed without recreating the device"
    );
    let d = ns.details("vx0");
    assert!(
        d.contains("link/ether 02:6d:67:00:00:02") && d.contains("mtu 1400"),
        "{d}"
    );
    assert!(d.contains("UP"), "{d}");
}

#[test]
fn port_change_recreates() {
    let (ns, mesh) = underlay("port");
    let s = spec(mesh);
    let mut other = s.clone();
    other.port = 4789;
    let (first, second, third) = ns.block_on(|h| async move {
        let first = ensure_vxlan(&h, &s).await.unwrap();
        let second = ensure_vxlan(&h, &other).await.unwrap();
        let third = ensure_vxlan(&h, &other).await.unwrap();
        (first, second, third)
    });
    assert_ne!(first, second, "a new device for a new port");
    assert_eq!(second, third);
    let d = ns.details("vx0");
    assert!(
        d.contains("dstport 4789") && d.contains("vxlan external"),
        "{d}"
    );
}

#[test]
fn other_mode_or_kind_is_replaced() {
    let (ns, mesh) = underlay("mode");
    // A classic (non-external) VXLAN device and a device of another kind under our names.
    ns.ip(&[
        "link", "add", "vx0", "type", "vxlan", "id", "2", "dstport", "8472", "dev", "mesh0",
    ]);
    ns.ip(&["link", "add", "vx1", "type", "ifb"]);
    let s = spec(mesh);
    let mut s1 = spec(mesh);
    s1.name = "vx1".to_owned();
    s1.port = 4790;
    s1.mac = None;
    s1.mtu = None;
    ns.block_on(|h| async move {
        ensure_vxlan(&h, &s).await.unwrap();
        ensure_vxlan(&h, &s1).await.unwrap();
    });
    assert!(
        ns.details("vx0").contains("vxlan external"),
        "{}",
        ns.details("vx0")
    );
    assert!(
        ns.details("vx1").contains("vxlan external"),
        "{}",
        ns.details("vx1")
    );
}

#[test]
fn remove() {
    let (ns, mesh) = underlay("remove");
    ns.ip(&["link", "add", "notvx", "type", "ifb"]);
    let s = spec(mesh);
    ns.block_on(|h| async move {
        ensure_vxlan(&h, &s).await.unwrap();
        assert!(remove_vxlan(&h, "vx0").await.unwrap());
        assert!(!remove_vxlan(&h, "vx0").await.unwrap());
        match remove_vxlan(&h, "notvx").await {
            Err(TunnelError::NotVxlan { found, .. }) => assert_eq!(found, "ifb"),
            other => panic!("expected NotVxlan, got {other:?}"),
        }
    });
    assert!(
        ns.ip(&["link", "show", "dev", "notvx"]).contains("notvx"),
        "a foreign device is left alone"
    );
}

#[test]
fn second_external_device_on_the_same_port_is_refused() {
    let (ns, mesh) = underlay("dup");
    let s = spec(mesh);
    let mut twin = spec(mesh);
    twin.name = "vx9".to_owned();
    twin.mac = None;
    let err = ns.block_on(|h| async move {
        ensure_vxlan(&h, &s).await.unwrap();
        ensure_vxlan(&h, &twin).await.unwrap_err()
    });
    // The kernel allows one metadata-mode device per port and local address.
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
}
