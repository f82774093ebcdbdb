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
    child: Child,
    /// Namespace it runs in.
    pub netns: String,
    /// `https://ip:port`.
    pub endpoint: String,
    /// Directory of certificates and data.
    pub dir: PathBuf,
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn certs(dir: &Path, ip: &str) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "clustermesh-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    write(&dir.join("ca.crt"), &ca_cert.pem());

    let leaf = |name: &str, cn: &str, sans: Vec<String>, ips: &[&str]| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        for ip in ips {
            p.subject_alt_names
                .push(SanType::IpAddress(ip.parse().expect("ip")));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &issuer).expect("sign");
        write(&dir.join(format!("{name}.crt")), &cert.pem());
        write(&dir.join(format!("{name}.key")), &key.serialize_pem());
    };
    leaf(
        "server",
        "clustermesh-apiserver",
        vec![
            "clustermesh-apiserver.cilium.io".into(),
            "*.mesh.cilium.io".into(),
        ],
        &["127.0.0.1", ip],
    );
    leaf("remote", "remote", vec![], &[]);
}

impl Etcd {
    /// Starts etcd in `netns`, listening on `ip`, and waits until it answers.
    pub fn start(netns: &str, ip: &str, tag: &str) -> Etcd {
        let dir = PathBuf::from(format!("/run/meshgw-e2e/etcd-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("etcd dir");
        certs(&dir, ip);
        let d = |f: &str| dir.join(f).display().to_string();
        let endpoint = format!("https://{ip}:2379");
        let log = fs::File::create(dir.join("etcd.log")).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "etcd",
                "--name",
                "cm",
                "--data-dir",
                &d("data"),
            ])
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &format!("cm=http://{ip}:2380")])
            .args(["--client-cert-auth", "--trusted-ca-file", &d("ca.crt")])
            .args([
                "--cert-file",
                &d("server.crt"),
                "--key-file",
                &d("server.key"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("needs etcd (Debian's etcd-server, installed by make deps)");
        let e = Etcd {
            child,
            netns: netns.into(),
            endpoint,
            dir,
        };
        let t = Instant::now();
        while !e.ctl(&["endpoint", "health"]).0 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "etcd did not start; see {}/etcd.log",
                e.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "etcdctl",
                "--endpoints",
                &self.endpoint,
            ])
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `ip netns exec` may leave etcd itself behind its wrapper: stop it by its data dir.
        let _ = Command::new("pkill")
            .args([
                "-f",
                &format!("--data-dir {}", self.dir.join("data").display()),
            ])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
