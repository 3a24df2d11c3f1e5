//! The room census the demo's and the tests' prosody nodes serve (the project's own prosody
//! module, in the shape of Jitsi's `mod_muc_census`): real XMPP clients join rooms through the
//! router, and the census lists each room with its participants.

mod support;

use std::time::Duration;

use jitsi_router::demo::prosody::ProsodyNode;
use serde_json::Value;
use support::xmpp::{join, Transport};
use support::*;

async fn census(node: &ProsodyNode) -> Vec<(String, u64)> {
    let url = format!("http://{}/room-census", node.signalling());
    let answer: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    // No room is `{}`, as Jitsi's module answers in some releases.
    let none = answer["room_census"]
        .as_object()
        .is_some_and(|o| o.is_empty());
    let mut rooms: Vec<(String, u64)> = (answer["room_census"].as_array())
        .map_or_else(
            || match none {
                true => Vec::new(),
                false => panic!("no room_census list: {answer}"),
            },
            Vec::clone,
        )
        .iter()
        .map(|r| {
            assert_eq!(r["leaked"], false, "{r}");
            assert!(r["created_time"].as_u64().unwrap() > 1_600_000_000, "{r}");
            (
                r["room_name"].as_str().unwrap().to_owned(),
                r["participants"].as_u64().unwrap(),
            )
        })
        .collect();
    rooms.sort();
    rooms
}

#[tokio::test(flavor = "multi_thread")]
async fn the_census_lists_each_live_room_with_its_participants() {
    let certs = Certs::new();
    let node = ProsodyNode::start("jitsi-a", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(census(&node).await, [], "no room yet: an empty list");
    let router = Router::start(&certs, &config(&certs, "", &[("jitsi-a", node.url())]));
    let mut alice = join(&router, &certs, Transport::WebSocket, "Standup", "alice")
        .await
        .unwrap();
    let _bob = join(&router, &certs, Transport::Bosh, "standup", "bob")
        .await
        .unwrap();
    let _carol = join(&router, &certs, Transport::WebSocket, "retro", "carol")
        .await
        .unwrap();
    alice
        .sees(&["alice", "bob"], Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        census(&node).await,
        [
            ("retro@muc.meet.jitsi".to_owned(), 1),
            ("standup@muc.meet.jitsi".to_owned(), 2)
        ]
    );
}

/// A redirect-mode router over `nodes`, each with its census, polled every 200 ms.
fn redirecting(certs: &Certs, nodes: &[ProsodyNode], sections: &str) -> Router {
    let sections =
        format!("[routing]\nmode = \"redirect\"\n{sections}\n[census]\ninterval = \"200ms\"\n");
    let mut text = config(certs, &sections, &[]);
    for node in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = {:?}\nupstream = {:?}\npublic_url = {:?}\ncensus_url = \"http://{}/room-census\"\n",
            node.name(),
            node.url(),
            node.url(),
            node.signalling()
        ));
    }
    Router::start(certs, &text)
}

/// `GET` of an admin API path, as JSON.
async fn admin_json(router: &Router, path: &str) -> Value {
    let answer = reqwest::get(router.admin_url(path)).await.unwrap();
    answer.json().await.unwrap()
}

