//! `meshgw run`: the daemon. Data flows one way: config -> catalog -> VIP allocation -> desired
//! state -> reconcilers (BPF maps, kernel objects). Every pass recomputes the whole desired state
//! and lets the idempotent reconcilers apply the difference, so a reload, a restart and a periodic
//! drift repair are the same code path.
//!
//! The packet path never waits on this process: programs and maps are pinned, and exiting leaves
//! them attached and forwarding.

pub mod kernel;
pub mod names;
pub mod observe;
pub mod status;
pub mod transit;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshgw_common::maps::{GatewayConfig, CFG_F_EGRESS, CFG_F_ENABLED, CFG_F_POLICY};
use meshgw_datapath::{AttachMode, Datapath, Program};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::catalog::{Catalog, Service, ServiceName, STATIC_CLUSTER};
use crate::clustermesh::client::ClientEvent;
use crate::clustermesh::import::{self, Grace};
use crate::clustermesh::supervisor::Supervisor;
use crate::config::{self, Config, XdpMode};
use crate::desired::{self, Desired};
use crate::netlink::{announce, sysctl, Netlink};
use crate::policy::cnp::{self, Policy};
use crate::policy::compile;
use crate::policy::identity::LocalIdentities;
use crate::reconcile::bpf::BpfReconciler;
use crate::vip::{self, VipState};
use kernel::Devices;
use names::Names;
use status::{unix_now, ClusterStatus, PortalJson, PortalStatus, Status};

/// How often the kernel objects (addresses, routes, neighbours) are checked against the kernel
/// to repair drift (someone deleted a route, a neighbour expired).
const REPAIR: Duration = Duration::from_secs(10);

/// How often the whole pipeline runs over the whole catalog (what events apply incrementally is
/// recomputed from scratch: the reconcilers stay idempotent and any missed event is caught).
const RESYNC: Duration = Duration::from_secs(60);

/// How often a slice of the BPF service entries is read back and repaired, and how many
/// frontends a slice holds: 10,000 frontends are all verified within 40 s, and a change never
/// waits more than a slice (a few ms) for the repair.
const VERIFY: Duration = Duration::from_secs(1);
const VERIFY_SLICE: usize = 256;

/// The status (status.json, the API's copy) is rebuilt at most this often after incremental
/// changes, and always once a burst of them is over: it lists every portal, so rewriting it for
/// every backend change would cost more than the change.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How long after an incremental change its status is written at the earliest (so that a burst
/// of changes is applied before the status is rebuilt).
const STATUS_DELAY: Duration = Duration::from_millis(200);

/// How often the transit part of the status (tunnel counters, sessions) is rewritten.
const TRANSIT_STATUS: Duration = Duration::from_secs(1);

/// How long cluster events are gathered before one reconcile applies them: a relist delivers
/// thousands of keys at once, a single backend change arrives alone; both land well under 100 ms.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The same for events that name only services (applied incrementally, so gathering them for
/// long saves little).
const DEBOUNCE_SERVICES: Duration = Duration::from_millis(2);
/// A pass after cluster events that failed is retried (as a full pass) this much later, not
/// only at the next resync.
const RETRY: Duration = Duration::from_secs(5);
/// How often the telemetry snapshot (API, metrics, dashboard) is refreshed from the maps.
const TELEMETRY: Duration = Duration::from_secs(1);

/// What a reconcile pass checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Everything, kernel objects included, every map entry read back (start, reload).
    Repair,
    /// Everything recomputed, kernel objects checked; map entries read back only in slices
    /// (the periodic resync).
    Resync,
    /// The maps; kernel objects only when their desired set changed (cluster events).
    Update,
}

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A file (reloadable with SIGHUP).
    File(PathBuf),
    /// The embedded default (config/default.toml).
    Embedded,
}

impl ConfigSource {
    fn load(&self) -> Result<Config> {
        match self {
            ConfigSource::File(p) => config::load_file(p).map_err(|e| anyhow::anyhow!("{e}")),
            ConfigSource::Embedded => config::parse_str(config::DEFAULT_TOML, "<embedded default>")
                .map_err(|e| anyhow::anyhow!("{e}")),
        }
    }

    fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded => "<embedded default>".into(),
        }
    }
}

