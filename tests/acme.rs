//! Certificates from a real ACME server (pebble): issuance by TLS-ALPN-01 and HTTP-01, the served
//! certificate chaining to pebble's root, renewal (at two thirds of the lifetime, and in the
//! window renewal information suggests), the ACME server down at renewal time, and a restart
//! with a stored certificate.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::pebble::{Ari, Pebble};
use support::*;

const DOMAIN: &str = "meet.example.com";

/// Ports for the router's HTTPS and plain-HTTP listeners, told to pebble before they listen.
fn ports() -> (u16, u16) {
    (closed_port(), closed_port())
}

/// A router whose certificate comes from `pebble` by `challenge`, kept in `state`.
fn acme_router(pebble: &Pebble, ports: (u16, u16), challenge: &str, state: &Path) -> Router {
    acme_router_at(pebble, &pebble.directory(), ports, challenge, state)
}

/// The same, told `directory` as the ACME directory (pebble's, or one in front of it).
fn acme_router_at(
    pebble: &Pebble,
    directory: &str,
    (https, http): (u16, u16),
    challenge: &str,
    state: &Path,
) -> Router {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{https}"
http_listen = "127.0.0.1:{http}"
admin_listen = "127.0.0.1:0"

[tls.acme]
domains = ["{DOMAIN}"]
contact = "mailto:ops@example.com"
directory = "{directory}"
directory_ca = {ca:?}
state_dir = {state:?}
challenge = "{challenge}"
retry_interval = "1s"

[[nodes]]
name = "jitsi-a"
upstream = "http://127.0.0.1:{node}"
"#,
        ca = pebble.tls.ca,
        node = closed_port(),
    );
    // The router's own clients never use its certificate here; any `Certs` does.
    Router::start(&pebble.tls, &text)
}

/// The certificate the router serves to a handshake for `DOMAIN`, verified against `root`.
async fn served(router: &Router, root: &str) -> Result<CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(root) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(router.https).await.unwrap();
    let name = ServerName::try_from(DOMAIN).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let chain = tls.get_ref().1.peer_certificates().unwrap();
    Ok(chain[0].clone().into_owned())
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

async fn status(router: &Router) -> Value {
    router.admin_json("/api/status").await
}

async fn wait_served(router: &Router, pebble: &Pebble) -> CertificateDer<'static> {
    let root = pebble.root().await;
    eventually(
        Duration::from_secs(30),
        "a certificate to be issued",
        || async { served(router, &root).await.is_ok() },
    )
    .await;
    served(router, &root).await.unwrap()
}

/// Waits up to `limit` for the router to serve a certificate other than `first` (verified
/// against `root`), and returns it.
async fn wait_renewed(
    router: &Router,
    root: &str,
    first: &CertificateDer<'static>,
    limit: Duration,
    what: &str,
) -> CertificateDer<'static> {
    eventually(limit, what, || async {
        served(router, root).await.is_ok_and(|c| &c != first)
    })
    .await;
    served(router, root).await.unwrap()
}

