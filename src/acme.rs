//! Certificates from an ACME server (RFC 8555; Let's Encrypt, or a private one), issued and
//! renewed by the router itself, so that no certbot has to share its port 80 or stop it.
//!
//! The protocol is `instant-acme`'s: a small, well-kept client (used by rustls' own projects)
//! that leaves the HTTP client and the challenge answering to its caller. So the router talks
//! to the directory through its own reqwest client (system roots plus `directory_ca`), answers
//! TLS-ALPN-01 through the certificate resolver it already has (for the `acme-tls/1` ALPN
//! only), and HTTP-01 on its plain-HTTP listener.
//!
//! At start a stored certificate for the configured domains that has not expired serves at
//! once; otherwise the HTTPS listener completes no handshake but validation ones until the
//! first certificate is issued. A certificate is renewed in the window the server suggests
//! when it offers renewal information (ARI), else at two thirds of its lifetime (`renewal`); a
//! failure is counted, logged, and retried after `retry_interval`, doubling with jitter up to
//! six hours, while the old certificate keeps serving. New handshakes get a new certificate
//! at once; open connections and tunnels carry on.
//!
//! `state_dir` (created 0700) holds `account.json`, `cert.pem` and `key.pem` (0600) and, while
//! an HTTP-01 challenge is open, its answer under `.well-known/acme-challenge/`, so that other
//! replicas can serve the files (`[tls] cert`, `key` and `[server] acme_webroot` pointed there).

mod renewal;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, Order, OrderStatus, RetryPolicy,
};

use crate::config::{Acme, Challenge};
use crate::metrics::Metrics;
use crate::tls::{self, CertStore, Validity};

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server answered with a problem, or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// A file of `state_dir` could not be read or written.
    #[error("{path}: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The issued certificate or key cannot be served.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Something else: the order ended in a state the router cannot go on from.
    #[error("{0}")]
    Other(String),
}

/// The answers to open HTTP-01 challenges: token → key authorization.
#[derive(Debug, Default)]
pub struct Http01Answers(Mutex<HashMap<String, String>>);

impl Http01Answers {
    /// The answer for `token`, if a challenge for it is open.
    pub fn get(&self, token: &str) -> Option<String> {
        (self.0.lock()).map_or(None, |answers| answers.get(token).cloned())
    }

    fn set(&self, token: &str, answer: Option<String>) {
        if let Ok(mut answers) = self.0.lock() {
            match answer {
                Some(answer) => answers.insert(token.to_owned(), answer),
                None => answers.remove(token),
            };
        }
    }
}

/// Issues and renews the served certificate.
pub struct Issuer {
    cfg: Acme,
    certs: Arc<CertStore>,
    http01: Arc<Http01Answers>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
}

/// Longest wait between two failed attempts.
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

