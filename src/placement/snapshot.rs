//! Pins kept across restarts: written to `[pins] snapshot_path` at shutdown, read at start.
//!
//! Without it a restarted router places every running conference afresh, and clients that
//! reconnect may land on another node than the participants who are still there. The file is JSON,
//! written to a temporary name and renamed into place, so a crash mid-write never leaves half a
//! file. A pin keeps its idle time, so it expires on the schedule it had; pins of nodes no longer
//! in the config are dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Router;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a pin snapshot.
    #[error("{path}: not a pin snapshot: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    pins: Vec<Saved>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    room: String,
    node: String,
    idle_ms: u64,
}

/// Writes every live pin to `path`; returns how many.
pub fn save(router: &Router, path: &Path) -> Result<usize, SnapshotError> {
    let pins: Vec<Saved> = router
        .pins()
        .export()
        .into_iter()
        .map(|pin| Saved {
            room: pin.room,
            node: pin.node.to_string(),
            idle_ms: u64::try_from(pin.idle.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    let count = pins.len();
    let text =
        serde_json::to_vec(&File { version: 1, pins }).map_err(|source| SnapshotError::Format {
            path: path.to_path_buf(),
            source,
        })?;
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)?;
    Ok(count)
}

/// Restores pins from `path` (a missing file is an empty snapshot); returns how many came back.
pub fn load(router: &Router, path: &Path) -> Result<usize, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: File = serde_json::from_slice(&text).map_err(|source| SnapshotError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let state = router.fleet().snapshot();
    let mut restored = 0;
    for pin in file.pins {
        let Some(node) = state.node(&pin.node) else {
            continue;
        };
        // The node's own id: every pin of a node shares one name.
        let idle = Duration::from_millis(pin.idle_ms);
        if router.pins().restore(&pin.room, node.id.clone(), idle) {
            node.live.room_placed();
            restored += 1;
        }
    }
    // Restored rooms were running before the last reading; they are not new load.
    for node in state.nodes() {
        node.live.reading_taken();
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;
    use crate::fleet::Fleet;
    use crate::placement::pins::Pins;
    use crate::placement::tests::route;
    use crate::placement::Settings;
    use std::sync::Arc;

    fn router(names: &[&str]) -> Router {
        let specs = names
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSpec::new(n, &format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        let fleet = Arc::new(Fleet::new(specs, Duration::from_secs(90)));
        Router::new(
            fleet,
            Arc::new(Pins::new(Duration::from_secs(600), 1000)),
            Settings::default(),
        )
    }

    #[test]
    fn round_trip_counts_rooms_and_drops_unknown_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let old = router(&["a", "b", "c"]);
        let keys: Vec<_> = (0..50).map(|i| format!("r{i}")).collect();
        let placed: Vec<_> = (keys.iter())
            .map(|k| route(&old, k).unwrap().node.id.clone())
            .collect();
        assert_eq!(save(&old, &path).unwrap(), 50);

        let new = router(&["a", "b"]);
        let expected = placed.iter().filter(|n| n.as_str() != "c").count();
        assert_eq!(load(&new, &path).unwrap(), expected);
        let counted: u32 = new
            .fleet()
            .snapshot()
            .nodes()
            .iter()
            .map(|n| n.live.rooms())
            .sum();
        assert_eq!(counted as usize, expected);
        for (key, node) in keys.iter().zip(&placed) {
            if node.as_str() != "c" {
                assert_eq!(&route(&new, key).unwrap().node.id, node);
            }
        }
    }

    /// A pin saved idle keeps its idle time across the restart, so it expires when it would
    /// have; one saved idle past the timeout is not restored.
    #[test]
    fn restored_pins_keep_their_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        let pins = r#"{"version": 1, "pins": [
            {"room": "quiet", "node": "a", "idle_ms": 500000},
            {"room": "gone", "node": "a", "idle_ms": 700000}]}"#;
        std::fs::write(&path, pins).unwrap();
        let new = router(&["a"]);
        assert_eq!(load(&new, &path).unwrap(), 1);
        let idle = new.pins().info("quiet").unwrap().idle;
        assert!(idle >= Duration::from_secs(500), "{idle:?}");
        assert!(new.pins().info("gone").is_none());
    }

    #[test]
    fn missing_is_empty_and_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        assert_eq!(load(&router(&["a"]), &path).unwrap(), 0);
        std::fs::write(&path, "not json").unwrap();
        let e = load(&router(&["a"]), &path).unwrap_err().to_string();
        assert!(
            e.contains("pins.json") && e.contains("not a pin snapshot"),
            "{e}"
        );
    }
}
