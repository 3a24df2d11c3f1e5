//! The config file: defaults, errors that name the file, key and value, and hostile values.

use std::path::Path;
use std::time::Duration;

use jitsi_router::config::{Config, ConfigError, Mode, DEFAULT_QUERY};
use proptest::prelude::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8443"
[tls]
cert = "../certs/fullchain.pem"
key = "/etc/key.pem"
[[nodes]]
name = "jitsi-1"
upstream = "http://10.0.0.11:80"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/jitsi-router/router.toml"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn defaults_and_relative_paths() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.tls.cert,
        Path::new("/etc/jitsi-router/../certs/fullchain.pem")
    );
    assert_eq!(c.tls.key, Path::new("/etc/key.pem"));
    assert_eq!(c.routing.mode, Mode::Proxy);
    assert_eq!(c.routing.pin_idle_timeout, Duration::from_secs(600));
    assert!(c.upstream.response_timeout >= Duration::from_secs(90));
    assert_eq!(c.limits.max_request_head, 16384);
    assert_eq!(c.nodes[0].jvb_server_ids, ["jitsi-1"]);
    assert_eq!(c.nodes[0].instance, "10.0.0.11:80");
    assert_eq!(c.nodes[0].weight, 1.0);
    assert_eq!(c.limits.max_pins, 2_000_000);
    assert_eq!(c.limits.tls_sessions, 20_000);
    assert!(c.prometheus.is_none());
}

#[test]
fn shared_pins_take_a_redis_url_and_defaults() {
    assert!(parse(MINIMAL).unwrap().pins.redis.is_none());
    let text = MINIMAL.replace(
        "[tls]",
        "[pins.redis]\nurl = \"redis://:pw@10.0.0.9:6379/1\"\n[tls]",
    );
    let shared = parse(&text).unwrap().pins.redis.unwrap();
    assert_eq!(shared.url, "redis://:pw@10.0.0.9:6379/1");
    assert_eq!(shared.prefix, "jitsi-router:pin:");
    assert_eq!(shared.timeout, Duration::from_millis(250));
    assert_eq!(shared.sync_interval, Duration::from_secs(5));
    let tls = MINIMAL.replace(
        "[tls]",
        "[pins.redis]\nurl = \"rediss://redis.internal:6380\"\nca = \"redis-ca.pem\"\n[tls]",
    );
    let shared = parse(&tls).unwrap().pins.redis.unwrap();
    assert_eq!(
        shared.ca.as_deref(),
        Some(Path::new("/etc/jitsi-router/redis-ca.pem"))
    );
    assert_eq!(shared.client_cert, None);
    for (section, message) in [
        (
            "url = \"https://10.0.0.9\"",
            r#"pins.redis.url = "https://10.0.0.9": must start with redis://, rediss:// (TLS) or unix://"#,
        ),
        (
            "url = \"redis://10.0.0.9:notaport\"",
            r#"pins.redis.url = "redis://10.0.0.9:notaport": not a Redis URL"#,
        ),
        (
            "url = \"redis://h\"\nprefix = \"\"",
            r#"pins.redis.prefix = "": must not be empty"#,
        ),
        (
            "url = \"redis://h\"\nsync_interval = \"0s\"",
            r#"pins.redis.sync_interval = "0s": must be greater than zero"#,
        ),
        ("urls = \"redis://h\"", "unknown field `urls`"),
        (
            "url = \"rediss://h/#insecure\"",
            r#"pins.redis.url = "rediss://h/#insecure": takes no #fragment (certificate checks stay on"#,
        ),
        (
            "url = \"redis://h\"\nca = \"ca.pem\"",
            r#"pins.redis.ca = "ca.pem": only for a rediss:// url (TLS)"#,
        ),
        (
            "url = \"rediss://h\"\nclient_cert = \"me.pem\"",
            r#"pins.redis.client_cert = "/etc/jitsi-router/me.pem": needs pins.redis.client_key"#,
        ),
        (
            "url = \"rediss://h\"\nclient_key = \"/k.pem\"",
            r#"pins.redis.client_key = "/k.pem": needs pins.redis.client_cert"#,
        ),
        (
            "url = \"redis://pins\"\nsentinels = [\"10.0.0.5\"]",
            r#"pins.redis.sentinels = "10.0.0.5": must be host:port"#,
        ),
        (
            "url = \"redis://pins\"\nsentinels = [\"10.0.0.5:26379\", \"10.0.0.6:0\"]",
            r#"pins.redis.sentinels = "10.0.0.6:0": must be host:port"#,
        ),
        (
            "url = \"unix:///run/redis.sock\"\nsentinels = [\"10.0.0.5:26379\"]",
            r#"pins.redis.url = "unix:///run/redis.sock": with pins.redis.sentinels, must be redis:// or rediss://"#,
        ),
        (
            "url = \"redis://h\"\nsentinel_password = \"s3cret\"",
            r#"pins.redis.sentinel_password = "***": only with pins.redis.sentinels"#,
        ),
        (
            "url = \"redis://pins\"\nsentinels = [\"10.0.0.5:26379\"]\ncluster = true",
            "pins.redis.cluster = true: a cluster fails over by itself: give sentinels or cluster, not both",
        ),
        (
            "url = \"redis://10.0.0.5:6379/2\"\ncluster = true",
            r#"pins.redis.url = "redis://10.0.0.5:6379/2": a Redis Cluster has database 0 only"#,
        ),
        (
            "url = \"unix:///run/redis.sock\"\ncluster = true",
            r#"pins.redis.url = "unix:///run/redis.sock": with pins.redis.cluster, must be redis:// or rediss://"#,
        ),
        (
            "url = \"redis://10.0.0.5\"\ncluster = \"yes\"",
            "pins.redis.cluster",
        ),
    ] {
        let e = error(&MINIMAL.replace("[tls]", &format!("[pins.redis]\n{section}\n[tls]")));
        assert!(e.contains(message), "{e}");
    }
}

