//! The rtnetlink reconcilers against the real kernel, each test in its own network namespace.
//!
//! These need root and panic with "needs root" otherwise; they never pass silently. What they
//! check above all is idempotence: a second reconcile with the same desired state changes
//! nothing, also from a fresh connection (a restarted daemon).
// A panic is how a test reports failure, helpers included.
#![allow(clippy::unwrap_used)]

#[path = "../src/netlink/mod.rs"]
mod netlink;
mod netlink_netns;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use meshgw_tunnel::vxlan::{ensure_vxlan, VxlanSpec};
use netlink::{
    sysctl, Changes, DesiredNeighbour, DesiredRoute, IpEncap, Netlink, NetlinkError, RTPROT_MESHGW,
};
use netlink_netns::{parse_mac, poll, Netns};
use serde_json::Value;

fn ch(added: usize, removed: usize) -> Changes {
    Changes { added, removed }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs_of(ns: &Netns, dev: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[test]
fn dummy_device_and_addresses() {
    let ns = Netns::new("addr");
    // ifb: this machine's kernel has no dummy driver (CONFIG_DUMMY unset).
    ns.ip(&["link", "add", "other0", "type", "ifb"]);
    ns.ip(&["addr", "add", "10.200.0.50/32", "dev", "other0"]);
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    let vips = ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let idx = nl.ensure_dummy("vips0").await.unwrap();
        assert_eq!(
            nl.ensure_dummy("vips0").await.unwrap(),
            idx,
            "ensure_dummy is idempotent"
        );
        let link = nl.link("vips0").await.unwrap().expect("vips0 exists");
        assert_eq!(link.index, idx);
        assert_eq!(link.name, "vips0");
        assert!(link.up, "dummy is up");
        assert_ne!(link.mac, [0; 6]);
        assert!(nl.link("absent0").await.unwrap().is_none());

        // A device of that name but another kind is refused, not taken over.
        match nl.ensure_dummy("veth0").await {
            Err(NetlinkError::WrongKind { found, .. }) => assert_eq!(found, "veth"),
            other => panic!("expected WrongKind, got {other:?}"),
        }

        let desired: BTreeSet<IpAddr> =
            [ip("10.200.0.10"), ip("fd00:200::10"), ip("10.200.0.50")].into();
        assert_eq!(
            nl.reconcile_addresses(idx, &desired).await.unwrap(),
            ch(3, 0)
        );
        assert_eq!(
            nl.reconcile_addresses(idx, &desired).await.unwrap(),
            ch(0, 0),
            "second run changes nothing"
        );
        idx
    });
    assert_eq!(
        addrs_of(&ns, "vips0"),
        ["10.200.0.10/32", "10.200.0.50/32", "fd00:200::10/128"]
            .map(String::from)
            .into()
    );
    // IPv6 VIPs are usable at once: no duplicate address detection.
    let v6 = ns.ip_json(&["-6", "addr", "show", "dev", "vips0", "scope", "global"]);
    let info = &v6[0]["addr_info"][0];
    assert_eq!(info["nodad"], true, "{info}");
    assert!(info.get("tentative").is_none(), "{info}");

    // Stale state made by hand: an extra address, and a VIP with the wrong prefix length.
    ns.ip(&["addr", "add", "10.200.0.99/32", "dev", "vips0"]);
    ns.ip(&["addr", "add", "10.200.0.11/24", "dev", "vips0"]);
    ns.block_on(|| async {
        // A fresh connection, as after a restart: it finds the addresses it owns from the kernel.
        let nl = Netlink::connect().unwrap();
        let desired: BTreeSet<IpAddr> =
            [ip("10.200.0.10"), ip("fd00:200::10"), ip("10.200.0.11")].into();
        // Removed: .50, .99, .11/24; added: .11/32.
        assert_eq!(
            nl.reconcile_addresses(vips, &desired).await.unwrap(),
            ch(1, 3)
        );
        assert_eq!(
            nl.reconcile_addresses(vips, &desired).await.unwrap(),
            ch(0, 0)
        );
        let v4 = nl.ipv4_addrs(vips).await.unwrap();
        assert_eq!(
            v4.iter().copied().collect::<BTreeSet<_>>(),
            [Ipv4Addr::new(10, 200, 0, 10), Ipv4Addr::new(10, 200, 0, 11)].into()
        );
        assert_eq!(
            nl.reconcile_addresses(vips, &BTreeSet::new())
                .await
                .unwrap(),
            ch(0, 3)
        );
    });
    assert!(addrs_of(&ns, "vips0").is_empty());
    // Only the given device was touched.
    assert_eq!(
        addrs_of(&ns, "other0"),
        ["10.200.0.50/32".to_owned()].into()
    );
    // The kernel's own link-local address survives an empty reconcile.
    ns.ip(&["link", "set", "other0", "up"]);

    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert!(nl.delete_link("vips0").await.unwrap());
        assert!(!nl.delete_link("vips0").await.unwrap());
        assert!(nl.link("vips0").await.unwrap().is_none());
        // set_up on a down device.
        let idx = nl.link("veth0").await.unwrap().unwrap().index;
        nl.set_up(idx).await.unwrap();
        assert!(nl.link("veth0").await.unwrap().unwrap().up);
    });
}

