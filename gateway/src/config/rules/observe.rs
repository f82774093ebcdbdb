//! `[api]`, `[metrics]`, `[flows]`, `[ipfix]`: where the gateway tells what it does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{root, Ctx};
use crate::config::Observability;

/// `[api]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub socket: Option<PathBuf>,
}

/// `[metrics]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// `[flows]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {
    pub sample_rate: Option<u32>,
    pub max_flows: Option<usize>,
    pub events: Option<bool>,
}

/// `[ipfix]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpfix {
    pub collector: Option<String>,
    pub interval_seconds: Option<u64>,
    pub observation_domain: Option<u32>,
}

/// The four tables, as written.
pub struct Raw {
    pub api: Option<RawApi>,
    pub metrics: Option<RawMetrics>,
    pub flows: Option<RawFlows>,
    pub ipfix: Option<RawIpfix>,
}

/// Default address of `/metrics`: this host only (the port is meshgw's own choice, unused in
/// the Prometheus exporter port list).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9963";

fn addr(c: &mut Ctx<'_>, table: &str, key: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            c.err(
                &root(table).key(key),
                format!("{s:?}: give a port other than 0"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            c.err(
                &root(table).key(key),
                format!("{s:?} is not an address:port (e.g. \"127.0.0.1:9963\" or \"[::1]:9963\")"),
            );
            None
        }
    }
}

/// Checks the tables; `state_dir` places the default socket.
pub(super) fn validate(c: &mut Ctx<'_>, raw: Raw, state_dir: &Path) -> Observability {
    let api_socket = match raw.api.and_then(|a| a.socket) {
        Some(p) if p.is_absolute() => p,
        Some(p) => {
            c.err(
                &root("api").key("socket"),
                format!("{} is not an absolute path", p.display()),
            );
            p
        }
        None => state_dir.join("meshgw.sock"),
    };
    let metrics_listen = match raw.metrics.and_then(|m| m.listen) {
        Some(s) if s == "off" => None,
        Some(s) => addr(c, "metrics", "listen", &s),
        None => DEFAULT_METRICS.parse().ok(),
    };
    let flows = raw.flows.unwrap_or(RawFlows {
        sample_rate: None,
        max_flows: None,
        events: None,
    });
    let max_flows = flows.max_flows.unwrap_or(8192);
    if !(16..=1_000_000).contains(&max_flows) {
        c.err(
            &root("flows").key("max_flows"),
            format!("{max_flows} is out of range (16..1000000)"),
        );
    }
    let ipfix = raw.ipfix.unwrap_or(RawIpfix {
        collector: None,
        interval_seconds: None,
        observation_domain: None,
    });
    let ipfix_collector = ipfix
        .collector
        .as_deref()
        .and_then(|s| addr(c, "ipfix", "collector", s));
    let ipfix_interval_seconds = ipfix.interval_seconds.unwrap_or(10);
    if !(1..=3600).contains(&ipfix_interval_seconds) {
        c.err(
            &root("ipfix").key("interval_seconds"),
            format!("{ipfix_interval_seconds} is out of range (1..3600)"),
        );
    }
    Observability {
        api_socket,
        metrics_listen,
        sample_rate: flows.sample_rate.unwrap_or(0),
        flow_events: flows.events.unwrap_or(true),
        max_flows,
        ipfix_collector,
        ipfix_interval_seconds,
        ipfix_domain: ipfix.observation_domain.unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::parse_str;

    const BASE: &str = "[gateway]\nname = \"gw\"\nstate_dir = \"/var/lib/x\"\n[interfaces]\nlegacy = \"a\"\nmesh = \"b\"\n[vips]\npool = [\"10.0.0.0/24\"]\n";

    #[test]
    fn defaults_keep_everything_local() {
        let c = parse_str(BASE, "t.toml").unwrap().observe;
        assert_eq!(c.api_socket.to_str(), Some("/var/lib/x/meshgw.sock"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9963".parse().ok());
        assert_eq!((c.sample_rate, c.flow_events, c.max_flows), (0, true, 8192));
        assert_eq!(c.ipfix_collector, None);
    }

    #[test]
    fn keys_are_read_and_bad_values_named_with_their_line() {
        let good = format!(
            "{BASE}[api]\nsocket = \"/run/m.sock\"\n[metrics]\nlisten = \"off\"\n[flows]\nsample_rate = 100\n[ipfix]\ncollector = \"10.1.1.1:4739\"\ninterval_seconds = 2\n"
        );
        let c = parse_str(&good, "t.toml").unwrap().observe;
        assert_eq!(c.api_socket.to_str(), Some("/run/m.sock"));
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.sample_rate, 100);
        assert_eq!(c.ipfix_collector, "10.1.1.1:4739".parse().ok());
        assert_eq!(c.ipfix_interval_seconds, 2);

        let bad = format!(
            "{BASE}[api]\nsocket = \"rel.sock\"\n[metrics]\nlisten = \"localhost\"\n[ipfix]\ncollector = \"10.1.1.1:0\"\n[flows]\nbogus = 1\n"
        );
        let e = parse_str(&bad, "t.toml").unwrap_err();
        // Unknown keys stop parsing first: reported alone, with their line.
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(e.to_string().contains("t.toml:16"), "{e}");
        let bad = format!(
            "{BASE}[api]\nsocket = \"rel.sock\"\n[metrics]\nlisten = \"localhost\"\n[ipfix]\ncollector = \"10.1.1.1:0\"\n"
        );
        let text = parse_str(&bad, "t.toml").unwrap_err().to_string();
        assert!(
            text.contains("t.toml:10:") && text.contains("api.socket"),
            "{text}"
        );
        assert!(
            text.contains("t.toml:12:") && text.contains("metrics.listen"),
            "{text}"
        );
        assert!(
            text.contains("t.toml:14:") && text.contains("ipfix.collector"),
            "{text}"
        );
    }
}