#[test]
fn errors_name_file_key_and_value() {
    let e = error(&MINIMAL.replace("[tls]", "[routing]\nmode = \"fast\"\n[tls]"));
    assert!(
        e.starts_with(r#"/etc/jitsi-router/router.toml:5: routing.mode = "fast": "#)
            && e.contains("expected `proxy` or `redirect`"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(
        "[tls]",
        "[routing]\npin_idle_timeout = \"10 parsecs\"\n[tls]",
    ));
    assert!(
        e.contains("routing.pin_idle_timeout = \"10 parsecs\": ") && e.contains("duration"),
        "{e}"
    );
    let e = error(&MINIMAL.replace("127.0.0.1:8443", "localhost"));
    assert!(e.contains("server.listen = \"localhost\""), "{e}");
    let e = error(&MINIMAL.replace("http://10.0.0.11:80", "ftp://x"));
    assert!(e.contains("nodes[0].upstream = \"ftp://x\""), "{e}");
    let e = error(&MINIMAL.replace("name = \"jitsi-1\"", "name = \"jitsi-1\"\nweight = -2.0"));
    assert!(e.contains("nodes[0].weight = -2.0: must be above 0"), "{e}");
    let e = error(&MINIMAL.replace("name = \"jitsi-1\"", "name = \"jitsi-1\"\nmax_rooms = 0"));
    assert!(
        e.contains("nodes[0].max_rooms = 0: must be at least 1"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(
        "name = \"jitsi-1\"",
        "name = \"jitsi-1\"\nmax_participants = -1",
    ));
    assert!(e.contains("max_participants"), "{e}");
    let e = error(&MINIMAL.replace("[tls]", "[limits]\nmax_pins = 0\n[tls]"));
    assert!(e.contains("limits.max_pins = 0: must be at least 1"), "{e}");
    let e = error(&MINIMAL.replace("[tls]", "[limits]\ntls_sessions = 20000000\n[tls]"));
    assert!(
        e.contains("limits.tls_sessions = 20000000: must be between 0 and 10000000"),
        "{e}"
    );
}

#[test]
fn the_edge_keys_are_checked() {
    let server = |lines: &str| MINIMAL.replace("[server]\n", &format!("[server]\n{lines}\n"));
    let e = error(&server("proxy_protocol = true"));
    assert!(e.contains("server.trusted_proxies = []"), "{e}");
    assert!(e.contains("needs the balancers' addresses"), "{e}");
    let e = error(&server("trusted_proxies = [\"10.0.0/8\"]"));
    assert!(e.contains("trusted_proxies"), "{e}");
    assert!(
        e.contains("\"10.0.0/8\" is not an IP address or a CIDR range"),
        "{e}"
    );
    let e = error(&server("hsts = \"forever\""));
    assert!(e.contains("server.hsts = \"forever\""), "{e}");
    let c = parse(&server(
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nhsts = \"max-age=63072000; includeSubDomains\"",
    ))
    .unwrap();
    assert!(c
        .server
        .trusted_proxies
        .contains("10.20.30.40".parse().unwrap()));
    assert!(c
        .server
        .trusted_proxies
        .contains("2001:db8::1".parse().unwrap()));
    assert!(!c
        .server
        .trusted_proxies
        .contains("2001:db8::2".parse().unwrap()));
    assert_eq!(
        parse(MINIMAL).unwrap().server.hsts,
        None,
        "no HSTS unless asked"
    );
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let e = error(&MINIMAL.replace("[tls]", "[routing]\nmoed = \"proxy\"\n[tls]"));
    assert!(e.starts_with("/etc/jitsi-router/router.toml:"), "{e}");
    assert!(e.contains("unknown field `moed`"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn a_missing_section_names_it_without_a_line() {
    let e = error(&MINIMAL.replace("[server]\nlisten = \"127.0.0.1:8443\"\n", ""));
    assert_eq!(
        e,
        "/etc/jitsi-router/router.toml: (top level): missing field `server`"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let e = error(&MINIMAL.replace("name = \"jitsi-1\"", "name = 5"));
    assert!(e.contains("nodes[0].name"), "{e}");
}

#[test]
fn duplicate_names_and_server_ids_are_rejected() {
    let twice =
        format!("{MINIMAL}\n[[nodes]]\nname = \"jitsi-1\"\nupstream = \"http://10.0.0.12\"\n");
    assert!(error(&twice).contains("nodes[1].name = \"jitsi-1\": another node"));
    let ids = format!("{MINIMAL}\n[[nodes]]\nname = \"jitsi-2\"\nupstream = \"http://10.0.0.12\"\njvb_server_ids = [\"jitsi-1\"]\n");
    assert!(error(&ids).contains("already served by node \"jitsi-1\""));
}

#[test]
fn redirect_mode_needs_public_urls() {
    let e = error(&MINIMAL.replace("[tls]", "[routing]\nmode = \"redirect\"\n[tls]"));
    assert!(e.contains("nodes[0].public_url"), "{e}");
}

#[test]
fn prometheus_defaults() {
    let c = parse(&format!(
        "{MINIMAL}\n[prometheus]\nurl = \"http://127.0.0.1:9090/\"\n"
    ))
    .unwrap();
    let p = c.prometheus.unwrap();
    assert_eq!(p.url, "http://127.0.0.1:9090");
    assert_eq!(p.query, DEFAULT_QUERY);
    assert_eq!(p.interval, Duration::from_secs(30));
    assert_eq!(p.max_staleness(), Duration::from_secs(90));
    assert_eq!(p.timeout(), Duration::from_secs(5));
}

/// Keys of every section, and a value an attacker or a typo might give each.
const KEYS: &[(&str, &str)] = &[
    ("server", "listen"),
    ("server", "http_listen"),
    ("server", "public_https_port"),
    ("server", "shutdown_grace"),
    ("server", "admin_listen"),
    ("routing", "mode"),
    ("routing", "pin_idle_timeout"),
    ("routing", "affinity_cookie"),
    ("upstream", "connect_timeout"),
    ("upstream", "response_timeout"),
    ("upstream", "pool_max_idle_per_node"),
    ("upstream", "ca"),
    ("limits", "max_request_head"),
    ("limits", "request_head_timeout"),
    ("limits", "max_connections"),
    ("limits", "max_connections_per_client"),
    ("limits", "new_rooms_per_second"),
    ("limits", "new_room_burst"),
    ("limits", "h2_max_concurrent_streams"),
    ("placement", "max_cpu"),
    ("placement", "balance_factor"),
    ("health", "fall"),
    ("health", "interval"),
    ("admin", "token"),
    ("admin", "allowed_hosts"),
    ("prometheus", "url"),
    ("prometheus", "interval"),
    ("pins", "snapshot_path"),
];

fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_owned()),
        Just("-inf".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("[\"\"]".to_owned()),
        Just("{}".to_owned()),
        "\\PC{0,40}".prop_map(|text| toml::Value::String(text).to_string()),
        "[0-9]{1,30}(ns|ms|s|m|h|d|y)?".prop_map(|text| toml::Value::String(text).to_string()),
    ]
}

proptest::proptest! {
    /// Whatever the file holds, loading it ends in a config or an error naming the file;
    /// never a panic.
    #[test]
    fn any_text_loads_or_names_the_file(text in "\\PC{0,300}") {
        if let Err(e) = parse(&text) {
            proptest::prop_assert!(e.to_string().starts_with("/etc/jitsi-router/router.toml"), "{e}");
        }
    }

    /// A hostile value for a known key is taken or rejected with the file and the key.
    #[test]
    fn hostile_values_name_their_key(at in 0..KEYS.len(), value in hostile_value()) {
        let (section, key) = KEYS[at];
        let base = MINIMAL.replace(&format!("[{section}]\n"), "");
        let existing = MINIMAL
            .split("\n[")
            .find(|part| part.starts_with(&format!("{section}]")))
            .map(|part| part.trim_start_matches(&format!("{section}]")).to_owned())
            .unwrap_or_default();
        let base = base.replace(existing.trim(), "");
        let own = existing
            .lines()
            .filter(|line| !line.starts_with(&format!("{key} ")))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("{base}\n[{section}]\n{own}\n{key} = {value}\n");
        match parse(&text) {
            Ok(_) => {}
            Err(e) => {
                let message = e.to_string();
                proptest::prop_assert!(message.starts_with("/etc/jitsi-router/router.toml"), "{message}");
                proptest::prop_assert!(
                    message.contains(key) || message.contains(section),
                    "{text}\n{message}"
                );
            }
        }
    }
}

#[test]
fn acme_replaces_the_certificate_files_and_its_keys_are_checked() {
    let acme = |lines: &str| {
        MINIMAL
            .replace(
                "cert = \"../certs/fullchain.pem\"\nkey = \"/etc/key.pem\"\n",
                "",
            )
            .replace("[[nodes]]", &format!("[tls.acme]\n{lines}\n[[nodes]]"))
    };
    let good = "domains = [\"Meet.Example.com\"]\ndirectory = \"https://acme.example.net/dir\"\nstate_dir = \"acme\"";
    let c = parse(&acme(good)).unwrap();
    let a = c.tls.acme.unwrap();
    assert_eq!(a.domains, ["meet.example.com"]);
    assert_eq!(a.state_dir, Path::new("/etc/jitsi-router/acme"));
    assert_eq!(a.challenge, jitsi_router::config::Challenge::TlsAlpn01);

    let both = MINIMAL.replace("[[nodes]]", &format!("[tls.acme]\n{good}\n[[nodes]]"));
    let e = error(&both);
    assert!(e.contains("tls.cert"), "{e}");
    assert!(e.contains("not both"), "{e}");
    let e = error(&acme(&format!("{good}\nchallenge = \"http-01\"")));
    assert!(e.contains("tls.acme.challenge = \"http-01\""), "{e}");
    assert!(e.contains("server.http_listen"), "{e}");
    let e = error(&acme(&good.replace("Meet.Example.com", "*.example.com")));
    assert!(e.contains("tls.acme.domains = \"*.example.com\""), "{e}");
    let e = error(&acme(&format!("{good}\ncontact = \"ops@example.com\"")));
    assert!(e.contains("tls.acme.contact"), "{e}");
    let e = error(&acme(&good.replace("https://acme.example.net/dir", "acme")));
    assert!(e.contains("tls.acme.directory = \"acme\""), "{e}");
    let e = error(&acme("domains = [\"meet.example.com\"]"));
    assert!(e.contains("directory"), "{e}");
    let none = MINIMAL.replace("cert = \"../certs/fullchain.pem\"\n", "");
    let e = error(&none);
    assert!(e.contains("tls.cert"), "{e}");
}

#[test]
fn listeners_that_would_take_one_address_twice_are_named() {
    let listen = |lines: &str| MINIMAL.replace("listen = \"127.0.0.1:8443\"", lines);
    for (lines, message) in [
        (
            "listen = [\"0.0.0.0:8443\", \"0.0.0.0:8443\"]",
            r#"server.listen = "0.0.0.0:8443": server.listen 0.0.0.0:8443 takes that address and port already"#,
        ),
        (
            "listen = [\"0.0.0.0:443\", \"10.0.0.1:443\"]",
            r#"server.listen = "10.0.0.1:443": server.listen 0.0.0.0:443 takes that address and port already"#,
        ),
        (
            "listen = \"0.0.0.0:443\"\nhttp_listen = \"127.0.0.1:443\"",
            r#"server.http_listen = "127.0.0.1:443": server.listen 0.0.0.0:443"#,
        ),
        (
            "listen = \"[::]:443\"\nadmin_listen = \"[::1]:443\"",
            r#"server.admin_listen = "[::1]:443": server.listen [::]:443"#,
        ),
    ] {
        let e = error(&listen(lines));
        assert!(e.contains(message), "{lines}: {e}");
    }
    // Apart: another port, the other address family (the IPv6 wildcard is then made
    // IPv6-only), another address, or any free port.
    for lines in [
        "listen = [\"0.0.0.0:443\", \"[::]:443\"]\nhttp_listen = \"0.0.0.0:80\"",
        "listen = [\"10.0.0.1:443\", \"10.0.0.2:443\"]",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
    ] {
        assert!(parse(&listen(lines)).is_ok(), "{lines}");
    }
}