#[test]
fn vip_addresses_on_an_interface_with_its_own() {
    let ns = Netns::new("addr-in");
    ns.ip(&[
        "link", "add", "legacy", "type", "veth", "peer", "name", "peer0",
    ]);
    ns.ip(&["addr", "add", "10.100.0.1/24", "dev", "legacy"]);
    ns.ip(&["addr", "add", "fd00:100::1/64", "dev", "legacy", "nodad"]);
    // A leftover VIP of an earlier run.
    ns.ip(&["addr", "add", "10.200.0.77/32", "dev", "legacy"]);
    ns.ip(&["link", "set", "legacy", "up"]);
    let legacy = ns.ifindex("legacy");
    let pool: Vec<ipnet::IpNet> = vec![
        "10.200.0.0/24".parse().unwrap(),
        "fd00:200::/120".parse().unwrap(),
    ];
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let desired: BTreeSet<IpAddr> = [ip("10.200.0.10"), ip("fd00:200::10")].into();
        assert_eq!(
            nl.reconcile_addresses_in(legacy, &desired, &pool)
                .await
                .unwrap(),
            ch(2, 1)
        );
        assert_eq!(
            nl.reconcile_addresses_in(legacy, &desired, &pool)
                .await
                .unwrap(),
            ch(0, 0)
        );
    });
    assert_eq!(
        addrs_of(&ns, "legacy"),
        [
            "10.100.0.1/24",
            "10.200.0.10/32",
            "fd00:100::1/64",
            "fd00:200::10/128"
        ]
        .map(String::from)
        .into()
    );
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(
            nl.reconcile_addresses_in(legacy, &BTreeSet::new(), &pool)
                .await
                .unwrap(),
            ch(0, 2)
        );
    });
    assert_eq!(
        addrs_of(&ns, "legacy"),
        ["10.100.0.1/24", "fd00:100::1/64"].map(String::from).into(),
        "the interface's own addresses are left alone"
    );
}

#[test]
fn link_local_addresses_are_left_alone() {
    let ns = Netns::new("ll");
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let idx = nl.ensure_dummy("vips0").await.unwrap();
        // The kernel adds an fe80:: address to the dummy once it is up (addrgenmode eui64).
        let lladdr = poll(Duration::from_secs(3), || {
            let out = std::process::Command::new("ip")
                .args(["-6", "addr", "show", "dev", "vips0", "scope", "link"])
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains("fe80::").then_some(())
        });
        assert!(lladdr.is_some(), "no link-local address appeared");
        let desired: BTreeSet<IpAddr> = [ip("fd00:200::1")].into();
        assert_eq!(
            nl.reconcile_addresses(idx, &desired).await.unwrap(),
            ch(1, 0)
        );
        assert_eq!(
            nl.reconcile_addresses(idx, &desired).await.unwrap(),
            ch(0, 0)
        );
    });
    let v = ns.ip_json(&["-6", "addr", "show", "dev", "vips0", "scope", "link"]);
    assert!(
        !v[0]["addr_info"].as_array().unwrap().is_empty(),
        "link-local address kept"
    );
}

