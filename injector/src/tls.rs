//! The webhook's serving certificate: loaded from PEM files and reloaded when they
//! change (cert-manager or a Secret volume rotates them in place), without a restart.
//! A broken or half-written pair keeps the previous certificate in service.
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("private key does not fit rustls: {0}")]
    Key(rustls::Error),
}

/// Parses a certificate chain and key into what rustls serves.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    certified_key_from_pem(&cert_pem, &key_pem, &cert_path.display().to_string(), &key_path.display().to_string())
}

pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: cert_name.into(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_name.into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key_name.into() },
        other => TlsError::Pem { path: key_name.into(), message: other.to_string() },
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A certificate resolver whose certificate can be swapped while serving.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingCert {
    pub fn new(initial: CertifiedKey) -> Arc<Self> {
        Arc::new(ReloadingCert { current: ArcSwap::from_pointee(initial) })
    }

    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

pub fn server_config(resolver: Arc<ReloadingCert>) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver);
    // The API server speaks HTTP/2 or HTTP/1.1 to webhooks.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Polls the files and swaps in a new pair when either changes and parses.
pub async fn watch_files(resolver: Arc<ReloadingCert>, cert: PathBuf, key: PathBuf, every: Duration) {
    let mut seen = (mtime(&cert), mtime(&key));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = (mtime(&cert), mtime(&key));
        if now == seen {
            continue;
        }
        match load_pair(&cert, &key) {
            Ok(k) => {
                resolver.set(k);
                seen = now;
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
            }
            // Mid-rotation the pair may not match yet; retry on the next tick.
            Err(e) => tracing::warn!(error = %e, "new certificate not usable yet; keeping the current one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_and_rejects() {
        let (cert, key) = self_signed("a.example");
        assert!(certified_key_from_pem(cert.as_bytes(), key.as_bytes(), "c", "k").is_ok());
        assert!(matches!(certified_key_from_pem(b"", key.as_bytes(), "c", "k"), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(certified_key_from_pem(cert.as_bytes(), b"garbage", "c", "k"), Err(TlsError::NoKey { .. })));
    }

    #[tokio::test]
    async fn reloads_when_files_change_and_keeps_old_on_garbage() {
        let dir = tempfile::tempdir().expect("dir");
        let (c1, k1) = self_signed("one.example");
        let (cp, kp) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cp, &c1).expect("w");
        std::fs::write(&kp, &k1).expect("w");
        let resolver = ReloadingCert::new(load_pair(&cp, &kp).expect("load"));
        let first = resolver.current().cert[0].clone();
        tokio::spawn(watch_files(resolver.clone(), cp.clone(), kp.clone(), Duration::from_millis(20)));
        // Garbage: old certificate stays.
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::write(&cp, "not a cert").expect("w");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(resolver.current().cert[0], first);
        // A new valid pair is picked up.
        let (c2, k2) = self_signed("two.example");
        std::fs::write(&kp, &k2).expect("w");
        std::fs::write(&cp, &c2).expect("w");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while resolver.current().cert[0] == first && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_ne!(resolver.current().cert[0], first);
    }
}
