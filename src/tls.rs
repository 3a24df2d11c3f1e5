//! TLS: loading the certificate and key, the server config (ALPN `h2`, `http/1.1`, `http/1.0`),
//! and the client config for `https://` upstreams.
//!
//! The server resolves its certificate through [`CertStore`], an `arc-swap` cell, so a new
//! certificate can be swapped in for new handshakes without touching open connections.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

mod sessions;

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
    /// A CA file (for upstreams, the ACME directory or Redis) could not be loaded.
    #[error("{path}: cannot load CA certificates: {reason}")]
    Ca {
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

/// The certificates of a PEM file, at least one; `error` makes the error from the reason.
fn certificates(
    path: &Path,
    error: impl Fn(String) -> TlsError,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Loads a PEM chain and a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC) and checks that they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_path_buf(),
        reason,
    };
    let chain = certificates(cert, cert_err)?;
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

/// A certificate and PKCS#8 key made in memory (ACME's TLS-ALPN-01 challenge certificate).
pub fn certified_key(
    cert: CertificateDer<'static>,
    pkcs8: Vec<u8>,
) -> Result<CertifiedKey, TlsError> {
    let der = PrivateKeyDer::Pkcs8(pkcs8.into());
    let signing = (provider().key_provider.load_private_key(der)).map_err(|e| TlsError::Key {
        path: PathBuf::from("(generated)"),
        reason: e.to_string(),
    })?;
    Ok(CertifiedKey::new(vec![cert], signing))
}

/// The DNS names (subject alternative names) of the leaf of `key`'s chain, lower-case.
pub fn dns_names(key: &CertifiedKey) -> Vec<String> {
    let Some(leaf) = key.cert.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    (names.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The server's current certificate; swap in a new one with [`CertStore::replace`]. Also holds
/// the TLS-ALPN-01 challenge certificates of an ACME issuance in progress, served only to
/// handshakes that offer ALPN `acme-tls/1` (RFC 8737) and never to anyone else.
pub struct CertStore {
    current: ArcSwapOption<Served>,
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    renewal: tokio::sync::Notify,
    plan: Mutex<Option<RenewalPlan>>,
}

/// When the served certificate will be renewed, and what chose that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPlan {
    /// The time.
    pub at: SystemTime,
    /// `"ari"`: a time in the window the ACME server suggests; `"lifetime"`: two thirds of
    /// the certificate's lifetime.
    pub by: &'static str,
}

/// A certificate being served.
struct Served {
    key: Arc<CertifiedKey>,
    validity: Option<Validity>,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not before.
    pub not_before: SystemTime,
    /// Not after.
    pub not_after: SystemTime,
}

impl Validity {
    /// The validity of the leaf of `key`'s chain; `None` if it cannot be parsed.
    pub fn of(key: &CertifiedKey) -> Option<Validity> {
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let at = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(secs))
        };
        Some(Validity {
            not_before: at(cert.validity().not_before)?,
            not_after: at(cert.validity().not_after)?,
        })
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl CertStore {
    /// A store serving this certificate.
    pub fn new(key: CertifiedKey) -> CertStore {
        let store = CertStore::empty();
        store.replace(key);
        store
    }

    /// A store with no certificate yet: handshakes fail until one is in (ACME's first issuance).
    pub fn empty() -> CertStore {
        CertStore {
            current: ArcSwapOption::empty(),
            alpn_challenges: Mutex::new(HashMap::new()),
            renewal: tokio::sync::Notify::new(),
            plan: Mutex::new(None),
        }
    }

    /// Serves a new certificate to new handshakes.
    pub fn replace(&self, key: CertifiedKey) {
        let validity = Validity::of(&key);
        let key = Arc::new(key);
        self.current.store(Some(Arc::new(Served { key, validity })));
        self.plan_renewal(None);
    }

    /// The leaf certificate served now and its validity.
    pub fn leaf(&self) -> Option<(CertificateDer<'static>, Validity)> {
        let served = self.current.load_full()?;
        Some((served.key.cert.first()?.clone(), served.validity?))
    }

    /// Records when the served certificate will be renewed (`None`: not known).
    pub fn plan_renewal(&self, plan: Option<RenewalPlan>) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// When the served certificate will be renewed, if its issuer said.
    pub fn renewal_plan(&self) -> Option<RenewalPlan> {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the certificate served now is valid; `None` without one (or an unparsable one).
    pub fn validity(&self) -> Option<Validity> {
        self.current
            .load()
            .as_ref()
            .and_then(|served| served.validity)
    }

    /// Serves `key` to TLS-ALPN-01 validation handshakes for `domain` (`None`: no longer).
    pub fn set_alpn_challenge(&self, domain: &str, key: Option<CertifiedKey>) {
        let mut challenges = self
            .alpn_challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match key {
            Some(key) => challenges.insert(domain.to_ascii_lowercase(), Arc::new(key)),
            None => challenges.remove(&domain.to_ascii_lowercase()),
        };
    }

    /// Asks the certificate's issuer (ACME) to renew now.
    pub fn request_renewal(&self) {
        self.renewal.notify_one();
    }

    /// Completes when a renewal is asked for.
    pub async fn renewal_requested(&self) {
        self.renewal.notified().await;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation =
            (hello.alpn()).is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let domain = hello.server_name()?.to_ascii_lowercase();
            let challenges = self
                .alpn_challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            return challenges.get(&domain).cloned();
        }
        self.current
            .load()
            .as_ref()
            .map(|served| served.key.clone())
    }
}

/// The server config: TLS 1.2 and 1.3, ALPN `h2`, `http/1.1` then `http/1.0` (and `acme-tls/1`
/// when ACME validates by TLS-ALPN-01).
///
/// `http/1.0` is nginx's list too: a client offering it alone (`curl --http1.0`, some
/// monitoring probes) would otherwise be refused in the handshake, as rustls ends a handshake
/// whose offered protocols it has none of. Such a connection is served as HTTP/1.
///
/// Sessions are resumed from a store of at most `sessions` entries in memory
/// (`limits.tls_sessions`, kept as [`sessions`] says), as nginx's `ssl_session_cache` and
/// HAProxy's `tune.ssl.cachesize` keep them; rustls's own default of 256 holds only the last
/// hundred or so handshakes, so on a busy edge a browser's second connection, a second after
/// its first, would find its session gone. TLS 1.3 tickets name an entry of the store rather
/// than carry the session encrypted (no ticket key to guard or rotate), and each is taken
/// once; TLS 1.3 resumption here always makes a new key exchange (`psk_dhe_ke`), so resumed
/// sessions keep forward secrecy.
pub fn server_config(
    certs: Arc<CertStore>,
    acme_alpn: bool,
    sessions: usize,
) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.session_storage = match sessions {
        0 => Arc::new(rustls::server::NoServerSessionStorage {}),
        n => Arc::new(sessions::Sessions::new(n)),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    if acme_alpn {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config
}

/// The client config for `https://` upstreams: the system's roots plus an optional CA file,
/// whose certificates are also trusted as themselves (see `Listed` in the source).
pub fn upstream_client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let Some(path) = ca else {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    };
    let listed = load_ca(path, &mut roots)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Ca {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Listed { listed, webpki }))
        .with_no_client_auth())
}

