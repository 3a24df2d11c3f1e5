//! The routing core in process: pins hold, rooms move only off nodes that leave or fail,
//! draining, room counts, the pin cap, and pins kept across a restart.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use jitsi_router::config::NodeSpec;
use jitsi_router::fleet::{Fleet, NodeId};
use jitsi_router::placement::pins::Pins;
use jitsi_router::placement::snapshot::{load, save};
use jitsi_router::placement::{Decision, Routed, Router, Settings};
use jitsi_router::room::{RoomKey, RoomLimits};

fn specs(names: &[&str]) -> Vec<NodeSpec> {
    (names.iter().enumerate())
        .map(|(i, n)| NodeSpec::new(n, &format!("http://10.0.0.{i}:80")).unwrap())
        .collect()
}

fn router_with(names: &[&str], max_pins: usize) -> Router {
    let fleet = Arc::new(Fleet::new(specs(names), Duration::from_secs(90)));
    let pins = Pins::new(Duration::from_secs(600), max_pins);
    Router::new(fleet, Arc::new(pins), Settings::default())
}

fn router(names: &[&str]) -> Router {
    router_with(names, 1_000_000)
}

/// Routes a room (no shared store: the future is ready at once).
fn route(router: &Router, room: &str) -> Option<Routed> {
    let key = RoomKey::parse(room, &RoomLimits::default()).unwrap();
    let routed = router.route(&key, || Ok::<(), ()>(())).now_or_never();
    routed.expect("ready").expect("admitted")
}

fn node_of(router: &Router, room: &str) -> NodeId {
    route(router, room).unwrap().node.id.clone()
}

#[test]
fn a_room_stays_on_its_node() {
    let router = router(&["a", "b", "c"]);
    let first = route(&router, "standup").unwrap();
    assert_eq!(first.decision, Decision::Placed);
    for _ in 0..100 {
        let again = route(&router, "standup").unwrap();
        assert_eq!(
            (again.node.id.clone(), again.decision),
            (first.node.id.clone(), Decision::Pinned)
        );
    }
}

#[test]
fn admission_is_asked_only_for_rooms_to_place() {
    let router = router(&["a"]);
    let key = |room| RoomKey::parse(room, &RoomLimits::default()).unwrap();
    let refused = router
        .route(&key("new"), || Err("slow down"))
        .now_or_never();
    assert_eq!(refused.unwrap().unwrap_err(), "slow down");
    assert!(router.pins().is_empty(), "a refused room is not pinned");
    route(&router, "old");
    let pinned = router
        .route(&key("old"), || Err("slow down"))
        .now_or_never();
    assert_eq!(pinned.unwrap().unwrap().unwrap().decision, Decision::Pinned);
}

#[test]
fn adding_or_reordering_nodes_moves_no_pinned_room() {
    let router = router(&["a", "b", "c"]);
    let rooms: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    let before: Vec<_> = rooms.iter().map(|r| node_of(&router, r)).collect();
    router.fleet().set_nodes(specs(&["c", "d", "b", "a"]));
    for (room, node) in rooms.iter().zip(&before) {
        let routed = route(&router, room).unwrap();
        assert_eq!((&routed.node.id, routed.decision), (node, Decision::Pinned));
    }
}

#[test]
fn a_removed_node_s_rooms_are_replaced() {
    let router = router(&["a", "b"]);
    let rooms: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    let before: Vec<_> = rooms.iter().map(|r| node_of(&router, r)).collect();
    router.fleet().set_nodes(specs(&["a"]));
    for (room, node) in rooms.iter().zip(&before) {
        let routed = route(&router, room).unwrap();
        assert_eq!(routed.node.id.as_str(), "a");
        let expected = if node.as_str() == "a" {
            Decision::Pinned
        } else {
            Decision::Replaced
        };
        assert_eq!(routed.decision, expected);
    }
}

#[test]
fn draining_keeps_rooms_and_takes_no_new_ones() {
    let router = router(&["a", "b", "c"]);
    let rooms: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
    let before: Vec<_> = rooms.iter().map(|r| node_of(&router, r)).collect();
    assert!(before.iter().any(|n| n.as_str() == "b"));
    assert_eq!(router.fleet().set_draining("b", true), Some(false));
    for (room, node) in rooms.iter().zip(&before) {
        let again = route(&router, room).unwrap();
        assert_eq!((&again.node.id, again.decision), (node, Decision::Pinned));
    }
    for i in 0..60 {
        assert_ne!(node_of(&router, &format!("new{i}")).as_str(), "b");
    }
    router.fleet().set_draining("b", false);
    let taken = (0..60).filter(|i| node_of(&router, &format!("later{i}")).as_str() == "b");
    assert!(taken.count() > 0, "undrained node takes rooms again");
    assert_eq!(router.fleet().set_draining("zzz", true), None);
}

