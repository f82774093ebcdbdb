//! Mutual TLS for the peering channel: certificates under a CA, or pinned certificate
//! fingerprints. Either way each side also checks that the certificate belongs to the gateway
//! id its peer claims (see [`Trust::authorize`]), so a gateway with a valid certificate cannot
//! pose as another.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// ALPN of the peering protocol.
pub const ALPN: &[u8] = b"meshgw-peering/1";

/// A TLS setup that cannot be used; names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint is not 64 hex digits.
    #[error("pinned fingerprint for {id}: {reason}")]
    Fingerprint {
        /// The gateway id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// This gateway's certificate chain and key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM key; the key file must be readable by its owner
    /// only (like the WireGuard key).
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let chain = load_certs(cert)?;
        check_private(key)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            path: key.to_owned(),
            reason: format!("no usable private key: {e}"),
        })?;
        Ok(Identity {
            chain,
            key: key_der,
        })
    }
}

fn check_private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::File {
            path: path.to_owned(),
            reason: format!(
                "mode {mode:04o}; a private key must be readable by its owner only (chmod 600)"
            ),
        });
    }
    Ok(())
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Which peers to trust.
#[derive(Clone)]
pub enum Trust {
    /// Certificates issued by one of these CAs, for a DNS name equal to the gateway id.
    Ca(Arc<RootCertStore>),
    /// Exactly these leaf certificates: SHA-256 of the DER per gateway id.
    Pinned(BTreeMap<String, [u8; 32]>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Ca(r) => write!(f, "Ca({} roots)", r.len()),
            Trust::Pinned(p) => write!(f, "Pinned({:?})", p.keys().collect::<Vec<_>>()),
        }
    }
}

/// SHA-256 of a certificate's DER, the pinned form.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses a fingerprint written as 64 hex digits (colons allowed, as openssl prints them).
pub fn parse_fingerprint(id: &str, text: &str) -> Result<[u8; 32], TlsError> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = |reason: &str| TlsError::Fingerprint {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if hex.len() != 64 {
        return Err(bad("expected 64 hex digits (SHA-256)"));
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad("not hex"))?;
    }
    Ok(out)
}

impl Trust {
    /// A CA trust from PEM files.
    pub fn ca_from_files(paths: &[PathBuf]) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        for p in paths {
            for c in load_certs(p)? {
                roots.add(c).map_err(|e| TlsError::File {
                    path: p.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        Ok(Trust::Ca(Arc::new(roots)))
    }

    /// Whether `certs` (leaf first, as verified by the handshake) belong to `gateway_id`.
    pub fn authorize(&self, gateway_id: &str, certs: &[CertificateDer<'_>]) -> Result<(), String> {
        let leaf = certs.first().ok_or("no certificate presented")?;
        match self {
            Trust::Ca(_) => {
                let name = ServerName::try_from(gateway_id)
                    .map_err(|_| format!("gateway id {gateway_id:?} is not a DNS name"))?;
                let ee = webpki::EndEntityCert::try_from(leaf)
                    .map_err(|e| format!("unparsable certificate: {e}"))?;
                ee.verify_is_valid_for_subject_name(&name)
                    .map_err(|e| format!("certificate is not for {gateway_id}: {e}"))
            }
            Trust::Pinned(pins) => match pins.get(gateway_id) {
                Some(pin) if *pin == fingerprint(leaf) => Ok(()),
                Some(_) => Err(format!(
                    "certificate does not match the pin for {gateway_id}"
                )),
                None => Err(format!("no pinned certificate for {gateway_id}")),
            },
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: client certificates are mandatory.
pub fn server_config(id: &Identity, trust: &Trust) -> Result<rustls::ServerConfig, TlsError> {
    let p = provider();
    let verifier: Arc<dyn ClientCertVerifier> = match trust {
        Trust::Ca(roots) => WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?,
        Trust::Pinned(pins) => Arc::new(PinVerifier::new(pins, p.clone())),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The client side (the dialing gateway), presenting its certificate.
pub fn client_config(id: &Identity, trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let p = provider();
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match trust {
        Trust::Ca(roots) => builder.with_root_certificates(roots.clone()),
        Trust::Pinned(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pins, p))),
    };
    let mut cfg = builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts exactly the pinned leaf certificates (the handshake signature is still verified,
/// so the peer must hold the pinned certificate's key).
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    fn new(pins: &BTreeMap<String, [u8; 32]>, provider: Arc<CryptoProvider>) -> PinVerifier {
        PinVerifier {
            pins: pins.values().copied().collect(),
            provider,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.pins.contains(&fingerprint(cert)) {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint is not pinned".into(),
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PinVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint("b", &hex).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint("b", &colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("b", "abcd").is_err());
        assert!(parse_fingerprint("b", &"zz".repeat(32)).is_err());
    }

    #[test]
    fn pinned_trust_binds_the_certificate_to_the_claimed_id() {
        let c = rcgen::generate_simple_self_signed(vec!["gw-b".into()]).unwrap();
        let der = c.cert.der().clone();
        let t = Trust::Pinned(BTreeMap::from([("gw-b".to_owned(), fingerprint(&der))]));
        t.authorize("gw-b", std::slice::from_ref(&der)).unwrap();
        assert!(t
            .authorize("gw-c", std::slice::from_ref(&der))
            .unwrap_err()
            .contains("gw-c"));
        let other = rcgen::generate_simple_self_signed(vec!["gw-b".into()]).unwrap();
        assert!(t.authorize("gw-b", &[other.cert.der().clone()]).is_err());
    }

    #[test]
    fn ca_trust_requires_the_gateway_id_as_the_certificate_name() {
        let c = rcgen::generate_simple_self_signed(vec!["gw-b".into()]).unwrap();
        let der = c.cert.der().clone();
        let t = Trust::Ca(Arc::new(RootCertStore::empty()));
        t.authorize("gw-b", std::slice::from_ref(&der)).unwrap();
        let e = t.authorize("gw-a", std::slice::from_ref(&der)).unwrap_err();
        assert!(e.contains("not for gw-a"), "{e}");
    }
}
