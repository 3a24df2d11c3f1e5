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

/// The words of the unit's `ExecStart=` after the program.
fn exec_start_args(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
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

#[test]
fn the_units_command_line_is_one_the_router_takes() {
    let args = exec_start_args(&unit());
    assert_eq!(args[0], "serve", "{args:?}");
    let config_at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    assert_eq!(args[config_at], "/etc/jitsi-router/router.toml");
    // The same words with `check` and a config of this test's: the router understands them.
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        support::config(&certs, "", &[("n1", "http://127.0.0.1:9".to_owned())]),
    )
    .unwrap();
    let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
    words[0] = "check";
    words[config_at] = config.to_str().unwrap();
    let (code, stdout, stderr) = run_router(&words);
    assert_eq!(code, Some(0), "{words:?}: {stderr}");
    assert!(stdout.contains(": OK"), "{stdout}");
}
