//! TLS: rustls with the ring provider; a self-signed localhost certificate when none is configured.

use anyhow::{anyhow, Context as _};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

/// A server TLS configuration and the SHA-256 fingerprint of its leaf certificate (`AB:CD:...`).
pub struct TlsSetup {
    /// The rustls config (HTTP/2 and HTTP/1.1 by ALPN).
    pub config: Arc<rustls::ServerConfig>,
    /// Leaf certificate fingerprint.
    pub fingerprint: String,
    /// Whether the certificate was made just now.
    pub created: bool,
}

/// Colon-separated upper-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn write_private(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Loads `cert`/`key` PEM files, or (when `None`) the self-signed pair in `<data_dir>/tls/`, creating it if absent.
pub fn load(files: Option<(&Path, &Path)>, data_dir: &Path) -> anyhow::Result<TlsSetup> {
    let mut created = false;
    let (cert_path, key_path) = match files {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let dir = data_dir.join("tls");
            let (c, k) = (dir.join("localhost-cert.pem"), dir.join("localhost-key.pem"));
            if !c.exists() || !k.exists() {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let _ = std::fs::remove_file(&c);
                let _ = std::fs::remove_file(&k);
                let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
                let ck = rcgen::generate_simple_self_signed(names).context("generate self-signed certificate")?;
                write_private(&k, ck.key_pair.serialize_pem().as_bytes(), 0o600)?;
                write_private(&c, ck.cert.pem().as_bytes(), 0o644)?;
                created = true;
            }
            (c, k)
        }
    };
    let cert_pem = std::fs::read(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    let leaf = certs.first().ok_or_else(|| anyhow!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = fingerprint(leaf.as_ref());
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?,
    );
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsSetup { config: Arc::new(config), fingerprint, created })
}