impl Issuer {
    /// Creates `state_dir` and serves its stored certificate if it is valid for the domains.
    pub fn new(
        cfg: Acme,
        certs: Arc<CertStore>,
        http01: Arc<Http01Answers>,
        metrics: Arc<Metrics>,
    ) -> Result<Issuer, AcmeError> {
        let state = |source| AcmeError::State {
            path: cfg.state_dir.clone(),
            source,
        };
        private_dir(&cfg.state_dir).map_err(state)?;
        // The system's roots plus `directory_ca`; the environment's HTTPS proxy, if any, since
        // the directory is usually on the internet.
        let tls = tls::upstream_client_config(cfg.directory_ca.as_deref())
            .map_err(|e| AcmeError::Other(format!("tls.acme.directory_ca: {e}")))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AcmeError::Other(format!("the ACME client: {e}")))?;
        let issuer = Issuer {
            cfg,
            certs,
            http01,
            metrics,
            client,
        };
        match issuer.stored() {
            Some(validity) => {
                tracing::info!(until = %humantime::format_rfc3339_seconds(validity.not_after), "acme: the stored certificate serves");
            }
            None => {
                tracing::info!(domains = ?issuer.cfg.domains, "acme: no valid stored certificate; HTTPS serves once one is issued");
            }
        }
        Ok(issuer)
    }

    /// Serves the stored certificate if it is valid now and names every domain.
    fn stored(&self) -> Option<Validity> {
        let (cert, key) = (self.cfg.cert_file(), self.cfg.key_file());
        if !cert.exists() {
            return None;
        }
        let certified = match tls::load_certified_key(&cert, &key) {
            Ok(certified) => certified,
            Err(e) => {
                tracing::warn!(error = %e, "acme: the stored certificate cannot be used; issuing a new one");
                return None;
            }
        };
        let validity = Validity::of(&certified)?;
        let names = tls::dns_names(&certified);
        let covers = self.cfg.domains.iter().all(|d| names.contains(d));
        if !covers || validity.not_after <= SystemTime::now() {
            tracing::info!(names = ?names, "acme: the stored certificate has expired or does not name every domain");
            return None;
        }
        self.certs.replace(certified);
        Some(validity)
    }

    /// Issues and renews until dropped.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            if failures == 0 {
                self.until_renewal().await;
            } else {
                let retry = backoff(self.cfg.retry_interval, failures);
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = self.certs.renewal_requested() => {
                        tracing::info!("acme: renewal asked for");
                    }
                }
            }
            match self.issue().await {
                Ok(validity) => {
                    failures = 0;
                    let until = humantime::format_rfc3339_seconds(validity.not_after);
                    tracing::info!(%until, "acme: certificate issued and serving");
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.acme_failed();
                    let retry = backoff(self.cfg.retry_interval, failures);
                    tracing::warn!(error = %e, retry_in = %humantime::format_duration(retry), "acme: issuance failed; the current certificate keeps serving");
                }
            }
        }
    }

    /// One issuance: account, order, challenges, finalization, certificate.
    async fn issue(&self) -> Result<Validity, AcmeError> {
        let account = self.account(false).await?;
        let identifiers: Vec<Identifier> = (self.cfg.domains.iter())
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let order = match self.new_order(&account, &identifiers).await {
            Err(instant_acme::Error::Api(problem)) if account_gone(&problem) => {
                tracing::info!("acme: the server no longer knows the account; registering again");
                let account = self.account(true).await?;
                self.new_order(&account, &identifiers).await?
            }
            order => order?,
        };
        let mut order = order;
        tracing::info!(url = order.url(), "acme: order placed");
        let mut opened = Vec::new();
        let answered = self.answer_challenges(&mut order, &mut opened).await;
        let ready = match answered {
            Ok(()) => order
                .poll_ready(&RetryPolicy::new())
                .await
                .map_err(AcmeError::from),
            Err(e) => Err(e),
        };
        for (domain, token) in &opened {
            self.close_challenge(domain, token);
        }
        match ready? {
            OrderStatus::Ready => tracing::info!("acme: challenges passed; finalizing"),
            status => {
                let problem = order.state().error.as_ref().map(|p| p.to_string());
                return Err(AcmeError::Other(format!(
                    "the order is {status:?}, not ready: {}",
                    problem.unwrap_or_else(|| "no reason given".into())
                )));
            }
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&RetryPolicy::new()).await?;
        self.store(&key_pem, &chain_pem)
    }

    /// Answers every pending authorization's challenge and tells the server it may check.
    async fn answer_challenges(
        &self,
        order: &mut Order,
        opened: &mut Vec<(String, String)>,
    ) -> Result<(), AcmeError> {
        let kind = match self.cfg.challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    let domain = authorization.identifier().to_string();
                    return Err(AcmeError::Other(format!(
                        "authorization for {domain} is {status:?}"
                    )));
                }
            }
            let Some(mut challenge) = authorization.challenge(kind.clone()) else {
                return Err(AcmeError::Other(format!(
                    "the server offers no {kind:?} challenge"
                )));
            };
            let domain = challenge.identifier().to_string();
            let answer = challenge.key_authorization();
            match self.cfg.challenge {
                Challenge::TlsAlpn01 => {
                    let key = alpn_certificate(&domain, answer.digest().as_ref())?;
                    self.certs.set_alpn_challenge(&domain, Some(key));
                }
                Challenge::Http01 => {
                    self.http01
                        .set(&challenge.token, Some(answer.as_str().to_owned()));
                    self.write_http01_file(&challenge.token, Some(answer.as_str()));
                }
            }
            opened.push((domain.clone(), challenge.token.clone()));
            challenge.set_ready().await?;
            tracing::info!(%domain, challenge = ?kind, "acme: challenge ready");
        }
        Ok(())
    }

    fn close_challenge(&self, domain: &str, token: &str) {
        match self.cfg.challenge {
            Challenge::TlsAlpn01 => self.certs.set_alpn_challenge(domain, None),
            Challenge::Http01 => {
                self.http01.set(token, None);
                self.write_http01_file(token, None);
            }
        }
    }

    /// Writes (or removes) an HTTP-01 answer where other replicas' `acme_webroot` finds it.
    fn write_http01_file(&self, token: &str, answer: Option<&str>) {
        let dir = self.cfg.state_dir.join(".well-known/acme-challenge");
        let path = dir.join(token);
        let written = match answer {
            Some(answer) => {
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, answer))
            }
            None => std::fs::remove_file(&path),
        };
        if let Err(e) = written {
            tracing::debug!(file = %path.display(), error = %e, "acme: challenge file not written for other replicas");
        }
    }

    /// The ACME account: the stored one, or a new one (also when `fresh`), stored.
    async fn account(&self, fresh: bool) -> Result<Account, AcmeError> {
        let file = self.cfg.account_file();
        let builder = || Account::builder_with_http(Box::new(Http(self.client.clone())));
        if !fresh {
            if let Ok(text) = std::fs::read(&file) {
                match serde_json::from_slice::<AccountCredentials>(&text) {
                    Ok(credentials) => return Ok(builder().from_credentials(credentials).await?),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "acme: stored account unreadable; registering a new one");
                    }
                }
            }
        }
        let contact: Vec<&str> = self.cfg.contact.as_deref().into_iter().collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) =
            (builder().create(&new, self.cfg.directory.clone(), None)).await?;
        let text = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Other(e.to_string()))?;
        write_private(&file, &text)?;
        tracing::info!(id = account.id(), "acme: account registered");
        Ok(account)
    }

    /// Stores the key and chain (key first: a reader of the pair sees a mismatch, never a
    /// half-written file) and serves them.
    fn store(&self, key_pem: &str, chain_pem: &str) -> Result<Validity, AcmeError> {
        let (cert, key) = (self.cfg.cert_file(), self.cfg.key_file());
        write_private(&key, key_pem.as_bytes())?;
        write_private(&cert, chain_pem.as_bytes())?;
        let certified = tls::load_certified_key(&cert, &key)?;
        let validity = Validity::of(&certified)
            .ok_or_else(|| AcmeError::Other("the issued certificate cannot be parsed".into()))?;
        self.certs.replace(certified);
        Ok(validity)
    }
}

