use super::*;

const DEMO: &str = include_str!("../../../config/demo.toml");

const MINIMAL: &str = r#"
[gateway]
name = "gw"

[interfaces]
legacy = "eth0"
mesh = "eth1"

[vips]
pool = ["10.200.0.0/24"]

[[node]]
name = "n1"
address = "172.18.0.11"

[[service]]
name = "web"
ports = [{ name = "http", port = 80, protocol = "tcp" }]

  [[service.backend]]
  address = "10.244.1.10"
  node = "n1"
"#;

fn problems(text: &str) -> Vec<Problem> {
    parse_str(text, "t.toml").expect_err("must fail").problems
}

/// The single problem at `key`, asserting its line.
fn at(text: &str, key: &str, line: usize) -> Problem {
    let ps = problems(text);
    let p = ps
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem at {key}: {ps:#?}"));
    assert_eq!(p.line, Some(line), "{p:?}");
    p.clone()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn shipped_files_validate() {
    let demo = parse_str(DEMO, "demo.toml").unwrap();
    assert_eq!(demo.nodes.len(), 2);
    assert_eq!(demo.services[0].backends.len(), 4);
    let def = parse_str(DEFAULT_TOML, "default.toml").unwrap();
    assert!(def.services.is_empty());
    assert_eq!(def.interfaces.xdp_mode, XdpMode::Auto);
}

#[test]
fn defaults_are_applied() {
    let c = parse_str(MINIMAL, "m.toml").unwrap();
    assert_eq!(c.gateway.identity, 2);
    assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/meshgw"));
    assert_eq!(
        c.gateway.bpf_pin_dir,
        PathBuf::from("/sys/fs/bpf/meshgw/gw")
    );
    assert_eq!(c.mesh.vxlan_port, 8472);
    assert_eq!(c.mesh.vxlan_device, "meshgw-vx");
    assert_eq!(c.interfaces.xdp_mode, XdpMode::Native);
    assert!(c.vips.announce);
    assert_eq!(c.services[0].namespace, "default");
    assert_eq!(
        c.services[0].vip4,
        Some(VipSpec::Auto),
        "vip4 = auto when neither is given"
    );
    assert_eq!(c.services[0].vip6, None);
    assert!(
        c.services[0].backends[0].ports.is_empty(),
        "no mapping: target port = frontend port"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let t = MINIMAL.replace("name = \"gw\"", "name = \"gw\"\ncolour = \"blue\"");
    let p = at(&t, "gateway.colour", line_of(&t, "colour"));
    assert!(p.message.contains("colour"), "{p:?}");
    let t = MINIMAL.replace("node = \"n1\"", "node = \"n1\"\nweight = 3");
    let p = at(&t, "service[0].backend[0].weight", line_of(&t, "weight"));
    assert!(
        p.message.contains("expected one of"),
        "names the allowed keys: {p:?}"
    );
    let t = MINIMAL.replace("[vips]", "[vipz]");
    let ps = problems(&t);
    assert!(ps[0].message.contains("vipz"), "{ps:?}");
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let t = MINIMAL.replace("port = 80", "port = \"eighty\"");
    let ps = problems(&t);
    assert_eq!(ps[0].line, Some(line_of(&t, "eighty")), "{ps:?}");
    let t = MINIMAL.replace("pool = [\"10.200.0.0/24\"]", "pool = \"10.200.0.0/24\"");
    assert_eq!(problems(&t)[0].key, "vips.pool");
}

#[test]
fn every_semantic_rule_points_at_its_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            MINIMAL.replace("node = \"n1\"", "node = \"n9\""),
            "service[0].backend[0].node",
            "node = \"n9\"",
        ),
        (
            MINIMAL.replace("mesh = \"eth1\"", "mesh = \"eth0\""),
            "interfaces.mesh",
            "mesh = \"eth0\"",
        ),
        (
            MINIMAL.replace("address = \"172.18.0.11\"", "address = \"fd00::1\""),
            "node[0].address",
            "fd00::1",
        ),
        (
            MINIMAL.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
            "service[0].ports[0].protocol",
            "sctp",
        ),
        (
            MINIMAL.replace("port = 80", "port = 70000"),
            "service[0].ports[0].port",
            "70000",
        ),
        (
            MINIMAL.replace("\"10.200.0.0/24\"", "\"10.200.0.1/24\""),
            "vips.pool[0]",
            "10.200.0.1/24",
        ),
        (
            MINIMAL.replace("name = \"web\"", "name = \"Web_1\""),
            "service[0].name",
            "Web_1",
        ),
        (
            MINIMAL.replace("address = \"10.244.1.10\"", "address = \"fd00:244::10\""),
            "service[0].backend[0].address",
            "fd00:244::10",
        ),
        (
            MINIMAL.replace("name = \"gw\"", "name = \"gw\"\nidentity = 0"),
            "gateway.identity",
            "identity = 0",
        ),
        (
            MINIMAL.replace("node = \"n1\"", "node = \"n1\"\nports = { https = 8443 }"),
            "service[0].backend[0].ports.https",
            "https",
        ),
        (
            MINIMAL.replace(
                "address = \"172.18.0.11\"",
                "address = \"172.18.0.11\"\nmac = \"01:00:5e:00:00:01\"",
            ),
            "node[0].mac",
            "01:00:5e",
        ),
        (
            MINIMAL.replace("[vips]", "[mesh]\nvxlan_port = 0\n\n[vips]"),
            "mesh.vxlan_port",
            "vxlan_port = 0",
        ),
        (
            MINIMAL.replace("name = \"web\"", "name = \"web\"\nvip6 = \"auto\""),
            "service[0].vip6",
            "vip6",
        ),
    ];
    for (text, key, needle) in cases {
        at(&text, key, line_of(&text, needle));
    }
}

