//! CiliumNetworkPolicy YAML, the subset the gateway enforces, read strictly: a field outside the
//! subset is an error naming it (with file, line and column), never silently ignored, because an
//! ignored `matchExpressions` or `toFQDNs` would allow more than its author meant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::Deserialize;
use thiserror::Error;

/// A policy file that cannot be used.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is not a supported policy.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: Option<String>,
    // Accepted because kubectl writes them; they change nothing the gateway enforces.
    #[serde(default, rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(default, rename = "annotations")]
    _annotations: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    endpoint_selector: Selector,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
    #[serde(default, rename = "description")]
    _description: Option<IgnoredAny>,
}

/// `matchLabels` only: `matchExpressions` is outside the subset and rejected.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// Labels an endpoint must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRule {
    from_endpoints: Option<Vec<Selector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(default)]
    to_ports: Vec<PortRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRule {
    to_endpoints: Option<Vec<Selector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(default)]
    to_ports: Vec<PortRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRule {
    ports: Vec<PortProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortProtocol {
    port: PortValue,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u32),
    Text(String),
}

/// A protocol in a port rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Both (Cilium's `ANY`, the default).
    Any,
}

/// One allowed (port, protocol); port 0 means every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    /// Destination port, 0 for all.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

/// The other side of a rule: where an ingress rule admits traffic from, or where an egress rule
/// lets it go. At the gateway the other side of a selected endpoint is always the legacy network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// The rule names no peer: every peer.
    Any,
    /// Legacy hosts matching any of the selectors, or addresses in any of the prefixes.
    Some {
        /// `fromEndpoints` / `toEndpoints`.
        endpoints: Vec<Selector>,
        /// `fromCIDR` / `toCIDR`.
        cidrs: Vec<IpNet>,
    },
}

/// An ingress or egress rule, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Sources (ingress) or destinations (egress).
    pub peers: Peers,
    /// Destination ports; empty for every port.
    pub ports: Vec<PortSpec>,
}

/// A policy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (a CiliumNetworkPolicy selects endpoints of its namespace only).
    pub namespace: Option<String>,
    /// Endpoints the policy applies to.
    pub selector: Selector,
    /// `None`: the policy says nothing about ingress; `Some`: ingress is default-deny for the
    /// selected endpoints, and these rules allow.
    pub ingress: Option<Vec<Rule>>,
    /// The same for egress (selected endpoints towards the legacy network).
    pub egress: Option<Vec<Rule>>,
    /// The file it came from.
    pub file: PathBuf,
}

fn invalid(path: &Path, e: &serde_yaml::Error) -> PolicyError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    PolicyError::Invalid {
        path: path.into(),
        line,
        column,
        message: e.to_string(),
    }
}

fn port(path: &Path, p: &PortProtocol) -> Result<Vec<PortSpec>, PolicyError> {
    let bad = |message: String| PolicyError::Invalid {
        path: path.into(),
        line: 0,
        column: 0,
        message,
    };
    let n = match &p.port {
        PortValue::Number(n) => *n,
        PortValue::Text(t) if t.is_empty() => 0,
        PortValue::Text(t) => t.parse::<u32>().map_err(|_| {
            bad(format!(
                "toPorts.ports.port {t:?}: named ports are not supported, give a number"
            ))
        })?,
    };
    let port = u16::try_from(n)
        .map_err(|_| bad(format!("toPorts.ports.port {n} is not a port (0 to 65535)")))?;
    let proto = match p.protocol.as_deref().unwrap_or("ANY") {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        "ANY" => Proto::Any,
        other => {
            return Err(bad(format!(
                "toPorts.ports.protocol {other:?} is not supported (TCP, UDP or ANY)"
            )))
        }
    };
    if port == 0 && proto != Proto::Any {
        return Err(bad(format!(
            "toPorts.ports.port 0 (every port) is only supported with protocol ANY, not {}",
            p.protocol.as_deref().unwrap_or("ANY")
        )));
    }
    Ok(vec![PortSpec { port, proto }])
}

/// One rule's peers and ports; `dir` is `from` or `to`, for the field names in errors.
fn rule(
    path: &Path,
    bad: &dyn Fn(String) -> PolicyError,
    dir: &str,
    endpoints: Option<Vec<Selector>>,
    cidr: Option<Vec<String>>,
    to_ports: &[PortRule],
) -> Result<Rule, PolicyError> {
    let peers = if endpoints.is_none() && cidr.is_none() {
        Peers::Any
    } else {
        let mut cidrs = Vec::new();
        for c in cidr.unwrap_or_default() {
            let net = c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| bad(format!("{dir}CIDR {c:?} is not a prefix")))?;
            cidrs.push(net.trunc());
        }
        Peers::Some {
            endpoints: endpoints.unwrap_or_default(),
            cidrs,
        }
    };
    let mut ports = Vec::new();
    for pr in to_ports {
        for p in &pr.ports {
            ports.extend(port(path, p)?);
        }
    }
    Ok(Rule { peers, ports })
}

fn convert(path: &Path, d: Document) -> Result<Policy, PolicyError> {
    let bad = |message: String| PolicyError::Invalid {
        path: path.into(),
        line: 0,
        column: 0,
        message: format!("policy {:?}: {message}", d.metadata.name),
    };
    if d.api_version != "cilium.io/v2" {
        return Err(bad(format!(
            "apiVersion {:?} is not supported (cilium.io/v2)",
            d.api_version
        )));
    }
    let namespace = match d.kind.as_str() {
        "CiliumNetworkPolicy" => d.metadata.namespace.clone().or(Some("default".into())),
        "CiliumClusterwideNetworkPolicy" => None,
        k => {
            return Err(bad(format!(
                "kind {k:?} is not supported (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)"
            )))
        }
    };
    let ingress = match d.spec.ingress {
        None => None,
        Some(rules) => Some(
            rules
                .into_iter()
                .map(|r| {
                    rule(
                        path,
                        &bad,
                        "from",
                        r.from_endpoints,
                        r.from_cidr,
                        &r.to_ports,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let egress = match d.spec.egress {
        None => None,
        Some(rules) => Some(
            rules
                .into_iter()
                .map(|r| rule(path, &bad, "to", r.to_endpoints, r.to_cidr, &r.to_ports))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Policy {
        name: d.metadata.name,
        namespace,
        selector: d.spec.endpoint_selector,
        ingress,
        egress,
        file: path.into(),
    })
}

/// Parses every policy (YAML documents separated by `---`) in `text`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let d = Document::deserialize(doc).map_err(|e| invalid(path, &e))?;
        out.push(convert(path, d)?);
    }
    Ok(out)
}

/// Reads every file the globs name, in order.
pub fn load(patterns: &[String]) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for pat in patterns {
        let mut paths: Vec<PathBuf> = glob::glob(pat)
            .map(|g| g.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if paths.is_empty() && !pat.contains(['*', '?', '[']) {
            // A plain file name that does not exist is an error, not an empty glob.
            paths.push(PathBuf::from(pat));
        }
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|source| PolicyError::Read {
                path: p.clone(),
                source,
            })?;
            out.extend(parse(&p, &text)?);
        }
    }
    Ok(out)
}