async fn acme_failures(router: &Router) -> f64 {
    let metrics = metrics(router).await;
    metrics
        .get("jitsi_router_acme_failures_total")
        .copied()
        .unwrap_or_else(|| panic!("{metrics:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_a_certificate_that_chains_to_the_acme_root_and_survives_a_restart() {
    let ports = ports();
    let pebble = Pebble::start(ports.1, ports.0, None).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("acme");
    let mut router = acme_router(&pebble, ports, "tls-alpn-01", &state_dir);
    let first = wait_served(&router, &pebble).await;
    let logs = router.logs();
    for step in [
        "account registered",
        "order placed",
        "challenge ready",
        "certificate issued",
    ] {
        assert!(logs.contains(step), "no progress line {step:?}:\n{logs}");
    }
    eventually(
        Duration::from_secs(10),
        "a renewal planned by the lifetime (pebble 2.4 offers no ARI)",
        || async { status(&router).await["certificate"]["renew_by"] == "lifetime" },
    )
    .await;
    let answer = status(&router).await;
    assert_eq!(answer["certificate"]["source"], "acme", "{answer}");
    let validity = |key: &str| answer["certificate"][key].as_u64().unwrap();
    let two_thirds =
        validity("not_before") + (validity("not_after") - validity("not_before")) * 2 / 3;
    assert!(validity("renew_at").abs_diff(two_thirds) <= 1, "{answer}");
    let expiry = metrics(&router).await["jitsi_router_certificate_expiry_timestamp_seconds"];
    assert_eq!(Some(expiry), answer["certificate"]["not_after"].as_f64());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(&state_dir.join("key.pem")), 0o600);
    }

    // A restart serves the stored certificate at once, without a new order.
    router.signal("TERM");
    router.wait_exit(Duration::from_secs(10));
    let router = acme_router(&pebble, ports, "tls-alpn-01", &state_dir);
    let again = served(&router, &pebble.root().await).await.unwrap();
    assert_eq!(again, first, "the stored certificate");
    let logs = router.logs();
    assert!(logs.contains("the stored certificate serves"), "{logs}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!router.logs().contains("order placed"), "{}", router.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_is_answered_on_the_plain_http_listener_and_never_redirected() {
    let ports = ports();
    let pebble = Pebble::start(ports.1, ports.0, None).await;
    let state = tempfile::tempdir().unwrap();
    let router = acme_router(&pebble, ports, "http-01", state.path());
    wait_served(&router, &pebble).await;
    assert!(
        router.logs().contains("challenge=Http01"),
        "{}",
        router.logs()
    );
    // A challenge nobody opened: 404 from the router, not a redirect and not a node.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let http = router.http.unwrap();
    let unknown = format!("http://{http}/.well-known/acme-challenge/nope");
    let answer = client.get(unknown).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    let other = client
        .get(format!("http://{http}/room"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 308, "everything else still goes to HTTPS");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_renewed_and_the_acme_server_down_keeps_the_old_one() {
    let ports = ports();
    // Valid for 12 s: renewed after about 8.
    let mut pebble = Pebble::start(ports.1, ports.0, Some(Duration::from_secs(12))).await;
    let state = tempfile::tempdir().unwrap();
    let router = acme_router(&pebble, ports, "tls-alpn-01", state.path());
    let first = wait_served(&router, &pebble).await;
    let root = pebble.root().await;
    let limit = Duration::from_secs(30);
    wait_renewed(
        &router,
        &root,
        &first,
        limit,
        "a renewal at two thirds of the lifetime",
    )
    .await;

    // The ACME server goes away: renewals fail, are counted, and the last certificate serves.
    pebble.stop();
    let renew = reqwest::Client::new()
        .post(router.admin_url("/api/tls/renew"))
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 202);
    eventually(
        Duration::from_secs(20),
        "failures to be counted",
        || async { acme_failures(&router).await >= 2.0 },
    )
    .await;
    let kept = served(&router, &root).await;
    assert!(kept.is_ok(), "the old certificate still serves: {kept:?}");
    assert!(router
        .logs()
        .contains("the current certificate keeps serving"));

    // Back (a new pebble: new root, no account): a retry registers again and succeeds.
    pebble.restart().await;
    let new_root = pebble.root().await;
    eventually(Duration::from_secs(30), "a retry to succeed", || async {
        served(&router, &new_root).await.is_ok()
    })
    .await;
    let logs = router.logs();
    assert!(logs.contains("registering again"), "{logs}");
}

/// The certificate's ARI identifier: its authority key identifier and serial, base64url.
fn ari_id(cert: &CertificateDer<'_>) -> String {
    instant_acme::CertificateIdentifier::try_from(cert)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_follows_the_window_the_acme_server_suggests_and_moves_when_it_does() {
    let ports = ports();
    // Valid for pebble's five years: by the lifetime alone, renewal would be years away.
    let pebble = Pebble::start(ports.1, ports.0, None).await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let later = (now + 30 * day, now + 31 * day);
    let ari = Ari::start(&pebble, later).await;
    let state = tempfile::tempdir().unwrap();
    let router = acme_router_at(&pebble, &ari.directory, ports, "tls-alpn-01", state.path());
    let first = wait_served(&router, &pebble).await;
    let id = ari_id(&first);
    eventually(
        Duration::from_secs(10),
        "a renewal planned by ARI",
        || async { status(&router).await["certificate"]["renew_by"] == "ari" },
    )
    .await;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let renew_at = status(&router).await["certificate"]["renew_at"]
        .as_u64()
        .unwrap();
    assert!(
        (secs(later.0)..=secs(later.1)).contains(&renew_at),
        "{renew_at} not in {later:?}"
    );
    assert_eq!(
        ari.asked(),
        std::slice::from_ref(&id),
        "asked about the served certificate"
    );

    // The server moves the window into the past (as before revoking): the router asks again
    // when its Retry-After says (held to at least a minute) and renews at once.
    ari.set(&id, (now - day, now - Duration::from_secs(60)));
    let root = pebble.root().await;
    let limit = Duration::from_secs(90);
    let second = wait_renewed(
        &router,
        &root,
        &first,
        limit,
        "a renewal when the window moves",
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the new certificate's window asked for",
        || async { ari.asked().contains(&ari_id(&second)) },
    )
    .await;
    let logs = router.logs();
    // Pebble 2.4 does not reflect `replaces`, so the replacement order falls back to a plain one.
    assert!(logs.contains("ordering anew"), "{logs}");
    assert_eq!(acme_failures(&router).await, 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served_now = served(&router, &root).await.unwrap();
    assert_eq!(
        served_now, second,
        "the new certificate is not renewed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_certificates_show_their_expiry_and_cannot_be_renewed_through_the_api() {
    let certs = Certs::new();
    let router = Router::start(&certs, &config(&certs, "", &[]));
    let metrics = metrics(&router).await;
    let expiry = metrics["jitsi_router_certificate_expiry_timestamp_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(expiry > now.as_secs_f64(), "{expiry}");
    let answer = status(&router).await;
    assert_eq!(answer["certificate"]["source"], "files");
    assert!(answer["certificate"]["renew_at"].is_null(), "{answer}");
    let renew = reqwest::Client::new()
        .post(router.admin_url("/api/tls/renew"))
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acme_webroot_serves_challenge_files_and_nothing_else() {
    let certs = Certs::new();
    let webroot = tempfile::tempdir().unwrap();
    let dir = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tok-EN_1"), "tok-EN_1.thumbprint\n").unwrap();
    std::fs::write(webroot.path().join("secret"), "not served").unwrap();
    let server = format!(
        "[server]\nhttp_listen = \"127.0.0.1:0\"\nacme_webroot = {:?}\n",
        webroot.path()
    );
    let text = config(&certs, "", &[]).replace("[server]\n", &server);
    let router = Router::start(&certs, &text);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let http = router.http.unwrap();
    let get = |path: &str| client.get(format!("http://{http}{path}")).send();
    let found = get("/.well-known/acme-challenge/tok-EN_1").await.unwrap();
    assert_eq!(found.status(), 200);
    assert_eq!(found.text().await.unwrap(), "tok-EN_1.thumbprint");
    for path in [
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/..%2F..%2Fsecret",
        "/.well-known/acme-challenge/",
    ] {
        let answer = get(path).await.unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }
}