#[test]
fn duplicate_static_vips_and_services_are_refused() {
    let two = format!(
        "{MINIMAL}\n[[service]]\nname = \"web\"\nvip4 = \"10.200.0.9\"\nports = [{{ name = \"h\", port = 81, protocol = \"tcp\" }}]\n\n[[service]]\nname = \"api\"\nvip4 = \"10.200.0.9\"\nports = [{{ name = \"h\", port = 82, protocol = \"tcp\" }}]\n"
    );
    let ps = problems(&two);
    assert!(
        ps.iter()
            .any(|p| p.key == "service[1].name" && p.message.contains("twice")),
        "{ps:#?}"
    );
    assert!(
        ps.iter()
            .any(|p| p.key == "service[2].vip4" && p.message.contains("already the VIP")),
        "{ps:#?}"
    );
}

#[test]
fn all_problems_are_reported_together_in_file_order() {
    let t = MINIMAL
        .replace("mesh = \"eth1\"", "mesh = \"eth0\"")
        .replace("node = \"n1\"", "node = \"n9\"")
        .replace("port = 80", "port = 0");
    let ps = problems(&t);
    assert_eq!(ps.len(), 3, "{ps:#?}");
    assert!(ps.windows(2).all(|w| w[0].line <= w[1].line));
    let shown = ConfigError {
        origin: "t.toml".into(),
        problems: ps,
    }
    .to_string();
    assert_eq!(shown.lines().count(), 3);
    assert!(shown.lines().all(|l| l.starts_with("t.toml:")), "{shown}");
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    let e = load_file(Path::new("/nonexistent/meshgw.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("/nonexistent/meshgw.toml: cannot read"),
        "{e}"
    );
}

const CLUSTERS: &str = r#"
[[cluster]]
name = "cluster3"
config_file = "/var/lib/cilium/clustermesh/cluster3"
server_name = "cluster3.mesh.cilium.io"

[[cluster]]
name = "cluster4"
endpoints = ["https://10.0.4.1:2379"]
trusted_ca_file = "/etc/meshgw/c4/ca.crt"
cert_file = "/etc/meshgw/c4/client.crt"
key_file = "/etc/meshgw/c4/client.key"

[[portal]]
namespace = "shop"
name = "web-*"

[[portal]]
labels = { "io.cilium/portal" = "true" }

[[portal]]
namespace = "shop"
name = "checkout"
vip4 = "10.200.0.50"

[dns]
domain = "Mesh.Example."
listen = ["10.100.0.1:53", "[fd00:100::1]:53"]
"#;

#[test]
fn clusters_portals_and_dns_parse() {
    let c = parse_str(&format!("{MINIMAL}{CLUSTERS}"), "c.toml").unwrap();
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(
        c.clusters[0].source,
        ClusterSource::CiliumConfig("/var/lib/cilium/clustermesh/cluster3".into())
    );
    assert_eq!(
        c.clusters[0].server_name.as_deref(),
        Some("cluster3.mesh.cilium.io")
    );
    assert!(
        matches!(&c.clusters[1].source, ClusterSource::Inline { endpoints, .. } if endpoints.len() == 1)
    );
    assert_eq!(c.portals.len(), 3);
    assert_eq!(
        (c.portals[0].cluster.as_str(), c.portals[0].name.as_str()),
        ("*", "web-*")
    );
    assert_eq!(
        c.portals[2].vip4,
        Some(VipSpec::Static("10.200.0.50".parse().unwrap()))
    );
    assert_eq!(c.dns.domain, "mesh.example");
    assert_eq!(c.dns.listen.as_ref().map(Vec::len), Some(2));
    assert_eq!(c.vips.withdraw_grace_seconds, 30);
}

#[test]
fn dns_defaults() {
    let c = parse_str(MINIMAL, "m.toml").unwrap();
    assert!(c.dns.enabled);
    assert_eq!(c.dns.domain, "mesh.local");
    assert_eq!(
        c.dns.listen, None,
        "default: the legacy interface's addresses"
    );
}

#[test]
fn cluster_and_portal_mistakes_point_at_their_keys() {
    let t = format!("{MINIMAL}{CLUSTERS}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            t.replace(
                "server_name = \"cluster3.mesh.cilium.io\"",
                "endpoints = [\"https://x:2379\"]",
            ),
            "cluster[0].config_file",
            "config_file = \"/var/lib/cilium",
        ),
        (
            t.replace("\"https://10.0.4.1:2379\"", "\"http://10.0.4.1:2379\""),
            "cluster[1].endpoints[0]",
            "http://10.0.4.1",
        ),
        (
            t.replace("\"/etc/meshgw/c4/ca.crt\"", "\"c4/ca.crt\""),
            "cluster[1].trusted_ca_file",
            "c4/ca.crt",
        ),
        (
            t.replace("name = \"web-*\"", "name = \"web-[\""),
            "portal[0].name",
            "web-[",
        ),
        (
            t.replace("name = \"checkout\"", "name = \"check*\""),
            "portal[2].vip4",
            "10.200.0.50",
        ),
        (
            t.replace("domain = \"Mesh.Example.\"", "domain = \"mesh_example\""),
            "dns.domain",
            "mesh_example",
        ),
        (
            t.replace("\"10.100.0.1:53\"", "\"10.100.0.1\""),
            "dns.listen[0]",
            "\"10.100.0.1\"",
        ),
    ];
    for (text, key, needle) in cases {
        let first = needle.lines().next().unwrap_or(needle);
        at(&text, key, line_of(&text, first));
    }
    // A duplicate is reported where it repeats, not at the first definition.
    let dup = t.replace("name = \"cluster4\"", "name = \"cluster3\"");
    at(
        &dup,
        "cluster[1].name",
        line_of(&dup, "https://10.0.4.1") - 1,
    );
}

