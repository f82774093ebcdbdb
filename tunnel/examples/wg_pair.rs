//! A boringtun WireGuard tunnel between two existing network namespaces, for the tunnel
//! throughput benchmark (scripts/bench_tunnel.sh): `wg0` in each, 10.1.0.1 in the first and
//! 10.2.0.1 in the second, over the underlay addresses given. Prints `ready` once both devices
//! run, then forwards until its standard input closes.
//!
//! `wg_pair NS_A NS_B UNDERLAY_A UNDERLAY_B` (needs root).

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context, Result};
use meshgw_tunnel::mtu::{tunnel_mtu, Encap};
use meshgw_tunnel::wireguard::userspace::UserspaceDevice;
use meshgw_tunnel::wireguard::{keys, WgDeviceConfig, WgPeerConfig};

const PORT: u16 = 51820;

fn secret(n: u8) -> [u8; 32] {
    let mut k = [n; 32];
    k[0] &= 248;
    k
}

fn public(n: u8) -> [u8; 32] {
    keys::public_of(&boringtun::x25519::StaticSecret::from(secret(n))).to_bytes()
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip").arg("-n").arg(ns).args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts side `me` (1 or 2) in `ns`, on a runtime whose threads live in that namespace.
fn side(
    ns: &str,
    me: u8,
    peer_endpoint: Option<SocketAddr>,
) -> Result<(tokio::runtime::Runtime, UserspaceDevice)> {
    let other = 3 - me;
    let cfg = WgDeviceConfig {
        interface: "wg0".into(),
        listen_port: PORT,
        private_key: secret(me),
        mtu: tunnel_mtu(1500, Encap::WireguardV4).context("mtu")?,
        peers: vec![WgPeerConfig {
            id: format!("gw{other}"),
            public_key: public(other),
            endpoint: peer_endpoint,
            allowed_ips: vec![format!("10.{other}.0.0/16").parse()?],
            persistent_keepalive: None,
        }],
    };
    let path = format!("/run/netns/{ns}");
    let started = std::thread::scope(|s| {
        s.spawn(|| -> Result<_> {
            let f = File::open(&path).with_context(|| path.clone())?;
            // SAFETY: setns with a valid namespace fd moves only this thread; the runtime's
            // threads are spawned from it and inherit the namespace.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let dev = rt.block_on(UserspaceDevice::start(&cfg))?;
            Ok((rt, dev))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("device thread panicked"))?
    })?;
    ip(
        ns,
        &["addr", "add", &format!("10.{me}.0.1/32"), "dev", "wg0"],
    )?;
    ip(
        ns,
        &[
            "route",
            "add",
            &format!("10.{other}.0.0/16"),
            "dev",
            "wg0",
            "src",
            &format!("10.{me}.0.1"),
        ],
    )?;
    Ok(started)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ns_a, ns_b, under_a, under_b] = args.as_slice() else {
        bail!("usage: wg_pair NS_A NS_B UNDERLAY_A UNDERLAY_B");
    };
    let _: Ipv4Addr = under_a.parse().context("UNDERLAY_A")?;
    let b: Ipv4Addr = under_b.parse().context("UNDERLAY_B")?;
    let _a = side(ns_a, 1, Some(SocketAddr::from((b, PORT))))?;
    let _b = side(ns_b, 2, None)?;
    println!("ready");
    let mut sink = Vec::new();
    // Blocks until the benchmark closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}