/// The node a room's pin points at on `router` (admin API), if any.
async fn pinned_node(router: &Router, room: &str) -> Option<String> {
    let answer = reqwest::get(router.admin_url(&format!("/api/rooms/{room}")))
        .await
        .unwrap();
    if answer.status() == 404 {
        return None;
    }
    let pin: Value = answer.json().await.unwrap();
    Some(
        pin["node"]
            .as_str()
            .unwrap_or_else(|| panic!("{pin}"))
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn in_redirect_mode_a_meeting_longer_than_the_pin_timeout_keeps_its_node() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = redirecting(&certs, &nodes, "pin_idle_timeout = \"1s\"\n");
    let mut alice = join(
        &router,
        &certs,
        Transport::WebSocket,
        "LongMeeting",
        "alice",
    )
    .await
    .unwrap();
    let meeting = alice.node.clone();
    // The meeting's node drains: a fresh placement of the room would go to the other node.
    router.drain(&meeting).await;
    // A room nobody joined, pinned at the same time, as the control: its pin expires.
    let empty = router
        .client()
        .get(router.url("/NobodyCame"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 307);
    assert!(pinned_node(&router, "nobodycame").await.is_some());

    // Three pin timeouts without a request to the router: only the census speaks of the room.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pinned_node(&router, "nobodycame").await,
        None,
        "an idle pin expires"
    );
    assert_eq!(
        pinned_node(&router, "longmeeting").await.as_deref(),
        Some(meeting.as_str())
    );
    let mut bob = join(&router, &certs, Transport::Bosh, "longmeeting", "bob")
        .await
        .unwrap();
    assert_eq!(
        bob.node, meeting,
        "the late joiner lands on the meeting's node"
    );
    for p in [&mut alice, &mut bob] {
        p.sees(&["alice", "bob"], Duration::from_secs(20))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_without_a_pin_adopts_the_node_the_census_reports() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    // The meeting starts on a router of node jitsi-b alone.
    let first = Router::start(
        &certs,
        &config(&certs, "", &[(nodes[1].name(), nodes[1].url())]),
    );
    let mut alice = join(&first, &certs, Transport::WebSocket, "Adopted", "alice")
        .await
        .unwrap();
    assert_eq!(alice.node, "jitsi-b");
    // A new router (a restart without a snapshot, or a new replica) learns it from the census,
    // before any request: it would have placed rooms on jitsi-a too.
    let router = redirecting(&certs, &nodes, "");
    eventually(
        Duration::from_secs(10),
        "the room to be adopted",
        || async { pinned_node(&router, "adopted").await.as_deref() == Some("jitsi-b") },
    )
    .await;
    let mut bob = join(&router, &certs, Transport::Bosh, "adopted", "bob")
        .await
        .unwrap();
    assert_eq!(bob.node, "jitsi-b");
    for p in [&mut alice, &mut bob] {
        p.sees(&["alice", "bob"], Duration::from_secs(20))
            .await
            .unwrap();
    }
    let nodes_now: Value = admin_json(&router, "/api/nodes").await;
    let b = nodes_now
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "jitsi-b")
        .unwrap();
    eventually(Duration::from_secs(10), "participants to show", || async {
        let list: Value = admin_json(&router, "/api/nodes").await;
        list[1]["participants"] == 2
    })
    .await;
    assert!(
        b["census_url"].as_str().unwrap().ends_with("/room-census"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_census_that_fails_is_counted_and_stops_counting_after_three_intervals() {
    let certs = Certs::new();
    let mut nodes = prosody_nodes(1).await;
    let router = redirecting(&certs, &nodes, "");
    let mut alice = join(&router, &certs, Transport::WebSocket, "Failing", "alice")
        .await
        .unwrap();
    alice.settle(Duration::from_millis(100)).await.unwrap();
    let participants = || async {
        let list: Value = admin_json(&router, "/api/nodes").await;
        list[0]["participants"].clone()
    };
    eventually(
        Duration::from_secs(10),
        "the census to count alice",
        || async { participants().await == 1 },
    )
    .await;
    nodes[0].stop_prosody();
    // Failures are counted; the last good answer counts for three intervals (600 ms), then not.
    eventually(
        Duration::from_secs(10),
        "participants to be unknown",
        || async { participants().await == Value::Null },
    )
    .await;
    let failures = metrics(&router).await;
    let counted = failures.get("jitsi_router_census_failures_total{node=\"jitsi-a\"}");
    assert!(counted.is_some_and(|n| *n >= 3.0), "{failures:?}");
    // Logged when the node starts failing, then at most once a minute, not once a poll.
    let logs = router.logs();
    assert_eq!(logs.matches("census failed").count(), 1, "{logs}");
    nodes[0].restart_prosody().await.unwrap();
    log_shows(&router, "census answers again").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_live_on_two_nodes_is_reported_and_new_participants_join_its_larger_part() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    // One room, started on each node through a router that knows that node alone.
    let only = |i: usize| {
        Router::start(
            &certs,
            &config(&certs, "", &[(nodes[i].name(), nodes[i].url())]),
        )
    };
    let (on_a, on_b) = (only(0), only(1));
    let alice = join(&on_a, &certs, Transport::WebSocket, "Halves", "alice").await;
    let bob = join(&on_b, &certs, Transport::WebSocket, "halves", "bob").await;
    let carol = join(&on_b, &certs, Transport::Bosh, "halves", "carol").await;
    let (_alice, _bob, _carol) = (alice.unwrap(), bob.unwrap(), carol.unwrap());

    let router = redirecting(&certs, &nodes, "");
    eventually(
        Duration::from_secs(10),
        "the split to be listed",
        || async {
            let splits: Value = admin_json(&router, "/api/splits").await;
            splits
                == serde_json::json!([{"room": "halves", "nodes": [
                    {"node": "jitsi-b", "participants": 2},
                    {"node": "jitsi-a", "participants": 1}
                ]}])
        },
    )
    .await;
    let gauges = metrics(&router).await;
    assert_eq!(
        gauges.get("jitsi_router_split_rooms"),
        Some(&1.0),
        "{gauges:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the pin to follow the larger part",
        || async { pinned_node(&router, "halves").await.as_deref() == Some("jitsi-b") },
    )
    .await;
    let mut dave = join(&router, &certs, Transport::WebSocket, "halves", "dave")
        .await
        .unwrap();
    assert_eq!(
        dave.node, "jitsi-b",
        "a new participant joins the larger part"
    );
    dave.sees(&["bob", "carol", "dave"], Duration::from_secs(20))
        .await
        .unwrap();
    let logs = router.logs();
    assert_eq!(
        logs.matches("room split over nodes").count(),
        1,
        "logged once:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_is_reported_empty_once_its_last_meeting_ends_and_its_pins_expire() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = redirecting(&certs, &nodes, "pin_idle_timeout = \"1s\"\n");
    let alice = join(&router, &certs, Transport::WebSocket, "LastOne", "alice")
        .await
        .unwrap();
    let node = alice.node.clone();
    let other = if node == "jitsi-a" {
        "jitsi-b"
    } else {
        "jitsi-a"
    };
    for name in [node.as_str(), other] {
        router.drain(name).await;
    }
    let empty_since = || async {
        let list: Value = admin_json(&router, "/api/nodes").await;
        let find = |name: &str| {
            let node = list.as_array().unwrap().iter().find(|n| n["name"] == name);
            node.unwrap()["empty_since"].clone()
        };
        (find(&node), find(other))
    };
    let gauge = |name: &str| format!("jitsi_router_node_drained_empty{{node=\"{name}\"}}");
    eventually(
        Duration::from_secs(10),
        "the other drained node, which hosts nothing, to be empty",
        || async { empty_since().await.1.is_number() },
    )
    .await;
    // Three pin timeouts: the meeting's pin lives on by the census alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(empty_since().await.0, Value::Null, "a meeting is live");
    assert_eq!(metrics(&router).await.get(&gauge(&node)), Some(&0.0));

    alice.leave().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the meeting's node to be empty",
        || async { empty_since().await.0.is_number() },
    )
    .await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let since = empty_since().await.0.as_f64().unwrap();
    assert!((now.unwrap().as_secs_f64() - since).abs() < 30.0, "{since}");
    assert_eq!(metrics(&router).await.get(&gauge(&node)), Some(&1.0));
    assert_eq!(pinned_node(&router, "lastone").await, None, "pins agree");
    let logs = router.logs();
    let events = logs
        .lines()
        .filter(|l| l.contains("node drained and empty"));
    assert_eq!(events.filter(|l| l.contains(&node)).count(), 1, "{logs}");

    // Undrained, it takes rooms again and is no longer reported empty.
    router.set_drain(&node, false).await;
    assert_eq!(empty_since().await.0, Value::Null);
    assert_eq!(metrics(&router).await.get(&gauge(&node)), Some(&0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_at_its_participant_cap_takes_no_new_rooms_but_its_meetings_go_on() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = redirecting(&certs, &nodes, "");
    // Both nodes hold two participants at most, by their census.
    for name in ["jitsi-a", "jitsi-b"] {
        let node: Value = admin_json(&router, &format!("/api/nodes/{name}")).await;
        let mut node = node.as_object().unwrap().clone();
        node.insert("max_participants".into(), 2.into());
        let put = reqwest::Client::new()
            .put(router.admin_url(&format!("/api/nodes/{name}")))
            .json(&node)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    }
    let alice = join(&router, &certs, Transport::WebSocket, "Busy", "alice").await;
    let mut alice = alice.unwrap();
    let bob = join(&router, &certs, Transport::Bosh, "busy", "bob").await;
    let full = alice.node.clone();
    assert_eq!(bob.unwrap().node, full);
    eventually(Duration::from_secs(10), "the node to be full", || async {
        let node: Value = admin_json(&router, &format!("/api/nodes/{full}")).await;
        node["participants"] == 2 && node["full"] == true
    })
    .await;
    for i in 0..6 {
        let joiner = join(
            &router,
            &certs,
            Transport::WebSocket,
            &format!("new-room-{i}"),
            "dave",
        )
        .await
        .unwrap();
        assert_ne!(joiner.node, full, "a new room on a full node");
        joiner.leave().await.unwrap();
    }
    let carol = join(&router, &certs, Transport::WebSocket, "busy", "carol").await;
    assert_eq!(carol.unwrap().node, full, "a full node's meeting goes on");
    alice
        .sees(&["alice", "bob", "carol"], Duration::from_secs(20))
        .await
        .unwrap();
}
