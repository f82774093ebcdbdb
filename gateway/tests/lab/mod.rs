//! Harness for the end-to-end tests: a namespace lab (scripts/lab.sh) with the real gateway daemon
//! running in its gateway namespace, and clients on the legacy host.
//!
//! Every [`Lab`] gets its own namespace prefix and its own gateway name, state directory and pin
//! directory (derived from config/demo.toml), so a leftover from one test never meets another.
//! The tests are also serialised by a global lock: each one drives real traffic through XDP and
//! the machines this runs on are small, so running them side by side would only add noise to
//! timing-sensitive checks.
//!
//! Clients on the legacy host are plain std sockets created by a thread that has entered the
//! legacy namespace (`setns`); a socket stays in the namespace it was created in, so a held
//! connection can be used from the test's own thread afterwards.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;

/// The repository root.
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The gateway binary under test.
pub const MESHGW: &str = env!("CARGO_BIN_EXE_meshgw");

/// The portal VIP of the demo service (config/demo.toml).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
/// The IPv6 portal VIP of the demo service.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x10);
/// The service's TCP (HTTP) port.
pub const HTTP_PORT: u16 = 80;
/// The service's UDP (DNS) port.
pub const DNS_PORT: u16 = 53;

/// How long the daemon may take from start to its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one client operation (connect, one request/answer).
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

static SERIAL: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// `host:port` of the IPv4 HTTP VIP.
pub fn vip4_http() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT)
}

/// `[host]:port` of the IPv6 HTTP VIP.
pub fn vip6_http() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT)
}

/// `host:port` of the IPv4 DNS VIP.
pub fn vip4_dns() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), DNS_PORT)
}

/// `[host]:port` of the IPv6 DNS VIP.
pub fn vip6_dns() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), DNS_PORT)
}

fn lab_script() -> PathBuf {
    Path::new(REPO).join("scripts/lab.sh")
}

/// Panics unless the tests run as root: they build namespaces and attach XDP programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!("needs root: the lab end-to-end tests build network namespaces and load XDP programs (run `make test` as root)");
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or gives up after `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command and returns its stdout; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n <ns> -j <args>` and parses its JSON output.
pub fn ip_json(ns: &str, args: &[&str]) -> Value {
    let out = run(Command::new("ip").args(["-n", ns, "-j"]).args(args));
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ip {args:?} in {ns}: bad JSON ({e}): {out}"))
}

/// Gives every backend of the first service the label `key=value`.
pub fn label_backends(doc: &mut toml_edit::DocumentMut, key: &str, value: &str) {
    if let Some(backends) = doc["service"][0]["backend"].as_array_of_tables_mut() {
        for b in backends.iter_mut() {
            let mut labels = toml_edit::InlineTable::new();
            labels.insert(key, value.into());
            b["labels"] = toml_edit::value(labels);
        }
    }
}

/// Sets `[[legacy_prefix]]` to one prefix labelled `key=value`.
pub fn set_legacy_prefix(doc: &mut toml_edit::DocumentMut, prefix: &str, key: &str, value: &str) {
    let mut lp = toml_edit::Table::new();
    lp["prefix"] = toml_edit::value(prefix);
    let mut labels = toml_edit::InlineTable::new();
    labels.insert(key, value.into());
    lp["labels"] = toml_edit::value(labels);
    let mut arr = toml_edit::ArrayOfTables::new();
    arr.push(lp);
    doc["legacy_prefix"] = toml_edit::Item::ArrayOfTables(arr);
}

/// Sets `[policy].files` in a config being written.
pub fn set_policy_files(doc: &mut toml_edit::DocumentMut, files: &[&str]) {
    let mut pol = toml_edit::Table::new();
    pol["files"] = toml_edit::value(toml_edit::Array::from_iter(files.iter().copied()));
    doc["policy"] = toml_edit::Item::Table(pol);
}

