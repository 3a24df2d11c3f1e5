//! `[tls.acme]`: certificates issued and renewed by the router itself (RFC 8555).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Check;
use super::ConfigError;

/// `[tls.acme]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The names the certificate is for (the public hostname first).
    pub domains: Vec<String>,
    /// `mailto:` address the ACME server may write to about the account.
    #[serde(default)]
    pub contact: Option<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// Extra PEM CA certificates to trust for the directory's own TLS (a private ACME server).
    #[serde(default)]
    pub directory_ca: Option<PathBuf>,
    /// Where the account key, the certificate and its key are kept (created 0700).
    pub state_dir: PathBuf,
    /// How the server checks that the router answers for the domains.
    #[serde(default)]
    pub challenge: Challenge,
    /// The first wait after a failed issuance; it doubles (with jitter) up to six hours.
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub retry_interval: Duration,
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// The ACME challenge the router answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Challenge {
    /// A TLS handshake on the HTTPS listener with ALPN `acme-tls/1` (RFC 8737).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `GET /.well-known/acme-challenge/{token}` on `server.http_listen`.
    #[serde(rename = "http-01")]
    Http01,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        })
    }
}

impl Acme {
    /// The account's credentials, kept across restarts.
    pub fn account_file(&self) -> PathBuf {
        self.state_dir.join("account.json")
    }

    /// The certificate chain (PEM): what another replica's `[tls] cert` may point at.
    pub fn cert_file(&self) -> PathBuf {
        self.state_dir.join("cert.pem")
    }

    /// The certificate's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.state_dir.join("key.pem")
    }
}

/// Whether `name` is a DNS name an ACME server can validate by http-01 or tls-alpn-01.
pub(super) fn valid_domain(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.contains('.') && name.split('.').all(label)
}

/// Checks `[tls.acme]` and anchors its relative paths at the config file's folder.
pub(super) fn check(check: &Check, acme: &mut Acme, http_listen: bool) -> Result<(), ConfigError> {
    if acme.domains.is_empty() {
        return Err(check.invalid("tls.acme.domains", "[]", "needs the public hostname"));
    }
    for domain in &mut acme.domains {
        *domain = domain.to_ascii_lowercase();
        if !valid_domain(domain) {
            let problem = "not a DNS name an ACME server can check by http-01 or tls-alpn-01 (no wildcards, no IP addresses)";
            return Err(check.invalid("tls.acme.domains", &*domain, problem));
        }
    }
    if let Some(contact) = &acme.contact {
        let address = contact.strip_prefix("mailto:").unwrap_or_default();
        if !address.contains('@') || address.contains(char::is_whitespace) {
            let problem = "must be a mailto: address, like \"mailto:ops@example.com\"";
            return Err(check.invalid("tls.acme.contact", contact, problem));
        }
    }
    check.http_url("tls.acme.directory", &acme.directory, true)?;
    check.resolve("tls.acme.state_dir", &mut acme.state_dir)?;
    if let Some(ca) = &mut acme.directory_ca {
        check.resolve("tls.acme.directory_ca", ca)?;
    }
    if acme.challenge == Challenge::Http01 && !http_listen {
        let problem = "http-01 is answered on server.http_listen, which is not set";
        return Err(check.invalid("tls.acme.challenge", "http-01", problem));
    }
    if acme.retry_interval.is_zero() {
        return Err(check.invalid("tls.acme.retry_interval", "0s", "must be greater than zero"));
    }
    Ok(())
}