/// Two namespaces joined by a veth pair: `gw` (device `legacy`) and `host` (device `eth0`).
fn legacy_pair() -> (Netns, Netns) {
    let gw = Netns::new("gw");
    let host = Netns::new("host");
    gw.ip(&[
        "link", "add", "legacy", "type", "veth", "peer", "name", "eth0", "netns", &host.name,
    ]);
    gw.ip(&["addr", "add", "fd00:100::1/64", "dev", "legacy", "nodad"]);
    gw.ip(&["link", "set", "legacy", "up"]);
    host.ip(&["addr", "add", "fd00:100::2/64", "dev", "eth0", "nodad"]);
    host.ip(&["link", "set", "eth0", "up"]);
    host.ip(&["-6", "route", "add", "fd00:200::/120", "dev", "eth0"]);
    (gw, host)
}

/// The host's neighbour entry for `addr` on eth0, once resolved: its MAC.
fn resolve_from_host(host: &Netns, addr: &str, wait: Duration) -> Option<[u8; 6]> {
    neighbour_from_host(host, "-6", addr, wait)
}

/// The same for IPv4 (`family` "-4") or IPv6 ("-6"). The ping sends a real ARP request or
/// neighbour solicitation first; whether the ping itself is answered does not matter here.
fn neighbour_from_host(host: &Netns, family: &str, addr: &str, wait: Duration) -> Option<[u8; 6]> {
    let _ = host.exec(&["ping", family, "-c", "1", "-W", "1", addr]);
    poll(wait, || {
        let v = host.ip_json(&[family, "neigh", "show", "dev", "eth0"]);
        v.as_array()?
            .iter()
            .find(|n| n["dst"] == addr && n.get("lladdr").is_some())
            .map(|n| parse_mac(n["lladdr"].as_str().unwrap()))
    })
}

#[test]
fn proxy_ndp_answers_for_vips() {
    let (gw, host) = legacy_pair();
    let legacy = gw.ifindex("legacy");
    let legacy_mac = gw.mac("legacy");
    let owned: Vec<ipnet::Ipv6Net> = vec!["fd00:200::/120".parse().unwrap()];
    // Somebody else's proxy entries: one inside the pool, one outside it.
    gw.ip(&[
        "-6",
        "neigh",
        "add",
        "proxy",
        "fd00:200::99",
        "dev",
        "legacy",
    ]);
    gw.ip(&[
        "-6",
        "neigh",
        "add",
        "proxy",
        "fd00:300::1",
        "dev",
        "legacy",
    ]);
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let desired: BTreeSet<Ipv6Addr> = [
            "fd00:200::10".parse().unwrap(),
            "fd00:200::11".parse().unwrap(),
        ]
        .into();
        assert_eq!(
            nl.reconcile_proxy_ndp(legacy, &desired, &owned)
                .await
                .unwrap(),
            ch(2, 1)
        );
        assert_eq!(
            nl.reconcile_proxy_ndp(legacy, &desired, &owned)
                .await
                .unwrap(),
            ch(0, 0)
        );
        // proxy_ndp on, but forwarding still off.
        assert!(sysctl::proxy_ndp("legacy", true).unwrap());
        assert!(
            !sysctl::proxy_ndp("legacy", true).unwrap(),
            "second write is no change"
        );
        assert_eq!(sysctl::get("net/ipv6/conf/legacy/forwarding").unwrap(), "0");
    });
    let shown = gw.ip(&["-6", "neigh", "show", "proxy", "dev", "legacy"]);
    assert!(
        shown.contains("fd00:200::10") && shown.contains("fd00:200::11"),
        "{shown}"
    );
    assert!(
        !shown.contains("fd00:200::99"),
        "stale entry in the pool removed: {shown}"
    );
    assert!(
        shown.contains("fd00:300::1"),
        "entry outside the pool kept: {shown}"
    );

    // Kernel behaviour the daemon depends on: without forwarding on the device, proxy entries
    // are not answered.
    assert_eq!(
        resolve_from_host(&host, "fd00:200::10", Duration::from_millis(1500)),
        None
    );

    gw.run(|| {
        assert!(sysctl::ipv6_forwarding(true).unwrap());
        assert_eq!(
            sysctl::get("net/ipv6/conf/legacy/forwarding").unwrap(),
            "1",
            "all/forwarding propagates"
        );
    });
    host.ip(&["-6", "neigh", "flush", "dev", "eth0"]);
    assert_eq!(
        resolve_from_host(&host, "fd00:200::11", Duration::from_secs(3)),
        Some(legacy_mac)
    );

    // Withdrawn VIPs stop being answered; the foreign entry outside the pool stays.
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(
            nl.reconcile_proxy_ndp(legacy, &BTreeSet::new(), &owned)
                .await
                .unwrap(),
            ch(0, 2)
        );
        assert_eq!(
            nl.reconcile_proxy_ndp(legacy, &BTreeSet::new(), &owned)
                .await
                .unwrap(),
            ch(0, 0)
        );
    });
    let shown = gw.ip(&["-6", "neigh", "show", "proxy", "dev", "legacy"]);
    assert_eq!(shown.trim(), "fd00:300::1 proxy", "{shown}");
}