/// DESIGN note: a certificate listed in a CA file is trusted as itself too. A server that
/// presents exactly one of them is accepted whatever names, CA flag or dates it carries: the
/// certificate a docker-jitsi-meet node makes for itself (`openssl req -x509`, subject `CN=*`,
/// no subject alternative name, marked as a CA) is one WebPKI never accepts for any name, and
/// listing it is how an operator says "this node, exactly". The handshake must still be signed
/// with that certificate's key. Every other certificate is checked by WebPKI against the
/// system's roots and the file's certificates as issuers.
#[derive(Debug)]
struct Listed {
    listed: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Listed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.listed.iter().any(|cert| cert == end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        (self.webpki).verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Adds the CA certificates of a PEM file to `roots` and returns them; fails naming the file if
/// it holds none or one that is not a usable trust anchor.
pub fn load_ca(
    path: &Path,
    roots: &mut rustls::RootCertStore,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let ca_err = |reason: String| TlsError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let certs = certificates(path, ca_err)?;
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| ca_err(e.to_string()))?;
    }
    Ok(certs)
}

/// Writes a self-signed certificate and key for `localhost` (and 127.0.0.1, ::1) into `dir`,
/// returning their paths. Used by `demo` and tests. Valid from an hour ago (clocks differ) for
/// 30 days: the demo makes a new one each run, and the dashboard shows the expiry.
pub fn write_self_signed(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(std::io::Error::other)?;
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(30 * 24 * 3600)).into();
    let signing_key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let generated = params
        .self_signed(&signing_key)
        .map_err(std::io::Error::other)?;
    let cert = dir.join("localhost.crt");
    let key = dir.join("localhost.key");
    std::fs::write(&cert, generated.pem())?;
    std::fs::write(&key, signing_key.serialize_pem())?;
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
    fn the_demo_certificate_is_valid_now_and_for_a_month() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path()).unwrap();
        let validity = Validity::of(&load_certified_key(&cert, &key).unwrap()).unwrap();
        let now = SystemTime::now();
        assert!(validity.not_before < now);
        let left = validity.not_after.duration_since(now).unwrap();
        let days = left.as_secs() / 86_400;
        assert!((29..=30).contains(&days), "{days} days left");
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