struct Daemon {
    source: ConfigSource,
    cfg: Config,
    nl: Netlink,
    dp: Datapath,
    bpf: BpfReconciler,
    dev: Devices,
    mesh_ip: Ipv4Addr,
    vtep_mac: [u8; 6],
    legacy_mac: [u8; 6],
    announced: BTreeSet<IpAddr>,
    desired: Desired,
    started_at: u64,
    reload_error: Option<String>,
    /// The persisted VIP assignments, as last written.
    vip_state: Option<VipState>,
    /// One etcd client per configured cluster, and what each has told.
    clusters: Supervisor,
    /// Withdrawn imported services in their grace period.
    grace: Grace,
    /// Clusters that completed a sync since the start: until all have, VIPs held for services
    /// not seen yet stay reserved.
    synced_once: BTreeSet<String>,
    /// The portal name responder.
    names: Names,
    /// Policies in force (from `[policy].files`).
    policies: Vec<Policy>,
    /// Gateway-local identities, read once, written when one is added.
    local_ids: Option<LocalIdentities>,
    /// Flow events, the control API, metrics and IPFIX (started once the datapath is loaded).
    observer: Option<observe::Observer>,
    /// Policies, identities and egress rules as the last reconcile compiled them, for the status.
    policy_view: status::PolicyView,
    /// The socket VIP announcements go out of, opened on first use.
    announcer: Option<announce::Announcer>,
    /// Gateway-to-gateway transit, when configured.
    transit: Option<transit::TransitRuntime>,
    /// The prefixes routed into the tunnel at the last reconcile.
    transit_routes: BTreeSet<ipnet::IpNet>,
    /// Its status at the last reconcile.
    transit_status: Option<transit::TransitStatus>,
    /// The status last published, for refreshing the transit counters between reconciles.
    last_status: Option<Status>,
    /// The catalog as the last pass served it (backend identities filled in): what an
    /// incremental pass updates service by service.
    cat: Catalog,
    /// The VIP allocation of the last full pass (incremental passes never change it).
    alloc: vip::Allocation,
    /// The backend (destination) identities the last full pass knew: a backend with another
    /// one changes the policy entries, which only a full pass computes.
    dst_ids: BTreeSet<u32>,
    /// Whether a full pass has completed (before it, nothing can be applied incrementally).
    full_done: bool,
    /// A full pass is wanted at the next event reconcile (peering changed what is learned).
    full_wanted: bool,
    /// Problems only a full pass produces (VIP allocation, DNS names): the incremental pass
    /// keeps them when it replaces the problems of the services it recomputes.
    full_pass_problems: BTreeSet<String>,
    /// The last kernel reconcile failed: the next pass retries it even when the desired kernel
    /// objects did not change.
    kernel_failed: bool,
    /// When the status is due to be rebuilt after incremental changes.
    status_due: Option<Instant>,
    /// When it was last rebuilt.
    status_at: Option<Instant>,
    /// Writes status.json off the loop.
    status_writer: status::StatusWriter,
    /// Each portal's status with a fingerprint of what it was built from: a publish rebuilds
    /// only the portals whose service, VIPs or draining state changed.
    portal_cache: BTreeMap<ServiceName, (u64, Arc<PortalJson>)>,
    /// The services whose portals changed since the last publish (incremental passes name
    /// them); `None` after a full pass, which may have changed any.
    portals_dirty: Option<BTreeSet<ServiceName>>,
}

/// A portal as the status shows it.
fn portal_status(s: &Service, vips: Vec<IpAddr>, is_static: bool, draining: bool) -> PortalStatus {
    let mut from: Vec<&str> = s.backends.iter().map(|b| &*b.node.cluster).collect();
    from.dedup();
    PortalStatus {
        service: s.name.to_string(),
        vips,
        ports: s
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{} {}/{}",
                    p.name,
                    p.port,
                    if p.proto == 6 { "tcp" } else { "udp" }
                )
            })
            .collect(),
        backends: s
            .backends
            .iter()
            .map(|b| format!("{} via {}/{}", b.addr, b.node.cluster, b.node.name))
            .collect(),
        source: if is_static {
            STATIC_CLUSTER.to_string()
        } else {
            from.join(",")
        },
        draining,
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn attach_mode(m: XdpMode) -> AttachMode {
    match m {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Skb => AttachMode::Skb,
        XdpMode::Auto => AttachMode::Auto,
    }
}

impl Daemon {
    async fn start(
        source: ConfigSource,
        events: mpsc::Sender<(String, ClientEvent)>,
    ) -> Result<Daemon> {
        let cfg = source.load()?;
        let policies = cnp::load(&cfg.policy_files).context("policy")?;
        info!(config = %source.describe(), gateway = %cfg.gateway.name, policies = policies.len(), "starting");
        std::fs::create_dir_all(&cfg.gateway.state_dir)
            .with_context(|| format!("creating state dir {}", cfg.gateway.state_dir.display()))?;
        crate::bpffs::ensure_mounted(&cfg.gateway.bpf_pin_dir).context("bpffs")?;
        let nl = Netlink::connect().context("netlink")?;
        let dp =
            Datapath::load_pinned(&cfg.gateway.bpf_pin_dir).context("loading the XDP datapath")?;
        let mut d = Daemon {
            source,
            nl,
            dp,
            bpf: BpfReconciler::default(),
            dev: Devices {
                legacy: 0,
                mesh: 0,
                vips: 0,
                vxlan: 0,
            },
            mesh_ip: Ipv4Addr::UNSPECIFIED,
            vtep_mac: [0; 6],
            legacy_mac: [0; 6],
            announced: BTreeSet::new(),
            desired: Desired::default(),
            started_at: unix_now(),
            reload_error: None,
            vip_state: None,
            clusters: Supervisor::new(events),
            grace: Grace::default(),
            synced_once: BTreeSet::new(),
            names: Names::default(),
            policies,
            local_ids: None,
            observer: None,
            policy_view: status::PolicyView::default(),
            announcer: None,
            transit: None,
            transit_routes: BTreeSet::new(),
            transit_status: None,
            last_status: None,
            cat: Catalog::default(),
            alloc: vip::Allocation::default(),
            dst_ids: BTreeSet::new(),
            full_done: false,
            full_wanted: false,
            full_pass_problems: BTreeSet::new(),
            kernel_failed: false,
            status_due: None,
            status_at: None,
            status_writer: status::StatusWriter::spawn().context("start the status writer")?,
            portal_cache: BTreeMap::new(),
            portals_dirty: None,
            cfg,
        };
        d.observer = Some(
            observe::Observer::start(&d.cfg, &mut d.dp)
                .await
                .context("observability")?,
        );
        d.bpf = BpfReconciler::recover(&mut d.dp).context("reading the pinned maps")?;
        d.setup_devices().await?;
        if let Some(t) = &d.cfg.transit {
            d.transit = Some(
                transit::TransitRuntime::start(t, &d.nl)
                    .await
                    .context("gateway-to-gateway transit")?,
            );
        }
        d.names.ensure(&d.cfg, &d.nl, d.dev.legacy).await;
        d.reconcile(Pass::Repair).await?;
        d.attach()?;
        d.clusters.configure(&d.cfg.clusters);
        Ok(d)
    }