/// A namespace with an underlay veth `mesh0` (172.18.0.1/24) and an external VXLAN device
/// `vx0` on it, as the daemon sets them up.
fn mesh_ns(tag: &str) -> (Netns, u32, u32) {
    let ns = Netns::new(tag);
    ns.ip(&[
        "link", "add", "mesh0", "type", "veth", "peer", "name", "sw0",
    ]);
    ns.ip(&["addr", "add", "172.18.0.1/24", "dev", "mesh0"]);
    ns.ip(&["link", "set", "mesh0", "up"]);
    ns.ip(&["link", "set", "sw0", "up"]);
    let mesh = ns.ifindex("mesh0");
    let vx = ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let spec = VxlanSpec {
            name: "vx0".to_owned(),
            port: 8472,
            local: Some(Ipv4Addr::new(172, 18, 0, 1)),
            lower: Some(mesh),
            mac: Some([0x02, 0x6d, 0x67, 0, 0, 1]),
            mtu: None,
        };
        ensure_vxlan(nl.handle(), &spec).await.unwrap()
    });
    (ns, mesh, vx)
}

fn encap(dst: [u8; 4]) -> Option<IpEncap> {
    Some(IpEncap {
        id: 2,
        dst: Ipv4Addr::from(dst),
    })
}

/// `ip -d route show proto 217` of both families, one route per line.
fn our_routes(ns: &Netns) -> Vec<String> {
    let proto = RTPROT_MESHGW.to_string();
    let mut lines: Vec<String> = Vec::new();
    for fam in ["-4", "-6"] {
        let out = ns.ip(&[fam, "-d", "route", "show", "proto", &proto]);
        lines.extend(
            out.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    lines
}

fn route_line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    let hits: Vec<&String> = lines
        .iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(prefix))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one route for {prefix} in {lines:#?}"
    );
    hits[0]
}

