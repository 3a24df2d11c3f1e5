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