    /// Interfaces, sysctls and the two devices the gateway owns.
    async fn setup_devices(&mut self) -> Result<()> {
        let cfg = &self.cfg;
        let legacy = self
            .nl
            .link(&cfg.interfaces.legacy)
            .await?
            .with_context(|| {
                format!(
                    "legacy interface {:?} does not exist",
                    cfg.interfaces.legacy
                )
            })?;
        let mesh =
            self.nl.link(&cfg.interfaces.mesh).await?.with_context(|| {
                format!("mesh interface {:?} does not exist", cfg.interfaces.mesh)
            })?;
        self.mesh_ip = match cfg.mesh.address {
            Some(ip) => ip,
            None => *self
                .nl
                .ipv4_addrs(mesh.index)
                .await?
                .first()
                .with_context(|| {
                    format!(
                        "mesh interface {} has no IPv4 address and [mesh].address is not set",
                        mesh.name
                    )
                })?,
        };
        // The mesh interface's MAC is the natural VTEP MAC to give Cilium (`vtep-mac`).
        self.vtep_mac = cfg.mesh.vtep_mac.unwrap_or(mesh.mac);
        self.legacy_mac = legacy.mac;
        // Forwarding: the kernel slow path needs it, and bpf_fib_lookup refuses to answer without it.
        sysctl::set("net/ipv4/ip_forward", "1")?;
        sysctl::set("net/ipv6/conf/all/forwarding", "1")?;
        // The IPv4 VIP pool is one AnyIP local route: ARP for it is answered on the legacy side
        // only with arp_ignore 0 there.
        sysctl::answer_arp_for_local_routes(&legacy.name)?;
        // IPv6 VIPs are answered through proxy NDP on the legacy side.
        sysctl::set(&format!("net/ipv6/conf/{}/proxy_ndp", legacy.name), "1")?;
        // An egress flow's first packet to a host without a neighbour entry is handed to the
        // kernel already translated (its source is an egress address, one of ours) to have the
        // neighbour resolved: the mesh side must accept a local source address for that.
        sysctl::set(&format!("net/ipv4/conf/{}/accept_local", mesh.name), "1")?;
        let spec = meshgw_tunnel::vxlan::VxlanSpec {
            name: cfg.mesh.vxlan_device.clone(),
            port: cfg.mesh.vxlan_port,
            local: Some(self.mesh_ip),
            lower: Some(mesh.index),
            mac: Some(self.vtep_mac),
            mtu: None,
        };
        let vxlan = meshgw_tunnel::vxlan::ensure_vxlan(self.nl.handle(), &spec)
            .await
            .context("VXLAN device")?;
        // Replies to the slow path arrive on the VXLAN device but leave by the legacy side: loose
        // reverse-path filtering, or the kernel drops them.
        for dev in [
            legacy.name.as_str(),
            mesh.name.as_str(),
            cfg.mesh.vxlan_device.as_str(),
        ] {
            sysctl::set(&format!("net/ipv4/conf/{dev}/rp_filter"), "2")?;
        }
        // VIPs live on the legacy interface itself unless a separate device is configured: the
        // kernel then answers ARP and neighbour solicitations for them on exactly that interface.
        let vips = match &cfg.vips.device {
            Some(name) => self.nl.ensure_dummy(name).await.context("VIP device")?,
            None => legacy.index,
        };
        self.dev = Devices {
            legacy: legacy.index,
            mesh: mesh.index,
            vips,
            vxlan,
        };
        info!(legacy = %legacy.name, mesh = %mesh.name, mesh_ip = %self.mesh_ip, vtep_mac = %mac_str(self.vtep_mac), "devices ready");
        Ok(())
    }

    fn attach(&mut self) -> Result<()> {
        let mode = attach_mode(self.cfg.interfaces.xdp_mode);
        self.dp
            .attach(Program::Legacy, self.dev.legacy, mode)
            .context("attaching XDP to the legacy interface")?;
        self.dp
            .attach(Program::Mesh, self.dev.mesh, mode)
            .context("attaching XDP to the mesh interface")?;
        Ok(())
    }