#[test]
fn routes_with_lwtunnel_encap() {
    let (ns, mesh, vx) = mesh_ns("route");
    // Routes of other protocols: never touched, even with an empty desired set.
    ns.ip(&[
        "route",
        "add",
        "10.99.0.0/16",
        "dev",
        "mesh0",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.98.0.0/16",
        "via",
        "172.18.0.254",
        "dev",
        "mesh0",
        "proto",
        "boot",
    ]);
    let desired = vec![
        DesiredRoute {
            dst: "10.244.1.0/24".parse().unwrap(),
            oif: vx,
            via: Some(ip("10.244.1.130")),
            onlink: true,
            encap: encap([172, 18, 0, 11]),
        },
        DesiredRoute {
            dst: "fd00:244:1::/64".parse().unwrap(),
            oif: vx,
            via: Some(ip("fd00:244:1::1")),
            onlink: true,
            encap: encap([172, 18, 0, 11]),
        },
        DesiredRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            oif: vx,
            via: Some(ip("10.244.2.5")),
            onlink: true,
            encap: encap([172, 18, 0, 12]),
        },
        // IPv4 route with an IPv6 next hop (RTA_VIA).
        DesiredRoute {
            dst: "10.244.3.0/24".parse().unwrap(),
            oif: vx,
            via: Some(ip("fe80::6d67:1")),
            onlink: true,
            encap: encap([172, 18, 0, 13]),
        },
        // A plain on-link route without encap.
        DesiredRoute {
            dst: "10.250.0.0/16".parse().unwrap(),
            oif: mesh,
            via: None,
            onlink: false,
            encap: None,
        },
    ];
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(nl.reconcile_routes(&desired).await.unwrap(), ch(5, 0));
        assert_eq!(
            nl.reconcile_routes(&desired).await.unwrap(),
            ch(0, 0),
            "second run changes nothing"
        );
    });
    let lines = our_routes(&ns);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let r1 = route_line(&lines, "10.244.1.0/24");
    assert!(
        r1.contains("encap ip id 2 src 0.0.0.0 dst 172.18.0.11"),
        "{r1}"
    );
    assert!(
        r1.contains("via 10.244.1.130 dev vx0") && r1.contains("onlink"),
        "{r1}"
    );
    let r6 = route_line(&lines, "fd00:244:1::/64");
    // An IPv6 route through an IPv4 underlay: the kernel keeps the IPv4 encap.
    assert!(
        r6.contains("encap ip id 2 src 0.0.0.0 dst 172.18.0.11"),
        "{r6}"
    );
    assert!(
        r6.contains("via fd00:244:1::1") && r6.contains("onlink"),
        "{r6}"
    );
    let r3 = route_line(&lines, "10.244.3.0/24");
    assert!(
        r3.contains("via inet6 fe80::6d67:1") && r3.contains("dst 172.18.0.13"),
        "{r3}"
    );
    let plain = route_line(&lines, "10.250.0.0/16");
    assert!(
        !plain.contains("encap") && plain.contains("scope link"),
        "{plain}"
    );
    let vx_routes = ns.ip(&["-d", "route", "show", "dev", "vx0"]);
    assert!(
        vx_routes.contains("10.244.1.0/24"),
        "routes are on the VXLAN device: {vx_routes}"
    );

    // A node moved (new tunnel endpoint) and a node left: one route rewritten in place, one
    // removed; a fresh connection, as after a restart.
    let mut next = desired.clone();
    next[0].encap = encap([172, 18, 0, 21]);
    next.remove(2);
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(nl.reconcile_routes(&next).await.unwrap(), ch(1, 1));
        assert_eq!(nl.reconcile_routes(&next).await.unwrap(), ch(0, 0));
    });
    let lines = our_routes(&ns);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(route_line(&lines, "10.244.1.0/24").contains("dst 172.18.0.21"));

    // A desired route whose prefix is taken by a route of another protocol is refused by the
    // kernel rather than replacing that route, and does not hold up the others.
    let mut clash = next.clone();
    clash[0].encap = encap([172, 18, 0, 31]);
    clash.push(DesiredRoute {
        dst: "10.99.0.0/16".parse().unwrap(),
        oif: vx,
        via: Some(ip("10.99.0.1")),
        onlink: true,
        encap: encap([172, 18, 0, 11]),
    });
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        let err = nl.reconcile_routes(&clash).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        // Everything but the clash was applied.
        assert_eq!(nl.reconcile_routes(&clash[..4]).await.unwrap(), ch(0, 0));
        // IPv6 with an IPv4 gateway is refused before reaching the kernel.
        let bad = vec![DesiredRoute {
            dst: "fd00:244:9::/64".parse().unwrap(),
            oif: vx,
            via: Some(ip("10.244.9.1")),
            onlink: true,
            encap: None,
        }];
        assert!(matches!(
            nl.reconcile_routes(&bad).await,
            Err(NetlinkError::Invalid { .. })
        ));
        // Nothing desired: all of ours go, the others stay.
        assert_eq!(nl.reconcile_routes(&[]).await.unwrap(), ch(0, 4));
        assert_eq!(nl.reconcile_routes(&[]).await.unwrap(), ch(0, 0));
    });
    assert!(our_routes(&ns).is_empty());
    let all = ns.ip(&["route", "show"]);
    assert!(all.contains("10.99.0.0/16 dev mesh0 proto static"), "{all}");
    // proto boot is the default and not printed.
    assert!(
        all.contains("10.98.0.0/16 via 172.18.0.254 dev mesh0"),
        "{all}"
    );
}

