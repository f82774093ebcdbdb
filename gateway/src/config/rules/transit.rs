//! `[wireguard]`, `[[peer]]` and `[peering]`: gateway-to-gateway transit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;

use super::super::raw;
use super::super::{PeerCfg, PeeringCfg, Transit, WgBackendChoice, WireguardCfg};
use super::{iface, is_label, root, Ctx};

/// Default WireGuard port.
const WG_PORT: u16 = 51820;
/// Default peering port.
const PEERING_PORT: u16 = 4433;

fn socket(c: &mut Ctx<'_>, path: &super::KeyPath, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.err(
                path,
                format!("{s:?} is not an address with a port (e.g. \"192.0.2.2:51820\" or \"[2001:db8::2]:51820\")"),
            );
            None
        }
    }
}

fn prefixes(c: &mut Ctx<'_>, path: &super::KeyPath, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (n, s) in list.iter().enumerate() {
        match s.parse::<IpNet>() {
            Ok(net) if net != net.trunc() => c.err(
                &path.idx(n),
                format!("{s}: host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => out.push(net),
            Err(_) => c.err(&path.idx(n), format!("{s:?} is not a CIDR")),
        }
    }
    out
}

/// Checks the three sections together; `None` when transit is not configured (or broken: the
/// problems are then in `c`).
pub(super) fn validate(
    c: &mut Ctx<'_>,
    wg: Option<raw::Wireguard>,
    peers: Vec<raw::Peer>,
    peering: Option<raw::Peering>,
    gateway_name: &str,
) -> Option<Transit> {
    let (wg, peering) = match (wg, peering) {
        (None, None) => {
            if !peers.is_empty() {
                c.err(
                    &root("peer"),
                    "[[peer]] needs the [wireguard] and [peering] sections",
                );
            }
            return None;
        }
        (Some(_), None) => {
            c.err(
                &root("wireguard"),
                "[wireguard] needs a [peering] section too",
            );
            return None;
        }
        (None, Some(_)) => {
            c.err(
                &root("peering"),
                "[peering] needs a [wireguard] section too",
            );
            return None;
        }
        (Some(w), Some(p)) => (w, p),
    };
    let before = c.problems.len();

    let w = root("wireguard");
    let interface = wg.interface.unwrap_or_else(|| "meshgw-wg".into());
    iface(c, w.key("interface"), &interface);
    let listen_port = wg.listen_port.unwrap_or(WG_PORT);
    if listen_port == 0 {
        c.err(&w.key("listen_port"), "port 0 is not a port");
    }
    if let Some(m) = wg.mtu {
        if !(576..=65_440).contains(&m) {
            c.err(&w.key("mtu"), format!("{m} is outside 576..=65440"));
        }
    }
    let backend = match wg.backend.as_deref().unwrap_or("auto") {
        "auto" => WgBackendChoice::Auto,
        "kernel" => WgBackendChoice::Kernel,
        "userspace" => WgBackendChoice::Userspace,
        other => {
            c.err(
                &w.key("backend"),
                format!("{other:?}: expected \"auto\", \"kernel\" or \"userspace\""),
            );
            WgBackendChoice::Auto
        }
    };
    if !wg.private_key_file.is_absolute() {
        c.err(
            &w.key("private_key_file"),
            format!("{} must be an absolute path", wg.private_key_file.display()),
        );
    }

    let q = root("peering");
    let gateway_id = peering
        .gateway_id
        .unwrap_or_else(|| gateway_name.to_owned());
    if !is_label(&gateway_id, 63) {
        c.err(
            &q.key("gateway_id"),
            format!("{gateway_id:?}: use 1 to 63 of a-z, 0-9 and '-' (it is a DNS name in certificates)"),
        );
    }

    let mut out_peers: Vec<PeerCfg> = Vec::new();
    let mut ids = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (n, raw) in peers.iter().enumerate() {
        let p = root("peer").idx(n);
        if !is_label(&raw.id, 63) {
            c.err(
                &p.key("id"),
                format!("{:?}: use 1 to 63 of a-z, 0-9 and '-'", raw.id),
            );
        } else if raw.id == gateway_id {
            c.err(
                &p.key("id"),
                format!("{:?} is this gateway's own id", raw.id),
            );
        } else if !ids.insert(raw.id.clone()) {
            c.err(&p.key("id"), format!("peer {:?} is defined twice", raw.id));
        }
        let public_key = match meshgw_tunnel::wireguard::keys::parse_key(&raw.public_key, "key") {
            Ok(k) => {
                if !keys.insert(k) {
                    c.err(&p.key("public_key"), "another peer has the same public key");
                }
                k
            }
            Err(_) => {
                c.err(
                    &p.key("public_key"),
                    "not a base64 32-byte WireGuard key (as `wg pubkey` prints it)",
                );
                [0; 32]
            }
        };
        let endpoint = raw
            .endpoint
            .as_ref()
            .and_then(|s| socket(c, &p.key("endpoint"), s));
        let quic_endpoint = raw
            .quic_endpoint
            .as_ref()
            .and_then(|s| socket(c, &p.key("quic_endpoint"), s));
        let allowed_ips = prefixes(c, &p.key("allowed_ips"), &raw.allowed_ips);
        out_peers.push(PeerCfg {
            id: raw.id.clone(),
            public_key,
            endpoint,
            allowed_ips,
            persistent_keepalive: raw.persistent_keepalive.filter(|k| *k > 0),
            quic_endpoint,
        });
    }

    let listen = match &peering.listen {
        Some(s) => socket(c, &q.key("listen"), s),
        None => Some(SocketAddr::from(([0, 0, 0, 0], PEERING_PORT))),
    };
    for (k, path) in [
        ("cert_file", &peering.cert_file),
        ("key_file", &peering.key_file),
    ] {
        if !path.is_absolute() {
            c.err(
                &q.key(k),
                format!("{} must be an absolute path", path.display()),
            );
        }
    }
    let mut pinned = BTreeMap::new();
    for (id, fp) in &peering.pinned {
        let path = q.key("pinned").key(id);
        if !ids.contains(id) {
            c.err(&path, format!("{id:?} is not a [[peer]] id"));
        }
        match meshgw_tunnel::peering::tls::parse_fingerprint(id, fp) {
            Ok(f) => {
                pinned.insert(id.clone(), f);
            }
            Err(e) => c.err(&path, e.to_string()),
        }
    }
    match (peering.ca_files.is_empty(), peering.pinned.is_empty()) {
        (true, true) => c.err(
            &q.key("ca_files"),
            "give ca_files (certificates under a CA) or pinned (a fingerprint per peer)",
        ),
        (false, false) => c.err(&q.key("pinned"), "give either ca_files or pinned, not both"),
        _ => {}
    }
    if !peering.pinned.is_empty() {
        for id in &ids {
            if !peering.pinned.contains_key(id) {
                c.err(&q.key("pinned"), format!("no fingerprint for peer {id:?}"));
            }
        }
    }
    let hold_time_seconds = peering.hold_time_seconds.unwrap_or(10);
    if !(3..=300).contains(&hold_time_seconds) {
        c.err(
            &q.key("hold_time_seconds"),
            format!("{hold_time_seconds} is outside 3..=300"),
        );
    }
    let announce = prefixes(c, &q.key("announce"), &peering.announce);

    if c.problems.len() != before {
        return None;
    }
    Some(Transit {
        wireguard: WireguardCfg {
            interface,
            listen_port,
            private_key_file: wg.private_key_file,
            mtu: wg.mtu,
            backend,
        },
        peers: out_peers,
        peering: PeeringCfg {
            gateway_id,
            listen: listen?,
            cert_file: peering.cert_file,
            key_file: peering.key_file,
            ca_files: peering.ca_files,
            pinned,
            hold_time_seconds,
            announce,
        },
    })
}