/// Runs `f` on a thread that has entered network namespace `ns` (a name under /run/netns).
/// Sockets created by `f` stay in that namespace and can be returned to the caller.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns with a valid namespace fd; it changes this thread's namespace only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                panic!("setns({path}): {}", io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A TCP connection to a pod server's line protocol: each "ping\n" is answered with "pod-N\n".
pub struct LineConn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The local (client) address of the connection.
    pub local: SocketAddr,
}

impl LineConn {
    /// Connects from the current namespace (use inside [`in_netns`]).
    pub fn connect(addr: SocketAddr) -> io::Result<LineConn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(LineConn {
            stream,
            reader,
            local,
        })
    }

    /// Connects from namespace `ns`.
    pub fn connect_in(ns: &str, addr: SocketAddr) -> io::Result<LineConn> {
        in_netns(ns, || LineConn::connect(addr))
    }

    /// Sends "ping\n" and returns the answer line without its newline ("pod-1").
    pub fn ping(&mut self) -> io::Result<String> {
        self.stream.write_all(b"ping\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end().to_owned())
    }
}

/// One short connection from the current namespace: connect, one ping, close. Returns the
/// client port and the answer.
pub fn tcp_once(addr: SocketAddr) -> io::Result<(u16, String)> {
    let mut c = LineConn::connect(addr)?;
    let who = c.ping()?;
    Ok((c.local.port(), who))
}

/// `n` sequential short connections from namespace `ns`, each from a fresh source port.
pub fn tcp_many(ns: &str, addr: SocketAddr, n: usize) -> Vec<io::Result<(u16, String)>> {
    in_netns(ns, || (0..n).map(|_| tcp_once(addr)).collect())
}

/// `n` UDP queries from namespace `ns`, each from a fresh socket (a fresh source port).
pub fn udp_many(ns: &str, addr: SocketAddr, n: usize) -> Vec<io::Result<String>> {
    in_netns(ns, || {
        (0..n)
            .map(|i| {
                let bind: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(bind)?;
                sock.set_read_timeout(Some(IO_TIMEOUT))?;
                sock.send_to(format!("query {i}").as_bytes(), addr)?;
                let mut buf = [0u8; 512];
                let (len, from) = sock.recv_from(&mut buf)?;
                if from != addr {
                    return Err(io::Error::other(format!(
                        "answer came from {from}, expected {addr}"
                    )));
                }
                Ok(String::from_utf8_lossy(&buf[..len]).trim().to_owned())
            })
            .collect()
    })
}