    /// One full pass: catalog -> VIPs -> desired -> reconcilers -> announcements -> status.
    /// `Pass::Repair` also re-checks the kernel objects (addresses, routes, neighbours) against
    /// the kernel; `Pass::Update` touches them only when the desired set of them changed, so a
    /// backend change in etcd costs a few map writes, not a netlink dump of every address.
    async fn reconcile(&mut self, pass: Pass) -> Result<()> {
        self.portals_dirty = None;
        let mut cat = Catalog::from_config(&self.cfg);
        let mut notes = Vec::new();
        if !self.cfg.clusters.is_empty() {
            let pool = &self.cfg.vips.pool;
            let has4 = pool.iter().any(|n| matches!(n, ipnet::IpNet::V4(_)));
            let has6 = pool.iter().any(|n| matches!(n, ipnet::IpNet::V6(_)));
            let imported = import::import(&self.clusters.states, &self.cfg.portals, has4, has6);
            let grace = Duration::from_secs(self.cfg.vips.withdraw_grace_seconds);
            let services =
                self.grace
                    .apply(imported.services, &self.cat.services, Instant::now(), grace);
            notes.extend(imported.problems);
            notes.extend(cat.merge_imported(services, imported.nodes));
            for (name, st) in &self.clusters.states {
                if st.is_synced() {
                    self.synced_once.insert(name.clone());
                }
            }
        }
        // The previous catalog goes as soon as the new one is merged, and the previous VIP
        // allocation before the desired state is built: at 50,000 services two of each held at
        // once set the daemon's peak memory. A pass failing from here on leaves them the
        // daemon's (the maps keep the previous desired state, and the incremental pass, which
        // needs the three to agree, waits for the next full pass).
        self.full_wanted = true;
        self.cat = cat;
        let warming = self
            .cfg
            .clusters
            .iter()
            .any(|c| !self.synced_once.contains(&c.name));
        let state_path = VipState::path(&self.cfg.gateway.state_dir);
        // Read once per process; written only when an assignment changes, not on every pass.
        let held = self
            .vip_state
            .get_or_insert_with(|| VipState::load(&state_path));
        let egress = crate::egress::compile(&self.cfg.egress, &self.cat);
        let mut requests = self.cat.vip_requests();
        // Services learned from peering gateways get their local VIPs from the same allocator.
        let learned = self
            .transit
            .as_ref()
            .map(|t| t.learned_services())
            .unwrap_or_default();
        let import_requests = transit::import_requests(&learned, &requests);
        requests.extend(import_requests.clone());
        let alloc = vip::allocate(
            &self.cfg.vips.pool,
            &requests,
            held,
            warming,
            &egress.addresses,
        );
        if !alloc.state_is(held) {
            let now_held = alloc.state();
            match now_held.save(&state_path) {
                Ok(()) => *held = now_held,
                Err(e) => {
                    warn!(path = %state_path.display(), error = %e, "cannot persist VIP assignments")
                }
            }
        }
        let ids_path = LocalIdentities::path(&self.cfg.gateway.state_dir);
        let ids = self
            .local_ids
            .get_or_insert_with(|| LocalIdentities::load(&ids_path));
        let mut compiled =
            compile::compile(&self.policies, &self.cfg.legacy_prefixes, &self.cat, ids);
        if let Err(e) = ids.save_if_changed(&ids_path) {
            warn!(path = %ids_path.display(), error = %e, "cannot persist identities");
        }
        for svc in self.cat.services.values_mut() {
            for b in &mut svc.backends {
                b.identity = compiled.backend_identity.get(&b.addr).copied();
            }
        }
        self.policy_view =
            status::PolicyView::of(&self.policies, &compiled, &self.cfg.egress, &egress);
        self.dst_ids = std::mem::take(&mut compiled.backend_identity)
            .into_values()
            .collect();
        drop(requests);
        self.alloc = alloc;
        let (cat, alloc) = (&self.cat, &self.alloc);
        let mut d = desired::compute(cat, alloc, self.vtep_mac);
        if let Some(t) = &mut self.transit {
            let imports = transit::plan_imports(&learned, &import_requests, alloc);
            d.vips.extend(imports.iter().map(|i| IpAddr::V4(i.vip)));
            t.set_services(transit::origins(cat, alloc), imports);
        }
        d.identities = compiled.prefixes;
        d.policy = compiled.entries;
        d.policy_enforced = compiled.enforced;
        // Egress addresses are owned and announced like VIPs (they are inside the pool).
        d.vips.extend(egress.addresses.iter().copied());
        d.egress = egress.entries;
        d.problems.extend(notes);
        let name_problems = self.names.update(alloc);
        let full_pass_problems: BTreeSet<String> = desired::allocation_problems(alloc)
            .into_iter()
            .chain(name_problems.iter().cloned())
            .chain(self.names.error.clone())
            .collect();
        d.problems.extend(name_problems);
        d.problems.extend(self.names.error.clone());
        for p in &d.problems {
            warn!(problem = %p, "part of the catalog is not served");
        }
        self.dp.set_devices(self.dev.mesh, self.dev.legacy)?;
        if pass == Pass::Repair {
            self.bpf.forget_applied();
        }
        let bpf = self
            .bpf
            .apply(&mut self.dp, &d)
            .context("programming the BPF maps")?;
        let mut tunnel_routes = Vec::new();
        let mut learned = BTreeSet::new();
        if let Some(t) = &mut self.transit {
            if let Err(e) = t.sync(&self.nl).await {
                warn!(error = %format!("{e:#}"), "WireGuard peers not updated");
            }
            learned = t.learned().into_keys().collect();
            tunnel_routes = self::tunnel_routes(&learned, t.ifindex);
        }
        let kernel_changed = d.vips != self.desired.vips
            || d.routes != self.desired.routes
            || d.nodes != self.desired.nodes
            || learned != self.transit_routes;
        // The maps already hold `d`: a failed kernel reconcile must not stop `d` from becoming
        // the state the BPF checks compare against (they would put the old entries back), so
        // its error is returned only once the rest of the pass is recorded, and the next pass
        // retries the kernel objects.
        let kernel = if pass != Pass::Update || kernel_changed || self.kernel_failed {
            let k = kernel::reconcile(&self.nl, &self.cfg, &self.dev, &d, &tunnel_routes).await;
            self.kernel_failed = k.is_err();
            if k.is_ok() {
                if learned != self.transit_routes {
                    info!(routes = ?learned, "tunnel routes reconciled");
                }
                self.transit_routes = learned;
            }
            k
        } else {
            Ok(Default::default())
        };
        self.dp.set_config(&GatewayConfig {
            mesh_ip: self.mesh_ip.octets(),
            vni: self.cfg.gateway.identity,
            vxlan_port: self.cfg.mesh.vxlan_port.to_be(),
            flags: CFG_F_ENABLED
                | if d.policy_enforced { CFG_F_POLICY } else { 0 }
                | if d.egress.is_empty() { 0 } else { CFG_F_EGRESS },
            mesh_ifindex: self.dev.mesh,
            legacy_ifindex: self.dev.legacy,
            vtep_mac: self.vtep_mac,
            _pad: [0; 2],
        })?;
        if kernel.as_ref().is_ok_and(|k| !k.is_empty()) {
            // Routes or neighbours the gateway owns changed: the datapath's next-hop caches
            // follow at once instead of within their age bound.
            if let Err(e) = self.dp.flush_nexthops() {
                warn!(error = %e, "cannot flush the next-hop caches");
            }
        }
        if !bpf.is_empty() || kernel.as_ref().is_ok_and(|k| !k.is_empty()) {
            info!(
                bpf_written = bpf.written,
                bpf_removed = bpf.removed,
                "reconciled"
            );
        }
        self.announce(&d);
        self.desired = d;
        if let Some(t) = &mut self.transit {
            self.transit_status = Some(t.status(&self.transit_routes).await);
        }
        self.full_done = true;
        self.full_wanted = false;
        self.grace.pass_succeeded();
        self.full_pass_problems = full_pass_problems;
        self.publish_status();
        kernel.map(|_| ())
    }

