//! The systemd unit in `contrib/` is one systemd accepts (`systemd-analyze verify`; Debian's
//! `systemd`, which `scripts/test` installs when missing), and its command line is one the
//! router takes.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn unit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("contrib/jitsi-router.service")).unwrap()
}

/// The words after the program of the unit's first line setting `key` (`ExecStart`, ...).
fn exec_args(unit: &str, key: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= line"));
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/jitsi-router"));
    words.map(str::to_owned).collect()
}

#[test]
fn systemd_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    // `verify` checks that the program exists: point it at this build.
    let unit = unit().replace(
        "/usr/local/bin/jitsi-router",
        env!("CARGO_BIN_EXE_jitsi-router"),
    );
    let path = dir.path().join("jitsi-router.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze (scripts/test installs it): {e}"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // Warnings about this unit (unknown keys, bad values) fail too; lines about units of the
    // host are not the unit's business.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("jitsi-router.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns: {ours:?}");
}

/// Runs the router with `args`, its `--config` pointed at `config`.
fn run_with_config(args: &[String], config: &Path) -> (Option<i32>, String, String) {
    let config_at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    assert_eq!(args[config_at], "/etc/jitsi-router/router.toml");
    let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
    words[config_at] = config.to_str().unwrap();
    run_router(&words)
}

#[test]
fn the_units_command_lines_are_ones_the_router_takes() {
    let unit = unit();
    let (start, reload) = (
        exec_args(&unit, "ExecStart"),
        exec_args(&unit, "ExecReload"),
    );
    assert_eq!(start[0], "serve", "{start:?}");
    assert_eq!(reload[0], "check", "{reload:?}");
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    let good = support::config(&certs, "", &[("n1", "http://127.0.0.1:9".to_owned())]);
    // The start line's words with `check`: the router understands them.
    let mut checked = start.clone();
    checked[0] = "check".to_owned();
    std::fs::write(&config, &good).unwrap();
    let (code, stdout, stderr) = run_with_config(&checked, &config);
    assert_eq!(code, Some(0), "{checked:?}: {stderr}");
    assert!(stdout.contains(": OK"), "{stdout}");
    // The reload's check passes a good config and fails a bad one, naming the key.
    let (code, _, stderr) = run_with_config(&reload, &config);
    assert_eq!(code, Some(0), "{reload:?}: {stderr}");
    std::fs::write(
        &config,
        good.replace("[tls]", "[routing]\nmode = \"fast\"\n\n[tls]"),
    )
    .unwrap();
    let (code, _, stderr) = run_with_config(&reload, &config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("routing.mode"), "{stderr}");
}