fn account_gone(problem: &instant_acme::Problem) -> bool {
    let kind = problem.r#type.as_deref().unwrap_or_default();
    kind.ends_with(":accountDoesNotExist") || kind.ends_with(":unauthorized")
}

/// The wait after the `n`th failure in a row: `first` doubled each time, up to six hours,
/// jittered by ±25 % so that replicas and restarts do not retry in step.
fn backoff(first: Duration, n: u32) -> Duration {
    let doubled = first.saturating_mul(1 << n.saturating_sub(1).min(16));
    let wait = doubled.min(MAX_RETRY.max(first));
    wait.mul_f64(0.75 + 0.5 * renewal::random_fraction())
}

/// The self-signed certificate a TLS-ALPN-01 validation handshake for `domain` gets: it names
/// the domain and carries the key authorization's digest in `acmeIdentifier` (RFC 8737).
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, AcmeError> {
    let failed = |e: rcgen::Error| AcmeError::Other(format!("challenge certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    tls::certified_key(cert.der().clone(), key.serialize_der()).map_err(AcmeError::from)
}

/// Creates `dir` (and its parents) readable by the router's user alone.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file renamed over it, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let failed = |source| AcmeError::State {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(failed)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// The ACME client's HTTP, through reqwest (rustls, the system's roots plus `directory_ca`).
struct Http(reqwest::Client);

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let other = |e: reqwest::Error| instant_acme::Error::Other(Box::new(e));
            let response = (client.request(parts.method, parts.uri.to_string()))
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(other)?;
            let mut head = http::Response::builder().status(response.status());
            if let Some(headers) = head.headers_mut() {
                *headers = response.headers().clone();
            }
            let bytes = response.bytes().await.map_err(other)?;
            let (parts, ()) = head.body(())?.into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_six_hours() {
        let first = Duration::from_secs(60);
        for n in 1..=3 {
            let wait = backoff(first, n);
            let base = first * (1 << (n - 1));
            assert!(
                wait >= base.mul_f64(0.75) && wait <= base.mul_f64(1.25),
                "{n}: {wait:?}"
            );
        }
        assert!(backoff(first, 40) <= MAX_RETRY.mul_f64(1.25));
    }

    #[test]
    fn the_alpn_certificate_names_the_domain() {
        let key = alpn_certificate("meet.example.com", &[7; 32]).unwrap();
        assert_eq!(tls::dns_names(&key), ["meet.example.com"]);
    }
}
