//! WebSocket tunnels: after both sides agreed to upgrade, bytes are copied both ways untouched
//! until either side closes; a close on one side is passed on to the other.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::fleet::NodeId;

/// Per-direction copy buffer. Jitsi signalling frames are small; keep idle tunnels cheap.
const BUFFER: usize = 4 * 1024;

/// Joins the client's and the node's upgraded connections in a background task.
pub fn splice(client: OnUpgrade, node: OnUpgrade, id: NodeId) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, node) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(node = %id, error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER)
            .await
        {
            Ok((up, down)) => {
                tracing::debug!(node = %id, bytes_up = up, bytes_down = down, "websocket closed")
            }
            Err(e) => tracing::debug!(node = %id, error = %e, "websocket ended"),
        }
    });
}
