//! Throw-away network namespaces for the netlink tests.
//!
//! Each test creates its own uniquely named namespace with `ip netns add` (tests only: the
//! daemon never runs `ip`), runs its code on a thread that has entered it with `setns`, and
//! deletes it on drop, also when the test panics. Sockets (rtnetlink included) belong to the
//! namespace of the thread that creates them, so the tokio runtime and everything it opens are
//! created on that thread.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Panics unless running as root: these tests create namespaces and devices in the kernel.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!("needs root: the netlink tests create network namespaces, devices, routes and neighbours (run `make test` as root)");
    }
}

/// A network namespace that is deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace named after `tag`, the process and a counter, with `lo` up.
    pub fn new(tag: &str) -> Netns {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("mgwt-{tag}-{}-{n}", std::process::id());
        // A leftover of a crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns with a valid namespace fd; it moves this thread only.
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

    /// Runs the future made by `f` on a current-thread tokio runtime inside the namespace.
    pub fn block_on<F, T>(&self, f: impl FnOnce() -> F + Send) -> T
    where
        F: Future<Output = T>,
        T: Send,
    {
        self.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        })
    }

    /// `ip -n <ns> <args>`; panics with the output if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -n <ns> <args>`, returning whether it succeeded (for commands expected to fail).
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ip -n <ns> -j <args>` parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run(Command::new("ip").args(["-n", &self.name, "-j"]).args(args));
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {cmd:?}: {e}"))
    }

    /// The ifindex of device `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let v = self.ip_json(&["link", "show", "dev", dev]);
        v[0]["ifindex"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ifindex for {dev}: {v}")) as u32
    }

    /// The MAC address of device `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let v = self.ip_json(&["link", "show", "dev", dev]);
        parse_mac(
            v[0]["address"]
                .as_str()
                .unwrap_or_else(|| panic!("no address for {dev}: {v}")),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command; panics with its output when it fails.
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

/// Parses `02:aa:00:00:00:01`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "bad MAC {s}");
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).unwrap_or_else(|e| panic!("bad MAC {s}: {e}"));
    }
    mac
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
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