const TRANSIT: &str = r#"
[wireguard]
private_key_file = "/etc/meshgw/wg.key"

[[peer]]
id = "gw-b"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
endpoint = "192.0.2.2:51820"
allowed_ips = ["10.2.0.0/16"]
persistent_keepalive = 25
quic_endpoint = "192.0.2.2:4433"

[peering]
gateway_id = "gw-a"
cert_file = "/etc/meshgw/peering.crt"
key_file = "/etc/meshgw/peering.key"
ca_files = ["/etc/meshgw/peering-ca.crt"]
announce = ["10.1.0.0/16"]
"#;

#[test]
fn transit_sections_parse_with_defaults() {
    let cfg = parse_str(&format!("{MINIMAL}{TRANSIT}"), "t.toml").unwrap();
    let t = cfg.transit.expect("transit");
    assert_eq!(t.wireguard.interface, "meshgw-wg");
    assert_eq!(t.wireguard.listen_port, 51820);
    assert_eq!(t.wireguard.backend, WgBackendChoice::Auto);
    assert_eq!(t.peering.hold_time_seconds, 10);
    assert_eq!(t.peering.listen, "0.0.0.0:4433".parse().unwrap());
    assert_eq!(t.peers[0].persistent_keepalive, Some(25));
    assert_eq!(
        t.peering.announce,
        vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]
    );
    assert!(parse_str(MINIMAL, "t.toml").unwrap().transit.is_none());
}

#[test]
fn transit_problems_name_line_and_key() {
    let bad = format!(
        "{MINIMAL}{}",
        TRANSIT
            .replace("HIgo9xNz", "short")
            .replace("192.0.2.2:51820", "192.0.2.2")
            .replace("10.1.0.0/16", "10.1.0.1/16")
    );
    at(&bad, "peer[0].public_key", line_of(&bad, "public_key ="));
    at(
        &bad,
        "peer[0].endpoint",
        line_of(&bad, "endpoint = \"192.0.2.2\""),
    );
    let p = at(&bad, "peering.announce[0]", line_of(&bad, "announce ="));
    assert!(p.message.contains("did you mean 10.1.0.0/16"), "{p:?}");
    let both = format!(
        "{MINIMAL}{TRANSIT}pinned = {{ gw-b = \"{}\" }}\n",
        "ab".repeat(32)
    );
    at(&both, "peering.pinned", line_of(&both, "pinned ="));
    let alone = format!("{MINIMAL}[wireguard]\nprivate_key_file = \"/k\"\n");
    assert!(problems(&alone)
        .iter()
        .any(|p| p.message.contains("[peering]")));
    let hold = format!("{MINIMAL}{TRANSIT}hold_time_seconds = 1\n");
    at(
        &hold,
        "peering.hold_time_seconds",
        line_of(&hold, "hold_time_seconds"),
    );
}