/// A reload's `[placement]` places the next new room: a costlier `room_cost` makes a node that
/// took a room look busier at once.
#[test]
fn new_placement_settings_place_the_next_room() {
    let router = router(&["a", "b"]);
    let read = || {
        let cpu = [
            ("10.0.0.0:80".to_owned(), 0.50),
            ("10.0.0.1:80".to_owned(), 0.52),
        ];
        router
            .fleet()
            .set_cpu(cpu.into_iter().collect(), std::time::Instant::now());
    };
    let cheap = Settings {
        room_cost: Some(0.001),
        ..Settings::default()
    };
    router.set_settings(cheap);
    read();
    let first: Vec<NodeId> = ["r1", "r2"].iter().map(|r| node_of(&router, r)).collect();
    assert_eq!(first, [NodeId::new("a"), NodeId::new("a")]);

    router.set_settings(Settings {
        room_cost: Some(0.05),
        ..cheap
    });
    assert_eq!(router.settings().room_cost, Some(0.05));
    read();
    let next: Vec<NodeId> = ["r3", "r4"].iter().map(|r| node_of(&router, r)).collect();
    assert_eq!(next, [NodeId::new("a"), NodeId::new("b")]);
}

#[test]
fn room_counts_follow_pins() {
    let router = router(&["a", "b"]);
    for i in 0..40 {
        route(&router, &format!("r{i}"));
    }
    let rooms = |name: &str| router.fleet().load().live(name).unwrap().rooms();
    assert_eq!(rooms("a") + rooms("b"), 40);
    router.fleet().set_nodes(specs(&["a"]));
    for i in 0..40 {
        route(&router, &format!("r{i}"));
    }
    assert_eq!(rooms("a"), 40);
    assert_eq!(rooms("b"), 0, "moved rooms are counted out of the old node");
    router.unpin("r0");
    assert_eq!(rooms("a"), 39);
}

#[test]
fn a_full_pin_table_routes_new_rooms_unpinned_and_keeps_its_rooms() {
    let router = router_with(&["a", "b", "c"], 10);
    let pinned: Vec<_> = (0..10)
        .map(|i| node_of(&router, &format!("r{i}")))
        .collect();
    for i in 0..50 {
        let room = format!("late{i}");
        let first = route(&router, &room).unwrap();
        assert_eq!(first.decision, Decision::Unpinned);
        let again = route(&router, &room).unwrap();
        assert_eq!(again.node.id, first.node.id, "one room, one node");
    }
    assert_eq!(router.pins().len(), 10);
    assert_eq!(router.routed_unpinned(), 100);
    for (i, node) in pinned.iter().enumerate() {
        let routed = route(&router, &format!("r{i}")).unwrap();
        assert_eq!((&routed.node.id, routed.decision), (node, Decision::Pinned));
    }
    // A pinned room whose node left still moves: that takes no new pin.
    router.fleet().set_nodes(specs(&["a"]));
    for i in 0..10 {
        assert_eq!(node_of(&router, &format!("r{i}")).as_str(), "a");
    }
}

#[test]
fn empty_fleet_routes_nothing() {
    let router = router(&[]);
    assert!(route(&router, "x").is_none());
    assert!(router.route_unrouted(None, 7).is_none());
}

#[test]
fn unrouted_prefers_the_cookie_node() {
    let router = router(&["a", "b", "c"]);
    let node = router.route_unrouted(Some("b"), 1).unwrap();
    assert_eq!(node.id.as_str(), "b");
    assert!(router.route_unrouted(Some("gone"), 1).is_some());
}

fn snapshot_router(names: &[&str]) -> Router {
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
    let old = snapshot_router(&["a", "b", "c"]);
    let keys: Vec<_> = (0..50).map(|i| format!("r{i}")).collect();
    let placed: Vec<_> = (keys.iter())
        .map(|k| route(&old, k).unwrap().node.id.clone())
        .collect();
    assert_eq!(save(&old, &path).unwrap(), 50);

    let new = snapshot_router(&["a", "b"]);
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
    let new = snapshot_router(&["a"]);
    assert_eq!(load(&new, &path).unwrap(), 1);
    let idle = new.pins().info("quiet").unwrap().idle;
    assert!(idle >= Duration::from_secs(500), "{idle:?}");
    assert!(new.pins().info("gone").is_none());
}

#[test]
fn missing_is_empty_and_garbage_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.json");
    assert_eq!(load(&snapshot_router(&["a"]), &path).unwrap(), 0);
    std::fs::write(&path, "not json").unwrap();
    let e = load(&snapshot_router(&["a"]), &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pins.json") && e.contains("not a pin snapshot"),
        "{e}"
    );
}
