//! The nodes each client holds signalling WebSockets to (`/xmpp-websocket?room=`), while they
//! are open: a bridge channel whose server id no node declared goes to the node its client's
//! signalling reached, when that is one node (see `Proxy::undeclared_bridge`). A client is a
//! [`ClientKey`]: an address, or an IPv6 /64.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::fleet::NodeId;
use crate::peer::ClientKey;

/// Open signalling WebSockets by client and node.
#[derive(Debug, Default)]
pub struct Signalling {
    open: Mutex<HashMap<ClientKey, Vec<(NodeId, u32)>>>,
}

/// Counts one signalling WebSocket of a client to a node until dropped.
#[derive(Debug)]
pub struct Open {
    signalling: Arc<Signalling>,
    client: ClientKey,
    node: NodeId,
}

impl Signalling {
    /// Counts a signalling WebSocket from `client` to `node` while the returned guard lives.
    pub fn open(self: &Arc<Self>, client: ClientKey, node: NodeId) -> Open {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = open.entry(client).or_default();
        match nodes.iter_mut().find(|(n, _)| *n == node) {
            Some((_, count)) => *count += 1,
            None => nodes.push((node.clone(), 1)),
        }
        Open {
            signalling: self.clone(),
            client,
            node,
        }
    }

    /// The node `client` holds signalling to, if it holds some to one node only.
    pub fn node_of(&self, client: ClientKey) -> Option<NodeId> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(&client)?.as_slice() {
            [(node, _)] => Some(node.clone()),
            _ => None,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = (self.signalling.open.lock()).unwrap_or_else(|e| e.into_inner());
        let Some(nodes) = open.get_mut(&self.client) else {
            return;
        };
        if let Some(at) = nodes.iter().position(|(n, _)| *n == self.node) {
            nodes[at].1 -= 1;
            if nodes[at].1 == 0 {
                nodes.swap_remove(at);
            }
        }
        if nodes.is_empty() {
            open.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_with_signalling_to_one_node_is_placed_there_while_it_lasts() {
        let signalling = Arc::new(Signalling::default());
        let (alice, bob) = (
            ClientKey::of("192.0.2.1".parse().unwrap()),
            ClientKey::of("192.0.2.2".parse().unwrap()),
        );
        let (a, b) = (NodeId::new("jitsi-a"), NodeId::new("jitsi-b"));
        assert_eq!(signalling.node_of(alice), None);
        let first = signalling.open(alice, a.clone());
        let second = signalling.open(alice, a.clone());
        let _bobs = signalling.open(bob, b.clone());
        assert_eq!(signalling.node_of(alice), Some(a.clone()));
        assert_eq!(signalling.node_of(bob), Some(b.clone()));
        // Signalling to two nodes (two rooms, or people behind one address): no answer.
        let elsewhere = signalling.open(alice, b.clone());
        assert_eq!(signalling.node_of(alice), None);
        drop(elsewhere);
        drop(first);
        assert_eq!(signalling.node_of(alice), Some(a));
        drop(second);
        assert_eq!(signalling.node_of(alice), None);
        assert!(!signalling.open.lock().unwrap().contains_key(&alice));
    }
}