/// Counts answers per backend; panics (with the first errors) if any attempt failed.
pub fn tally<T, E: std::fmt::Display>(
    what: &str,
    results: Vec<Result<T, E>>,
    name: impl Fn(&T) -> &str,
) -> BTreeMap<String, usize> {
    let total = results.len();
    let mut counts = BTreeMap::new();
    let mut errors = Vec::new();
    for r in &results {
        match r {
            Ok(v) => *counts.entry(name(v).to_owned()).or_insert(0) += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        errors.truncate(5);
        panic!(
            "{what}: {} of {total} attempts failed (answers so far {counts:?}); first errors: {errors:?}",
            total - counts.values().sum::<usize>()
        );
    }
    counts
}

/// Asserts that only pod-1 and pod-2 answered, and both did.
pub fn assert_both_pods(what: &str, counts: &BTreeMap<String, usize>) {
    for who in counts.keys() {
        assert!(
            who == "pod-1" || who == "pod-2",
            "{what}: unexpected answer {who:?} in {counts:?}"
        );
    }
    assert!(
        counts.contains_key("pod-1") && counts.contains_key("pod-2"),
        "{what}: both pods should answer, got {counts:?}"
    );
}

/// The gateway daemon, started by [`Lab::start_gateway`].
struct Gateway {
    child: Child,
}

/// A running lab; tears everything down on drop (also when the test panics).
pub struct Lab {
    /// Namespace prefix (`<prefix>-legacy`, `<prefix>-gw`, ...).
    pub prefix: String,
    /// The gateway's name in its config (also names its state and pin directories).
    pub name: String,
    /// Scratch directory: the config file and the daemon's log.
    pub dir: PathBuf,
    /// The config file the daemon runs with.
    pub config: PathBuf,
    /// The daemon's state directory (holds `ready`).
    pub state_dir: PathBuf,
    /// The daemon's bpffs pin directory.
    pub pin_dir: PathBuf,
    /// The daemon's stdout and stderr (appended across restarts).
    pub log: PathBuf,
    test: String,
    gateway: Option<Gateway>,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds a fresh lab for test `test` and writes its gateway config (config/demo.toml with
    /// its own name, state directory and pin directory). The daemon is not started.
    pub fn up(test: &str) -> Lab {
        require_root();
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        SWEEP.call_once(sweep_stale_labs);

        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("e2e{k}p{}", std::process::id());
        let dir = PathBuf::from(format!("/run/meshgw-e2e/{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));

        let lab = Lab {
            prefix: name.clone(),
            config: dir.join("gateway.toml"),
            state_dir: PathBuf::from(format!("/run/meshgw/{name}")),
            pin_dir: PathBuf::from(format!("/run/meshgw/bpffs/{name}")),
            log: dir.join("meshgw.log"),
            dir,
            name,
            test: test.to_owned(),
            gateway: None,
            _serial: serial,
        };
        eprintln!("[{}] lab {} up", lab.test, lab.prefix);
        lab.lab_sh("up");
        lab.write_config(|_| {});
        lab
    }

    /// `<prefix>-<role>`: the namespace of a lab member (legacy, gw, sw, node1, pod1, ...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The legacy host's namespace.
    pub fn legacy(&self) -> String {
        self.ns("legacy")
    }

    /// The gateway's namespace.
    pub fn gw(&self) -> String {
        self.ns("gw")
    }

    fn lab_sh(&self, cmd: &str) -> String {
        run(Command::new("bash")
            .arg(lab_script())
            .arg(cmd)
            .env("LAB_PREFIX", &self.prefix))
    }

    /// Writes the test's config: config/demo.toml with this lab's name and directories, then
    /// `edit` applied to the document.
    pub fn write_config(&self, edit: impl FnOnce(&mut toml_edit::DocumentMut)) {
        let demo = Path::new(REPO).join("config/demo.toml");
        let text = fs::read_to_string(&demo).unwrap_or_else(|e| panic!("{}: {e}", demo.display()));
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", demo.display()));
        let gw = &mut doc["gateway"];
        gw["name"] = toml_edit::value(self.name.as_str());
        gw["state_dir"] = toml_edit::value(self.state_dir.display().to_string());
        gw["bpf_pin_dir"] = toml_edit::value(self.pin_dir.display().to_string());
        edit(&mut doc);
        fs::write(&self.config, doc.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", self.config.display()));
    }

    /// The daemon's published status (`<state_dir>/status.json`), as last written.
    pub fn status(&self) -> Value {
        let p = self.state_dir.join("status.json");
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// A datapath counter as `meshgw status --json` reports it (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        let out = run(Command::new(MESHGW)
            .args(["status", "--json", "--config"])
            .arg(&self.config));
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("meshgw status --json: {e}: {out}"));
        v["counters"][name].as_u64().unwrap_or(0)
    }

    /// Starts the daemon in the gateway namespace and waits for its ready file.
    pub fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "gateway already running");
        let ready = self.state_dir.join("ready");
        // A ready file left by an earlier run must not count for this one.
        match fs::remove_file(&ready) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("rm {}: {e}", ready.display()),
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let log2 = log.try_clone().expect("dup log fd");
        // `ip netns exec` execs the daemon: the child's pid is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.gw(), MESHGW, "run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MESHGW}: {e}"));
        let started = Instant::now();
        eprintln!("[{}] gateway started (pid {})", self.test, child.id());
        self.gateway = Some(Gateway { child });

        let outcome = poll(READY_TIMEOUT, || {
            if ready.exists() {
                return Some(Ok(()));
            }
            match self.gateway.as_mut().map(|g| g.child.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status.to_string())),
                _ => None,
            }
        });
        match outcome {
            Some(Ok(())) => eprintln!(
                "[{}] gateway ready after {:.1} s",
                self.test,
                started.elapsed().as_secs_f64()
            ),
            Some(Err(status)) => {
                self.gateway = None;
                panic!(
                    "the gateway exited before it was ready ({status}); log:\n{}",
                    self.log_tail(40)
                )
            }
            None => panic!(
                "the gateway was not ready after {READY_TIMEOUT:?} ({} missing); log:\n{}",
                ready.display(),
                self.log_tail(40)
            ),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let g = self.gateway.as_ref().expect("gateway not running");
        let pid = libc::pid_t::try_from(g.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// Sends SIGHUP: the daemon reloads its config file.
    pub fn reload_gateway(&self) {
        eprintln!("[{}] SIGHUP to the gateway", self.test);
        self.signal(libc::SIGHUP);
    }

    /// Sends SIGTERM and waits (bounded) for the daemon to exit; returns its exit status.
    pub fn stop_gateway(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut g = self.gateway.take().expect("gateway not running");
        let status = poll(STOP_TIMEOUT, || g.child.try_wait().ok().flatten());
        match status {
            Some(s) => {
                eprintln!("[{}] gateway stopped: {s}", self.test);
                s
            }
            None => {
                let _ = g.child.kill();
                let _ = g.child.wait();
                panic!(
                    "the gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_tail(40)
                )
            }
        }
    }

    /// Asserts the daemon is still running (it did not crash during the test).
    pub fn assert_gateway_running(&mut self) {
        let g = self.gateway.as_mut().expect("gateway not started");
        if let Ok(Some(status)) = g.child.try_wait() {
            self.gateway = None;
            panic!("the gateway exited ({status}); log:\n{}", self.log_tail(40));
        }
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The MAC address of the gateway's `legacy` interface.
    pub fn gw_legacy_mac(&self) -> String {
        let v = ip_json(&self.gw(), &["link", "show", "dev", "legacy"]);
        v[0]["address"]
            .as_str()
            .expect("legacy has a MAC address")
            .to_lowercase()
    }

    fn dump_for_failure(&self) {
        eprintln!(
            "---- [{}] gateway log {} (last 60 lines) ----\n{}",
            self.test,
            self.log.display(),
            self.log_tail(60)
        );
        let state = Path::new("/run/meshgw-lab").join(&self.prefix);
        for pod in ["pod-1", "pod-2"] {
            let f = state.join(format!("{pod}.log"));
            eprintln!("---- {pod} log (last 10 lines) ----\n{}", tail(&f, 10));
        }
        if let Ok(out) = Command::new("bash")
            .arg(lab_script())
            .arg("status")
            .env("LAB_PREFIX", &self.prefix)
            .output()
        {
            eprintln!(
                "---- lab status ----\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let kept = PathBuf::from(format!("/tmp/meshgw-e2e-{}-{}.log", self.test, self.name));
        if fs::copy(&self.log, &kept).is_ok() {
            eprintln!("---- gateway log kept in {} ----", kept.display());
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            let pid = libc::pid_t::try_from(g.child.id()).unwrap_or(0);
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if poll(STOP_TIMEOUT, || g.child.try_wait().ok().flatten()).is_none() {
                let _ = g.child.kill();
                let _ = g.child.wait();
            }
        }
        if thread::panicking() {
            self.dump_for_failure();
        }
        let down = Command::new("bash")
            .arg(lab_script())
            .arg("down")
            .env("LAB_PREFIX", &self.prefix)
            .output();
        if let Ok(out) = &down {
            if !out.status.success() {
                eprintln!(
                    "[{}] lab down failed: {}",
                    self.test,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // The lab's devices are gone; remove what the daemon left behind (pins survive SIGTERM).
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir("/run/meshgw-e2e");
        eprintln!("[{}] lab {} down", self.test, self.prefix);
    }
}

fn tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => {
            let _ = f.read_to_string(&mut text);
        }
        Err(e) => return format!("({}: {e})", path.display()),
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Removes labs left by earlier test processes that died without cleaning up (SIGKILL, say):
/// namespaces `e2e<k>p<pid>-*` and their pin/state directories whose process no longer exists.
fn sweep_stale_labs() {
    let mut stale = std::collections::BTreeSet::new();
    for dir in [
        "/run/netns",
        "/run/meshgw/bpffs",
        "/run/meshgw",
        "/run/meshgw-e2e",
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.split('-').next().unwrap_or_default().to_owned();
            let Some(pid) = name
                .strip_prefix("e2e")
                .and_then(|rest| rest.split_once('p'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                stale.insert(name);
            }
        }
    }
    for name in stale {
        eprintln!("removing stale lab {name} from an earlier test run");
        let _ = Command::new("bash")
            .arg(lab_script())
            .arg("down")
            .env("LAB_PREFIX", &name)
            .output();
        let _ = fs::remove_dir_all(format!("/run/meshgw/bpffs/{name}"));
        let _ = fs::remove_dir_all(format!("/run/meshgw/{name}"));
        let _ = fs::remove_dir_all(format!("/run/meshgw-e2e/{name}"));
    }
}

/// The addresses on device `dev` in namespace `ns`, as sorted "addr/len" strings, without
/// kernel-made IPv6 link-local addresses.
pub fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["addr", "show", "dev", dev]);
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|a| a["scope"].as_str() != Some("link"))
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or("?"),
                a["prefixlen"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    out.sort();
    out
}

/// Every IPv4 and IPv6 route in every table of `ns` that the kernel did not make itself (the
/// kernel's own routes follow from addresses and links), one normalised line each, sorted.
///
/// This parses iproute2's text output: its JSON output of a route with `encap ip` has two `dst`
/// keys (the route's and the tunnel's), and a JSON parser keeps only the tunnel's.
pub fn non_kernel_routes(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let text =
            run(Command::new("ip").args(["-n", ns, family, "route", "show", "table", "all"]));
        // A multipath route continues on indented lines.
        let mut routes: Vec<String> = Vec::new();
        for line in text.lines() {
            match routes.last_mut() {
                Some(last) if line.starts_with(char::is_whitespace) => {
                    last.push(' ');
                    last.push_str(line);
                }
                _ => routes.push(line.to_owned()),
            }
        }
        for r in routes {
            let words: Vec<&str> = r.split_whitespace().collect();
            if words.windows(2).any(|w| w == ["proto", "kernel"]) {
                continue;
            }
            let mut norm = vec![family];
            let mut it = words.into_iter();
            while let Some(w) = it.next() {
                if w == "expires" {
                    it.next();
                } else {
                    norm.push(w);
                }
            }
            out.push(norm.join(" "));
        }
    }
    out.sort();
    out
}

/// Entries of the legacy host's neighbour table for `ip`: (lladdr, states).
pub fn neighbour(ns: &str, ip: IpAddr) -> Option<(String, Vec<String>)> {
    let family = if ip.is_ipv4() { "-4" } else { "-6" };
    let v = ip_json(ns, &[family, "neigh", "show", &ip.to_string()]);
    let e = v.as_array()?.first()?.clone();
    let lladdr = e["lladdr"].as_str().unwrap_or_default().to_lowercase();
    let states = e["state"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((lladdr, states))
}

/// Runs curl in namespace `ns` and returns the body.
pub fn curl(ns: &str, url: &str) -> String {
    run(Command::new("ip").args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5", url]))
        .trim()
        .to_owned()
}
