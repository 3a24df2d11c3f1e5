//! TLS: loading the certificate and key, the server config (ALPN `h2` and `http/1.1`), and the
//! client config for `https://` upstreams.
//!
//! The server resolves its certificate through [`CertStore`], an `arc-swap` cell, so a new
//! certificate can be swapped in for new handshakes without touching open connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate or key problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate chain could not be read or parsed.
    #[error("{path}: cannot load certificate chain: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The private key could not be read or parsed.
    #[error("{path}: cannot load private key: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key}: private key does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// An extra CA file for upstreams could not be loaded.
    #[error("{path}: cannot load upstream CA certificates: {reason}")]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind found".into()
        }
        other => format!("invalid PEM ({other})"),
    }
}

/// Loads a PEM chain and a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC) and checks that they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(pem_reason(e)))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key.to_path_buf(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(pem_reason(e)))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(e) => Err(cert_err(e.to_string())),
    }
}

/// The server's current certificate; swap in a new one with [`CertStore::replace`].
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// A store serving this certificate.
    pub fn new(key: CertifiedKey) -> CertStore {
        CertStore {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Serves a new certificate to new handshakes.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub fn server_config(certs: Arc<CertStore>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The client config for `https://` upstreams: the system's roots plus an optional CA file.
pub fn upstream_client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca {
        let ca_err = |reason: String| TlsError::UpstreamCa {
            path: path.to_path_buf(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(pem_reason(e)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(pem_reason(e)))?;
        if certs.is_empty() {
            return Err(ca_err("no CERTIFICATE block found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Writes a self-signed certificate and key for `localhost` (and 127.0.0.1, ::1) into `dir`,
/// returning their paths. Used by `demo` and tests.
pub fn write_self_signed(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let cert = dir.join("localhost.crt");
    let key = dir.join("localhost.key");
    std::fs::write(&cert, generated.cert.pem())?;
    std::fs::write(&key, generated.signing_key.serialize_pem())?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_matching_pair_and_rejects_a_mismatch() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = write_self_signed(a.path()).unwrap();
        let (_, key_b) = write_self_signed(b.path()).unwrap();
        assert!(load_certified_key(&cert_a, &key_a).is_ok());
        let e = load_certified_key(&cert_a, &key_b).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn missing_and_garbage_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path()).unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certified_key(&missing, &key).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("certificate"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let e = load_certified_key(&cert, &garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("private key"),
            "{e}"
        );
    }
}