    /// Applies cluster events: only the services they named when that is enough (see
    /// [`Daemon::reconcile_services`]), else a full pass.
    async fn apply_events(&mut self) -> Result<()> {
        let dirty = self.clusters.take_dirty();
        let full = std::mem::take(&mut self.full_wanted);
        if !full && !dirty.all {
            if dirty.is_empty() {
                return Ok(());
            }
            match self.reconcile_services(&dirty.services) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    // What the events named is not applied: the next pass is a full one.
                    self.full_wanted = true;
                    return Err(e);
                }
            }
        }
        let r = self.reconcile(Pass::Update).await;
        if r.is_err() {
            self.full_wanted = true;
        }
        r
    }

    /// The incremental pass: re-imports only `names`, recomputes only their frontends and
    /// writes only those map entries. Returns false (having changed nothing the full pass
    /// would not redo) when the change reaches beyond those services: a service appears or
    /// goes (VIP allocation, names, announcements), its VIP request changes, a backend brings
    /// a destination identity not known yet (policy entries), or the whole catalog matters
    /// (policies, egress rules, peering).
    fn reconcile_services(
        &mut self,
        names: &BTreeSet<crate::catalog::ServiceName>,
    ) -> Result<bool> {
        if !self.full_done
            || self.transit.is_some()
            || !self.policies.is_empty()
            || !self.cfg.egress.is_empty()
        {
            return Ok(false);
        }
        let pool = &self.cfg.vips.pool;
        let has4 = pool.iter().any(|n| matches!(n, ipnet::IpNet::V4(_)));
        let has6 = pool.iter().any(|n| matches!(n, ipnet::IpNet::V6(_)));
        // A `[[service]]` of the configuration wins over the imported one: nothing to do.
        let names: BTreeSet<_> = names
            .iter()
            .filter(|n| {
                !self
                    .cfg
                    .services
                    .iter()
                    .any(|c| *c.namespace == *n.namespace && *c.name == *n.name)
            })
            .cloned()
            .collect();
        let imported =
            import::import_services(&self.clusters.states, &self.cfg.portals, has4, has6, &names);
        let grace = Duration::from_secs(self.cfg.vips.withdraw_grace_seconds);
        let mut served = self.grace.apply_some(
            &names,
            imported.services,
            &self.cat.services,
            Instant::now(),
            grace,
        );
        let ids_path = LocalIdentities::path(&self.cfg.gateway.state_dir);
        let ids = self
            .local_ids
            .get_or_insert_with(|| LocalIdentities::load(&ids_path));
        for name in &names {
            let old = self.cat.services.get(name);
            let new = served.get_mut(name);
            match (old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if o.vip4 == n.vip4 && o.vip6 == n.vip6 => {
                    for b in &mut n.backends {
                        let (id, _) = compile::backend_identity(&name.namespace, b, ids);
                        if !self.dst_ids.contains(&id) {
                            return Ok(false);
                        }
                        b.identity = Some(id);
                    }
                }
                _ => return Ok(false),
            }
        }
        let mut problems = imported.problems;
        let mut keys = Vec::new();
        for name in &names {
            let (Some(old), Some(new)) = (self.cat.services.get(name), served.remove(name)) else {
                continue;
            };
            if *old == new {
                // Nothing to write, but its problems are replaced below: recompute them.
                let _ = desired::service_frontends(
                    &self.cat,
                    &new,
                    &self.alloc,
                    self.vtep_mac,
                    &mut problems,
                );
                continue;
            }
            for k in desired::service_keys(old, &self.alloc) {
                self.desired.frontends.remove(&k);
                keys.push(k);
            }
            for (k, fe) in desired::service_frontends(
                &self.cat,
                &new,
                &self.alloc,
                self.vtep_mac,
                &mut problems,
            ) {
                self.desired.frontends.insert(k, fe);
                keys.push(k);
            }
            self.cat.services.insert(name.clone(), new);
        }
        keys.sort_unstable();
        keys.dedup();
        // Problems about these services are replaced by what they have now (every message
        // about a service starts with its name).
        let about: Vec<(String, String)> = names
            .iter()
            .map(|n| (format!("{n}:"), format!("{n} in ")))
            .collect();
        let keep = &self.full_pass_problems;
        self.desired.problems.retain(|p| {
            keep.contains(p)
                || !about
                    .iter()
                    .any(|(a, b)| p.starts_with(a) || p.starts_with(b))
        });
        for p in &problems {
            warn!(problem = %p, "part of the catalog is not served");
        }
        self.desired.problems.extend(problems);
        if let Some(dirty) = &mut self.portals_dirty {
            dirty.extend(names.iter().cloned());
        }
        let now = Instant::now();
        self.status_due.get_or_insert_with(|| {
            let earliest = now + STATUS_DELAY;
            self.status_at
                .map(|at| (at + STATUS_EVERY).max(earliest))
                .unwrap_or(earliest)
        });
        if keys.is_empty() {
            return Ok(true);
        }
        let ch = self
            .bpf
            .apply_frontends(&mut self.dp, &self.desired, &keys)
            .context("programming the BPF maps")?;
        if !ch.is_empty() {
            info!(
                services = names.len(),
                frontends = keys.len(),
                bpf_written = ch.written,
                bpf_removed = ch.removed,
                "reconciled services"
            );
        }
        Ok(true)
    }

    /// The periodic drift repair of the kernel objects, against the desired state of the last
    /// pass (cheap: the IPv4 VIP pool is one route).
    async fn repair_kernel(&mut self) -> Result<()> {
        let tunnel_routes = match &self.transit {
            Some(t) => tunnel_routes(&self.transit_routes, t.ifindex),
            None => Vec::new(),
        };
        kernel::reconcile(
            &self.nl,
            &self.cfg,
            &self.dev,
            &self.desired,
            &tunnel_routes,
        )
        .await?;
        Ok(())
    }

    /// One slice of the BPF drift repair.
    fn verify_slice(&mut self) {
        match self
            .bpf
            .verify_slice(&mut self.dp, &self.desired, VERIFY_SLICE)
        {
            Ok(ch) if !ch.is_empty() => {
                warn!(
                    written = ch.written,
                    removed = ch.removed,
                    "BPF map entries repaired"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "BPF map verification failed"),
        }
    }

    fn announce(&mut self, d: &Desired) {
        if !self.cfg.vips.announce {
            self.announced = d.vips.clone();
            return;
        }
        if self.announcer.is_none() {
            match announce::Announcer::new() {
                Ok(a) => self.announcer = Some(a),
                Err(e) => {
                    warn!(error = %e, "cannot open the announcement socket; VIPs are not announced");
                    return;
                }
            }
        }
        let Some(announcer) = &self.announcer else {
            return;
        };
        for ip in d.vips.difference(&self.announced) {
            let r = match ip {
                IpAddr::V4(v4) => announcer.gratuitous_arp(self.dev.legacy, self.legacy_mac, *v4),
                IpAddr::V6(v6) => announcer.unsolicited_na(self.dev.legacy, self.legacy_mac, *v6),
            };
            match r {
                Ok(()) => info!(vip = %ip, "VIP announced"),
                Err(e) => warn!(vip = %ip, error = %e, "VIP announcement failed"),
            }
        }
        self.announced = d.vips.clone();
    }

    /// Refreshes the telemetry snapshot (once a second).
    fn refresh_telemetry(&mut self) {
        let t0 = Instant::now();
        let mut st = self.last_status.clone().unwrap_or_default();
        st.clusters = self.cluster_status();
        if let Some(o) = &mut self.observer {
            o.refresh(&mut self.dp, st);
        }
        debug!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "telemetry refreshed"
        );
    }

    /// Rebuilds the status (status.json, the API's copy) and the telemetry's names from the
    /// catalog as served now.
    fn publish_status(&mut self) {
        self.status_due = None;
        let t0 = Instant::now();
        self.status_at = Some(t0);
        if let Some(o) = &mut self.observer {
            o.learn(&mut self.dp, &self.cfg, &self.cat, &self.desired, &self.bpf);
        }
        let learned = t0.elapsed();
        let portals = self.portals();
        let mut st = Status {
            gateway: self.cfg.gateway.name.clone(),
            pid: std::process::id(),
            config: self.source.describe(),
            legacy: self.cfg.interfaces.legacy.clone(),
            mesh: self.cfg.interfaces.mesh.clone(),
            mesh_address: self.mesh_ip.to_string(),
            vtep_mac: mac_str(self.vtep_mac),
            identity: self.cfg.gateway.identity,
            portals,
            clusters: self.cluster_status(),
            dns: self.names.listening(),
            nodes: self
                .cat
                .nodes
                .values()
                .map(|n| format!("{}/{} {}", n.id.cluster, n.id.name, n.address))
                .collect(),
            problems: self.desired.problems.clone(),
            policy: self.policy_view.clone(),
            reconciled_at: unix_now(),
            started_at: self.started_at,
            reload_error: self.reload_error.clone(),
            transit: self.transit_status.clone(),
        };
        if let Some(o) = &self.observer {
            st.problems.extend(o.problems().cloned());
        }
        self.status_writer
            .write(&self.cfg.gateway.state_dir, st.clone());
        if let Some(o) = &self.observer {
            o.set_status(&st);
        }
        self.last_status = Some(st);
        debug!(
            learn_ms = learned.as_millis() as u64,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "status published"
        );
    }

    /// Every portal's status, rebuilding only those whose inputs changed since the last call:
    /// after incremental passes, the services they named; after a full pass, those whose
    /// fingerprint (service, VIPs, draining, source) differs.
    fn portals(&mut self) -> Arc<[Arc<PortalJson>]> {
        let draining: BTreeSet<_> = self.grace.draining().cloned().collect();
        let statics: HashSet<(&str, &str)> = self
            .cfg
            .services
            .iter()
            .map(|c| (c.namespace.as_str(), c.name.as_str()))
            .collect();
        let alloc = &self.alloc;
        let build = |s: &Service, old: Option<(u64, Arc<PortalJson>)>| {
            let vips: Vec<IpAddr> = [false, true]
                .iter()
                .filter_map(|v6| alloc.vips.get(&(s.name.clone(), *v6)).copied())
                .collect();
            let is_static = statics.contains(&(&*s.name.namespace, &*s.name.name));
            let is_draining = draining.contains(&s.name);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (s, &vips, is_static, is_draining).hash(&mut h);
            let print = h.finish();
            match old {
                Some((old, p)) if old == print => (print, p),
                _ => (
                    print,
                    Arc::new(PortalJson::render(&portal_status(
                        s,
                        vips,
                        is_static,
                        is_draining,
                    ))),
                ),
            }
        };
        match self.portals_dirty.replace(BTreeSet::new()) {
            Some(dirty) => {
                for name in dirty {
                    let old = self.portal_cache.remove(&name);
                    if let Some(s) = self.cat.services.get(&name) {
                        self.portal_cache.insert(name, build(s, old));
                    }
                }
            }
            None => {
                let mut old = std::mem::take(&mut self.portal_cache);
                self.portal_cache = self
                    .cat
                    .services
                    .values()
                    .map(|s| (s.name.clone(), build(s, old.remove(&s.name))))
                    .collect();
            }
        }
        self.portal_cache.values().map(|(_, p)| p.clone()).collect()
    }

    fn cluster_status(&self) -> Vec<ClusterStatus> {
        let now = Instant::now();
        self.clusters
            .states
            .iter()
            .map(|(name, st)| {
                let stats = st.stats();
                let conn = self
                    .clusters
                    .connections
                    .get(name)
                    .cloned()
                    .unwrap_or_default();
                let last = [stats.last_event, conn.last_event]
                    .into_iter()
                    .flatten()
                    .max();
                ClusterStatus {
                    name: name.clone(),
                    connected: conn.connected,
                    synced: st.is_synced(),
                    services: stats.services,
                    nodes: stats.nodes,
                    ips: stats.ips,
                    stale: stats.stale,
                    skipped: stats.skipped,
                    last_skipped: st.last_skipped().map(|(k, why)| format!("{k}: {why}")),
                    last_event_age_s: last.map(|t| now.saturating_duration_since(t).as_secs()),
                    last_error: conn.last_error,
                }
            })
            .collect()
    }

    /// SIGHUP: a configuration that fails to load or apply leaves the running one serving.
    async fn reload(&mut self) {
        let loaded = self.source.load().and_then(|c| {
            let p = cnp::load(&c.policy_files).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((c, p))
        });
        let (new, new_policies) = match loaded {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "configuration rejected; the running configuration stays in force");
                self.reload_error = Some(e.to_string());
                // A pass with the running configuration publishes the error in the status.
                if let Err(e) = self.reconcile(Pass::Update).await {
                    error!(error = %format!("{e:#}"), "reconcile after a rejected reload failed");
                }
                return;
            }
        };
        let old_policies = std::mem::replace(&mut self.policies, new_policies);
        let old = std::mem::replace(&mut self.cfg, new);
        let moved = old.interfaces != self.cfg.interfaces
            || old.mesh != self.cfg.mesh
            || old.vips.device != self.cfg.vips.device
            || old.gateway.bpf_pin_dir != self.cfg.gateway.bpf_pin_dir;
        if old.gateway.bpf_pin_dir != self.cfg.gateway.bpf_pin_dir
            || old.gateway.state_dir != self.cfg.gateway.state_dir
        {
            warn!("gateway.bpf_pin_dir and gateway.state_dir take effect at the next start; keeping the current ones");
            self.cfg.gateway.bpf_pin_dir = old.gateway.bpf_pin_dir.clone();
            self.cfg.gateway.state_dir = old.gateway.state_dir.clone();
        }
        let result = async {
            if moved {
                if old.mesh.vxlan_device != self.cfg.mesh.vxlan_device {
                    meshgw_tunnel::vxlan::remove_vxlan(self.nl.handle(), &old.mesh.vxlan_device)
                        .await?;
                }
                if let (Some(dev), true) =
                    (&old.vips.device, old.vips.device != self.cfg.vips.device)
                {
                    self.nl.delete_link(dev).await?;
                }
                self.setup_devices().await?;
                self.attach()?;
            }
            self.names
                .ensure(&self.cfg, &self.nl, self.dev.legacy)
                .await;
            match (&mut self.transit, &self.cfg.transit) {
                (Some(t), Some(c)) => t.reload(c, &self.nl).await?,
                (None, Some(c)) => {
                    self.transit = Some(transit::TransitRuntime::start(c, &self.nl).await?)
                }
                (_, None) => {
                    self.transit = None;
                    self.transit_status = None;
                }
            }
            if let Some(o) = &mut self.observer {
                o.reconfigure(&old.observe, &self.cfg.observe).await;
            }
            self.reconcile(Pass::Repair).await
        }
        .await;
        match result {
            Ok(()) => {
                self.clusters.configure(&self.cfg.clusters);
                if let Err(e) = observe::configure_events(&mut self.dp, &self.cfg.observe) {
                    warn!(error = %format!("{e:#}"), "flow event settings not applied");
                }
                self.reload_error = None;
                info!("configuration reloaded");
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "applying the new configuration failed; restoring the previous one");
                self.reload_error = Some(format!("{e:#}"));
                if let Some(o) = &mut self.observer {
                    o.reconfigure(&self.cfg.observe, &old.observe).await;
                }
                self.cfg = old;
                self.policies = old_policies;
                if let Err(e) = self.reconcile(Pass::Repair).await {
                    error!(error = %format!("{e:#}"), "restoring the previous configuration failed");
                }
            }
        }
    }

    /// Rewrites the status with fresh WireGuard counters and peering sessions (they change
    /// with traffic, not with the catalog, so reconciles alone would show stale numbers).
    async fn refresh_transit_status(&mut self) {
        let (Some(t), Some(st)) = (&mut self.transit, &mut self.last_status) else {
            return;
        };
        let fresh = t.status(&self.transit_routes).await;
        self.transit_status = Some(fresh.clone());
        st.transit = Some(fresh);
        self.status_writer
            .write(&self.cfg.gateway.state_dir, st.clone());
        if let Some(o) = &self.observer {
            o.set_status(st);
        }
    }

    fn ready_file(&self) -> PathBuf {
        self.cfg.gateway.state_dir.join("ready")
    }
}