#[test]
fn permanent_neighbours_on_the_vxlan_device() {
    let (ns, _mesh, vx) = mesh_ns("neigh");
    let mac1 = [0x02, 0xaa, 0, 0, 0, 1];
    let mac2 = [0x02, 0xaa, 0, 0, 0, 2];
    // Not ours to keep: a permanent entry nobody wants any more; not ours at all: a learnt one.
    ns.ip(&[
        "neigh",
        "add",
        "10.244.9.9",
        "lladdr",
        "02:aa:00:00:00:09",
        "dev",
        "vx0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "10.244.8.8",
        "lladdr",
        "02:aa:00:00:00:08",
        "dev",
        "vx0",
        "nud",
        "stale",
    ]);
    let desired = vec![
        DesiredNeighbour {
            ip: ip("10.244.1.130"),
            mac: mac1,
        },
        DesiredNeighbour {
            ip: ip("fd00:244:1::1"),
            mac: mac1,
        },
        DesiredNeighbour {
            ip: ip("10.244.2.5"),
            mac: mac2,
        },
    ];
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(
            nl.reconcile_neighbours(vx, &desired).await.unwrap(),
            ch(3, 1)
        );
        assert_eq!(
            nl.reconcile_neighbours(vx, &desired).await.unwrap(),
            ch(0, 0)
        );
    });
    let v = ns.ip_json(&["neigh", "show", "dev", "vx0"]);
    let entries: BTreeSet<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap().to_owned(),
                n["lladdr"].as_str().unwrap_or("").to_owned(),
                n["state"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |ip: &str, mac: &str, st: &str| (ip.to_owned(), mac.to_owned(), st.to_owned());
    assert_eq!(
        entries,
        [
            expect("10.244.1.130", "02:aa:00:00:00:01", "PERMANENT"),
            expect("10.244.2.5", "02:aa:00:00:00:02", "PERMANENT"),
            expect("10.244.8.8", "02:aa:00:00:00:08", "STALE"),
            expect("fd00:244:1::1", "02:aa:00:00:00:01", "PERMANENT"),
        ]
        .into()
    );

    // A node's MAC changes: rewritten in place. A learnt entry for a desired address is taken over.
    let next = vec![
        DesiredNeighbour {
            ip: ip("10.244.1.130"),
            mac: mac2,
        },
        DesiredNeighbour {
            ip: ip("10.244.8.8"),
            mac: mac1,
        },
    ];
    ns.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(nl.reconcile_neighbours(vx, &next).await.unwrap(), ch(2, 2));
        assert_eq!(nl.reconcile_neighbours(vx, &next).await.unwrap(), ch(0, 0));
        assert_eq!(nl.reconcile_neighbours(vx, &[]).await.unwrap(), ch(0, 2));
    });
    let left = ns.ip(&["neigh", "show", "dev", "vx0", "nud", "permanent"]);
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn managed_neighbour_and_route_get() {
    let gw = Netns::new("mgd");
    let node = Netns::new("node");
    gw.ip(&[
        "link", "add", "mesh0", "type", "veth", "peer", "name", "eth0", "netns", &node.name,
    ]);
    gw.ip(&["addr", "add", "172.18.0.1/24", "dev", "mesh0"]);
    gw.ip(&["addr", "add", "fd00:18::1/64", "dev", "mesh0", "nodad"]);
    gw.ip(&["link", "set", "mesh0", "up"]);
    gw.ip(&["route", "add", "10.50.0.0/16", "via", "172.18.0.11"]);
    node.ip(&["addr", "add", "172.18.0.11/24", "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    gw.ip(&[
        "neigh",
        "add",
        "172.18.0.12",
        "lladdr",
        "02:aa:00:00:00:12",
        "dev",
        "mesh0",
        "nud",
        "permanent",
    ]);
    let mesh = gw.ifindex("mesh0");
    let node_mac = node.mac("eth0");
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(nl.route_get(ip("172.18.0.11")).await.unwrap(), (mesh, None));
        assert_eq!(
            nl.route_get(ip("10.50.1.1")).await.unwrap(),
            (mesh, Some(ip("172.18.0.11")))
        );
        assert_eq!(nl.route_get(ip("fd00:18::11")).await.unwrap(), (mesh, None));
        let err = nl.route_get(ip("192.0.2.1")).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");

        nl.ensure_managed_neighbour(mesh, ip("172.18.0.11"))
            .await
            .unwrap();
        nl.ensure_managed_neighbour(mesh, ip("172.18.0.11"))
            .await
            .unwrap();
        // Nobody answers for this one: the entry exists, managed, and keeps being probed.
        nl.ensure_managed_neighbour(mesh, ip("172.18.0.99"))
            .await
            .unwrap();
        // A static entry configured by hand is left static.
        nl.ensure_managed_neighbour(mesh, ip("172.18.0.12"))
            .await
            .unwrap();
    });
    let entry = |addr: &str| -> Option<Value> {
        let v = gw.ip_json(&["-4", "neigh", "show", "dev", "mesh0"]);
        v.as_array()?.iter().find(|n| n["dst"] == addr).cloned()
    };
    let resolved = poll(Duration::from_secs(3), || {
        entry("172.18.0.11").filter(|n| n["lladdr"].as_str().is_some())
    })
    .expect("node resolved");
    assert_eq!(parse_mac(resolved["lladdr"].as_str().unwrap()), node_mac);
    let detail = gw.ip(&["-d", "neigh", "show", "dev", "mesh0"]);
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("172.18.0.11 ") && l.contains("managed")),
        "the kernel shows the entry as managed: {detail}"
    );
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("172.18.0.99 ") && l.contains("managed")),
        "an unanswered address has a managed entry too: {detail}"
    );
    assert!(
        detail.lines().any(|l| l.starts_with("172.18.0.12 ")
            && l.contains("PERMANENT")
            && !l.contains("managed")),
        "a permanent entry stays permanent: {detail}"
    );
    // Once resolved, another call leaves it as it is.
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_managed_neighbour(mesh, ip("172.18.0.11"))
            .await
            .unwrap();
    });
    let again = entry("172.18.0.11").unwrap();
    assert_eq!(again["lladdr"], resolved["lladdr"]);
}

