//! End to end with real Jitsi-style signalling: prosody nodes behind the router, XMPP clients
//! over WebSocket and BOSH joining rooms through it. The one promise: everyone in a room meets.

mod support;

use std::time::Duration;

use jitsi_router::demo::prosody::ProsodyNode;
use support::xmpp::{Participant, Transport};
use support::*;

const MEET: Duration = Duration::from_secs(20);

async fn prosody_nodes(n: usize) -> Vec<ProsodyNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("jitsi-{}", (b'a' + i as u8) as char);
        nodes.push(
            ProsodyNode::start(&name, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    nodes
}

fn entries(nodes: &[ProsodyNode]) -> Vec<(&str, String)> {
    nodes.iter().map(|n| (n.name(), n.url())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_bosh_clients_of_one_room_meet_and_other_rooms_stay_apart() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &entries(&nodes)));

    let mut alice = Participant::join(&router, &certs, Transport::WebSocket, "Standup", "alice")
        .await
        .unwrap();
    let mut bob = Participant::join(&router, &certs, Transport::WebSocket, "standup", "bob")
        .await
        .unwrap();
    let mut carol = Participant::join(&router, &certs, Transport::Bosh, "standup", "carol")
        .await
        .unwrap();
    let mut dave = Participant::join(&router, &certs, Transport::WebSocket, "retro", "dave")
        .await
        .unwrap();
    assert_eq!(alice.node, bob.node);
    assert_eq!(alice.node, carol.node);
    for p in [&mut alice, &mut bob, &mut carol] {
        p.sees(&["alice", "bob", "carol"], MEET).await.unwrap();
    }
    dave.settle(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        dave.occupants().iter().collect::<Vec<_>>(),
        ["dave"],
        "another room sees nobody else"
    );
    assert!(!alice.occupants().contains("dave"));
}
