//! WireGuard keys: base64 Curve25519 keys as `wg genkey` writes them, private keys read from
//! files that only their owner may read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

/// A key that cannot be used; every variant names the file or the text concerned.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("private key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may access the private key file: a key others can read is no secret.
    #[error(
        "private key file {path} has mode {mode:04o}; it must be readable by its owner only \
         (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is not a base64 32-byte key.
    #[error("{what}: not a base64-encoded 32-byte WireGuard key ({reason})")]
    Malformed {
        /// Where the text came from (a file name or a config key).
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes a base64 32-byte key; `what` names its origin in the error.
pub fn parse_key(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        what: what.to_owned(),
        reason,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| malformed(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| malformed(format!("{} bytes instead of 32", bytes.len())))
}

/// Encodes a key as base64 (the form `wg` prints and the status shows).
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Decodes a peer's public key.
pub fn parse_public_key(text: &str, what: &str) -> Result<PublicKey, KeyError> {
    parse_key(text, what).map(PublicKey::from)
}

/// Reads a private key file; refuses one whose mode lets group or others access it.
pub fn load_private_key(path: &Path) -> Result<StaticSecret, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    parse_key(&text, &path.display().to_string()).map(StaticSecret::from)
}

/// The public key of a private key.
pub fn public_of(secret: &StaticSecret) -> PublicKey {
    PublicKey::from(secret)
}

/// The public key of a raw private key (as `wg pubkey` computes it).
pub fn public_key_of(private: &[u8; 32]) -> [u8; 32] {
    public_of(&StaticSecret::from(*private)).to_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str, body: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mgw-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    #[test]
    fn private_key_0600_loads_and_has_the_reference_public_key() {
        let p = temp("ok.key", &format!("{KEY}\n"), 0o600);
        let secret = load_private_key(&p).unwrap();
        // Public key computed independently (Python cryptography X25519) from the wg(8) example key.
        assert_eq!(
            encode_key(public_of(&secret).as_bytes()),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }

    #[test]
    fn group_readable_private_key_is_refused_naming_file_and_mode() {
        let p = temp("open.key", KEY, 0o640);
        let Err(e) = load_private_key(&p) else {
            panic!("accepted")
        };
        let msg = e.to_string();
        assert!(
            matches!(e, KeyError::Permissions { mode: 0o640, .. }),
            "{msg}"
        );
        assert!(msg.contains("open.key") && msg.contains("0640"), "{msg}");
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(parse_key("not base64!", "x").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        let e = parse_key(&short, "peer b public_key")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("31 bytes") && e.contains("peer b public_key"),
            "{e}"
        );
        let p = temp("bad.key", "garbage", 0o600);
        let Err(e) = load_private_key(&p) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("bad.key"));
    }

    #[test]
    fn missing_file_names_the_file() {
        let Err(e) = load_private_key(Path::new("/nonexistent/wg.key")) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("/nonexistent/wg.key"));
    }
}