/// The routes into the WireGuard interface `oif` for the prefixes learned over peering.
fn tunnel_routes(learned: &BTreeSet<ipnet::IpNet>, oif: u32) -> Vec<crate::netlink::DesiredRoute> {
    learned
        .iter()
        .map(|dst| crate::netlink::DesiredRoute {
            dst: *dst,
            oif,
            via: None,
            onlink: false,
            encap: None,
        })
        .collect()
}

/// Resolves when peering changed what is learned; never without transit.
async fn transit_changed(t: &mut Option<transit::TransitRuntime>) {
    match t {
        Some(t) => t.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(source: ConfigSource) -> Result<()> {
    let (events_tx, mut events) = mpsc::channel(4096);
    let mut d = Daemon::start(source, events_tx).await?;
    let ready = d.ready_file();
    std::fs::write(&ready, format!("{}\n", std::process::id()))
        .with_context(|| ready.display().to_string())?;
    info!(ready = %ready.display(), "gateway forwarding");
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let mut repair = tokio::time::interval(REPAIR);
    repair.tick().await;
    let mut verify = tokio::time::interval(VERIFY);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    verify.tick().await;
    let mut telemetry = tokio::time::interval(TELEMETRY);
    telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(TRANSIT_STATUS);
    status_tick.tick().await;
    // When gathered cluster events are due to be applied.
    let mut due: Option<Instant> = None;
    loop {
        let grace_due = d.grace.next_deadline();
        let status_due = d.status_due;
        tokio::select! {
            Some((cluster, ev)) = events.recv() => {
                d.clusters.handle(&cluster, ev);
                // Take what else is queued now: a relist arrives as a burst.
                while let Ok((cluster, ev)) = events.try_recv() {
                    d.clusters.handle(&cluster, ev);
                }
                let wait = if d.clusters.dirty().all { DEBOUNCE } else { DEBOUNCE_SERVICES };
                let at = Instant::now() + wait;
                due = Some(due.map_or(at, |t| t.min(at)));
            }
            _ = sleep_until(due) => {
                due = None;
                if let Err(e) = d.apply_events().await {
                    error!(error = %format!("{e:#}"), "reconcile after Cluster Mesh events failed");
                    due = Some(Instant::now() + RETRY);
                }
            }
            _ = sleep_until(grace_due) => {
                if let Err(e) = d.reconcile(Pass::Update).await {
                    error!(error = %format!("{e:#}"), "reconcile at the end of a grace period failed");
                }
            }
            _ = sleep_until(status_due) => d.publish_status(),
            _ = transit_changed(&mut d.transit) => {
                d.full_wanted = true;
                due.get_or_insert_with(|| Instant::now() + DEBOUNCE);
            }
            _ = status_tick.tick(), if d.transit.is_some() => d.refresh_transit_status().await,
            _ = hup.recv() => d.reload().await,
            _ = telemetry.tick() => d.refresh_telemetry(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = verify.tick() => d.verify_slice(),
            _ = resync.tick() => {
                if let Err(e) = d.reconcile(Pass::Resync).await {
                    error!(error = %format!("{e:#}"), "periodic resync failed");
                }
            }
            _ = repair.tick() => {
                if let Err(e) = d.repair_kernel().await {
                    error!(error = %format!("{e:#}"), "periodic repair of kernel objects failed");
                }
                match crate::reconcile::ct_gc::sweep(&mut d.dp) {
                    Ok((seen, removed)) if removed > 0 => info!(seen, removed, "expired idle flows"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "connection-tracking sweep failed"),
                }
            }
        }
    }
    d.clusters.shutdown();
    let _ = std::fs::remove_file(&ready);
    // No socket: clients say "daemon not running" rather than time out.
    let _ = std::fs::remove_file(&d.cfg.observe.api_socket);
    d.observer = None;
    d.status_writer.finish();
    info!("stopping; the XDP datapath stays attached and forwarding (meshgw down removes it)");
    Ok(())
}

/// `meshgw down`: removes everything the gateway created: the datapath (detached with its pins),
/// the VIP and VXLAN devices, its routes and proxy entries.
pub async fn down(source: ConfigSource) -> Result<()> {
    let cfg = source.load()?;
    let nl = Netlink::connect()?;
    let removed = Datapath::remove_pins(&cfg.gateway.bpf_pin_dir)?;
    info!(removed, pin_dir = %cfg.gateway.bpf_pin_dir.display(), "datapath removed");
    nl.reconcile_routes(&[]).await?;
    nl.reconcile_local_routes(0, &[]).await?;
    if let Some(legacy) = nl.link(&cfg.interfaces.legacy).await? {
        let owned: Vec<ipnet::Ipv6Net> = cfg
            .vips
            .pool
            .iter()
            .filter_map(|n| {
                if let ipnet::IpNet::V6(v6) = n {
                    Some(*v6)
                } else {
                    None
                }
            })
            .collect();
        nl.reconcile_proxy_ndp(legacy.index, &BTreeSet::new(), &owned)
            .await?;
        if cfg.vips.device.is_none() {
            nl.reconcile_addresses_in(legacy.index, &BTreeSet::new(), &cfg.vips.pool)
                .await?;
        }
    }
    if let Some(dev) = &cfg.vips.device {
        nl.delete_link(dev).await?;
    }
    meshgw_tunnel::vxlan::remove_vxlan(nl.handle(), &cfg.mesh.vxlan_device).await?;
    if let Some(t) = &cfg.transit {
        // A kernel WireGuard device outlives the daemon (a TUN device does not).
        nl.delete_link(&t.wireguard.interface).await?;
        transit::remove_mss_clamp();
    }
    let _ = std::fs::remove_file(cfg.gateway.state_dir.join("ready"));
    Ok(())
}

/// Loads the configuration `meshgw status` and `meshgw down` refer to.
pub fn source_for(path: Option<&Path>) -> Result<ConfigSource> {
    match path {
        Some(p) => Ok(ConfigSource::File(p.to_path_buf())),
        None => {
            let etc = Path::new(crate::DEFAULT_CONFIG_PATH);
            if etc.exists() {
                Ok(ConfigSource::File(etc.to_path_buf()))
            } else {
                Ok(ConfigSource::Embedded)
            }
        }
    }
}

/// Fails unless running as root (the datapath and netlink need CAP_BPF and CAP_NET_ADMIN).
pub fn require_privileges() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("meshgw run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for bpffs)");
    }
    Ok(())
}
