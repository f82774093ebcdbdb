//! A Cluster Mesh API stand-in for the lab: Debian's etcd with mutual TLS, run inside one of the
//! lab's namespaces (as clustermesh-apiserver is reached over the mesh network), with the
//! certificates Cilium uses (server names clustermesh-apiserver.cilium.io and *.mesh.cilium.io,
//! client CN `remote`). Keys are written with `etcdctl`, an independent client.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A running etcd and the files a client needs.
pub struct Etcd {
    child: Option<Child>,
    /// Namespace it runs in (`None`: the test's own).
    pub netns: Option<String>,
    ip: String,
    port: u16,
    /// Further etcd flags (kept for restarts).
    extra: Vec<String>,
    /// `https://ip:port`.
    pub endpoint: String,
    /// Directory of certificates and data.
    pub dir: PathBuf,
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A CA named `ca` (`<ca>.crt`) and a signer for leaves under it.
fn ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    write(&dir.join(format!("{name}.crt")), &ca_cert.pem());
    Issuer::new(ca, ca_key)
}

/// `<name>.crt` and `<name>.key` signed by `issuer`.
fn leaf(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    cn: &str,
    sans: Vec<String>,
    ips: &[&str],
) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(sans).expect("params");
    for ip in ips {
        p.subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("ip")));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, issuer).expect("sign");
    write(&dir.join(format!("{name}.crt")), &cert.pem());
    write(&dir.join(format!("{name}.key")), &key.serialize_pem());
}

/// Cilium's set (`ca.crt`, `server.*`, client `remote.*`), and for failure tests a second CA
/// (`other-ca.crt`) with a client (`foreign.*`) and a server-looking leaf it signed.
fn certs(dir: &Path, ip: &str) {
    let mesh = ca(dir, "ca");
    leaf(
        dir,
        &mesh,
        "server",
        "clustermesh-apiserver",
        vec![
            "clustermesh-apiserver.cilium.io".into(),
            "*.mesh.cilium.io".into(),
        ],
        &["127.0.0.1", ip],
    );
    leaf(dir, &mesh, "remote", "remote", vec![], &[]);
    let other = ca(dir, "other-ca");
    leaf(dir, &other, "foreign", "remote", vec![], &[]);
}

impl Etcd {
    /// Starts etcd in `netns`, listening on `ip`:2379, and waits until it answers.
    pub fn start(netns: &str, ip: &str, tag: &str) -> Etcd {
        Etcd::start_at(Some(netns), ip, 2379, tag, &[])
    }

    /// Starts etcd on loopback in the current namespace, on free ports.
    pub fn start_local(tag: &str) -> Etcd {
        Etcd::start_local_with(tag, &[])
    }

    /// [`Etcd::start_local`] with further etcd flags (a larger `--quota-backend-bytes`, say).
    pub fn start_local_with(tag: &str, extra: &[&str]) -> Etcd {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        Etcd::start_at(None, "127.0.0.1", free(), tag, extra)
    }

    fn start_at(netns: Option<&str>, ip: &str, port: u16, tag: &str, extra: &[&str]) -> Etcd {
        let dir = PathBuf::from(format!("/run/meshgw-e2e/etcd-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("etcd dir");
        certs(&dir, ip);
        let mut e = Etcd {
            child: None,
            netns: netns.map(str::to_string),
            ip: ip.to_string(),
            port,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            endpoint: format!("https://{ip}:{port}"),
            dir,
        };
        e.spawn();
        e
    }

    /// `prog` run in the etcd's namespace.
    fn command(&self, prog: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        }
    }

    fn spawn(&mut self) {
        let d = |f: &str| self.dir.join(f).display().to_string();
        // The peer port is unused (one member) but must not collide with another test's.
        let peer = format!("http://{}:{}", self.ip, self.port + 1);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("log");
        let child = self
            .command("etcd")
            .args(["--name", "cm", "--data-dir", &d("data")])
            .args([
                "--listen-client-urls",
                &self.endpoint,
                "--advertise-client-urls",
                &self.endpoint,
            ])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("cm={peer}")])
            .args(["--client-cert-auth", "--trusted-ca-file", &d("ca.crt")])
            .args([
                "--cert-file",
                &d("server.crt"),
                "--key-file",
                &d("server.key"),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("needs etcd (Debian's etcd-server, installed by make deps)");
        self.child = Some(child);
        let t = Instant::now();
        while !self.ctl(&["endpoint", "health"]).0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "etcd did not start; see {}/etcd.log",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops etcd (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `ip netns exec` may leave etcd itself behind its wrapper: stop it by its data dir.
        let _ = Command::new("pkill")
            .args([
                "-f",
                "--",
                &format!("--data-dir {}", self.dir.join("data").display()),
            ])
            .status();
        let t = Instant::now();
        while self.ctl(&["endpoint", "health"]).0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts etcd again on its old data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let out = self
            .command("etcdctl")
            .args(["--endpoints", &self.endpoint, "--dial-timeout", "2s"])
            .args([
                "--cacert",
                &d("ca.crt"),
                "--cert",
                &d("remote.crt"),
                "--key",
                &d("remote.key"),
            ])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Writes a key.
    pub fn put(&self, key: &str, value: &str) {
        let (ok, out) = self.ctl(&["put", key, value]);
        assert!(ok, "etcdctl put {key}: {out}");
    }

    /// Deletes a key.
    pub fn del(&self, key: &str) {
        let (ok, out) = self.ctl(&["del", key]);
        assert!(ok, "etcdctl del {key}: {out}");
    }

    /// A file under the certificate directory.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