#[test]
fn sysctls_are_per_namespace() {
    let ns = Netns::new("sysctl");
    ns.ip(&["link", "add", "legacy", "type", "ifb"]);
    ns.run(|| {
        assert_eq!(
            sysctl::get("net/ipv4/ip_forward").unwrap(),
            "0",
            "a fresh namespace does not forward"
        );
        assert!(sysctl::ipv4_forwarding(true).unwrap());
        assert!(
            !sysctl::ipv4_forwarding(true).unwrap(),
            "unchanged the second time"
        );
        assert!(sysctl::rp_filter("legacy", sysctl::RpFilter::Loose).unwrap());
        assert!(!sysctl::set("/proc/sys/net/ipv4/conf/legacy/rp_filter", "2").unwrap());
        assert!(sysctl::ipv6_forwarding_on("legacy", true).unwrap());
        assert!(sysctl::proxy_delay("legacy", 0).unwrap());
        assert!(sysctl::rp_filter("no-such-dev", sysctl::RpFilter::Loose).is_err());
        assert!(sysctl::set("net/../../etc/hostname", "x").is_err());
    });
    let out = ns.exec(&[
        "cat",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv4/conf/legacy/rp_filter",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n");
}

/// The host's ARP entry for `addr` on eth0, once resolved: its MAC.
fn arp_from_host(host: &Netns, addr: &str, wait: Duration) -> Option<[u8; 6]> {
    neighbour_from_host(host, "-4", addr, wait)
}

#[test]
fn anyip_pool_route_is_accepted_and_answered_by_arp() {
    let (gw, host) = legacy_pair();
    gw.ip(&["addr", "add", "10.100.0.1/24", "dev", "legacy"]);
    host.ip(&["addr", "add", "10.100.0.2/24", "dev", "eth0"]);
    host.ip(&["route", "add", "10.200.0.0/24", "dev", "eth0"]);
    let legacy = gw.ifindex("legacy");
    let legacy_mac = gw.mac("legacy");
    // As the appliance configures it: no ARP answers for addresses not on the receiving
    // interface, on every interface.
    gw.ip(&["link", "add", "other0", "type", "ifb"]);
    let sysctl_w = |k: &str, v: &str| {
        let out = gw.exec(&["sysctl", "-qw", &format!("{k}={v}")]);
        assert!(out.status.success(), "sysctl {k}={v}: {out:?}");
    };
    sysctl_w("net.ipv4.conf.all.arp_ignore", "1");
    let pool: Vec<ipnet::Ipv4Net> = vec!["10.200.0.0/24".parse().unwrap()];
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(
            nl.reconcile_local_routes(legacy, &pool).await.unwrap(),
            ch(1, 0)
        );
        assert_eq!(
            nl.reconcile_local_routes(legacy, &pool).await.unwrap(),
            ch(0, 0),
            "second run changes nothing"
        );
    });
    let local = gw.ip(&["route", "show", "table", "local", "proto", "217"]);
    assert!(local.contains("local 10.200.0.0/24 dev legacy"), "{local}");
    // With arp_ignore=1 in force the pool is not answered: that is what the sysctl fixes.
    assert_eq!(
        arp_from_host(&host, "10.200.0.7", Duration::from_secs(2)),
        None,
        "arp_ignore=1 hides addresses that only a local route owns"
    );
    gw.run(|| {
        assert!(sysctl::answer_arp_for_local_routes("legacy").unwrap());
        assert!(!sysctl::answer_arp_for_local_routes("legacy").unwrap());
        assert_eq!(sysctl::get("net/ipv4/conf/all/arp_ignore").unwrap(), "0");
        assert_eq!(sysctl::get("net/ipv4/conf/legacy/arp_ignore").unwrap(), "0");
        // Every other interface keeps what it did (the `all` value moved onto it).
        assert_eq!(sysctl::get("net/ipv4/conf/other0/arp_ignore").unwrap(), "1");
        assert_eq!(sysctl::get("net/ipv4/conf/lo/arp_ignore").unwrap(), "1");
        assert_eq!(
            sysctl::get("net/ipv4/conf/default/arp_ignore").unwrap(),
            "1"
        );
    });
    // A real ARP request from the host for a pool address: answered with the legacy MAC, and
    // the kernel accepts the address (the ping is answered).
    assert_eq!(
        arp_from_host(&host, "10.200.0.8", Duration::from_secs(3)),
        Some(legacy_mac)
    );
    let ping = host.exec(&["ping", "-4", "-c", "1", "-W", "2", "10.200.0.9"]);
    assert!(ping.status.success(), "{ping:?}");
    // The route goes: addresses of the pool are no longer the gateway's.
    gw.block_on(|| async {
        let nl = Netlink::connect().unwrap();
        assert_eq!(
            nl.reconcile_local_routes(legacy, &[]).await.unwrap(),
            ch(0, 1)
        );
    });
    assert!(gw
        .ip(&["route", "show", "table", "local", "proto", "217"])
        .trim()
        .is_empty());
    assert_eq!(
        arp_from_host(&host, "10.200.0.10", Duration::from_secs(2)),
        None
    );
}
