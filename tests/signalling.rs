//! End to end with real Jitsi-style signalling: prosody nodes behind the router, XMPP clients
//! over WebSocket and BOSH joining rooms through it. The one promise: everyone in a room meets.

mod support;

use std::time::{Duration, Instant};

use jitsi_router::demo::prosody::ProsodyNode;
use support::xmpp::{join, Participant, Transport};
use support::*;

const MEET: Duration = Duration::from_secs(20);

fn entries(nodes: &[ProsodyNode]) -> Vec<(&str, String)> {
    nodes.iter().map(|n| (n.name(), n.url())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_bosh_clients_of_one_room_meet_and_other_rooms_stay_apart() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &entries(&nodes)));

    let mut alice = join(&router, &certs, Transport::WebSocket, "Standup", "alice")
        .await
        .unwrap();
    let mut bob = join(&router, &certs, Transport::WebSocket, "standup", "bob")
        .await
        .unwrap();
    let mut carol = join(&router, &certs, Transport::Bosh, "standup", "carol")
        .await
        .unwrap();
    let mut dave = join(&router, &certs, Transport::WebSocket, "retro", "dave")
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

/// A deterministic spread of arrival delays within two seconds.
fn arrival(i: usize) -> Duration {
    Duration::from_millis((i as u64 * 7919) % 2000)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_rooms_of_three_joining_at_once_all_meet() {
    let certs = Certs::new();
    let nodes = prosody_nodes(3).await;
    let router = Router::start(&certs, &config(&certs, "", &entries(&nodes)));
    let (router, certs) = (&router, &certs);

    let joins = (0..60).map(|i| async move {
        let (room, seat) = (format!("busy-{}", i / 3), i % 3);
        let nick = format!("p{seat}");
        // Every room mixes transports: two on WebSocket, one on BOSH.
        let transport = if seat == 2 {
            Transport::Bosh
        } else {
            Transport::WebSocket
        };
        tokio::time::sleep(arrival(i)).await;
        join(router, certs, transport, &room, &nick).await
    });
    let mut people: Vec<Participant> = futures_util::future::join_all(joins)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let meetings = people
        .iter_mut()
        .map(|p| async move { p.sees(&["p0", "p1", "p2"], MEET).await });
    for outcome in futures_util::future::join_all(meetings).await {
        outcome.unwrap();
    }
    let mut used = std::collections::BTreeSet::new();
    for room in people.chunks(3) {
        assert!(
            room.iter().all(|p| p.node == room[0].node),
            "{} is split: {:?}",
            room[0].room,
            room.iter().map(|p| &p.node).collect::<Vec<_>>()
        );
        assert_eq!(room[0].occupants().len(), 3, "{:?}", room[0].occupants());
        used.insert(room[0].node.clone());
    }
    assert!(used.len() > 1, "every room on {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn participants_of_a_stopped_node_meet_again_on_another() {
    let certs = Certs::new();
    let mut nodes = prosody_nodes(3).await;
    let health = "[health]\ninterval = \"300ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 2\n";
    let router = Router::start(&certs, &config(&certs, health, &entries(&nodes)));
    let mut alice = join(&router, &certs, Transport::WebSocket, "failover", "alice")
        .await
        .unwrap();
    let bob = join(&router, &certs, Transport::Bosh, "failover", "bob")
        .await
        .unwrap();
    alice.sees(&["bob"], MEET).await.unwrap();
    assert_eq!(alice.node, bob.node);
    let lost = alice.node.clone();
    let index = nodes.iter().position(|n| n.name() == lost).unwrap();
    nodes[index].stop();

    // Both notice: the WebSocket closes, BOSH requests fail.
    let mut broken = false;
    for _ in 0..50 {
        if alice.settle(Duration::from_millis(100)).await.is_err() {
            broken = true;
            break;
        }
    }
    assert!(broken, "alice's connection should have dropped");

    // Jitsi clients reconnect to the same room URL until it works.
    async fn rejoin(
        router: &Router,
        certs: &Certs,
        transport: Transport,
        nick: &str,
    ) -> Participant {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match join(router, certs, transport, "failover", nick).await {
                Ok(p) => return p,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{nick} never got back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
    let mut alice = rejoin(&router, &certs, Transport::WebSocket, "alice").await;
    let mut bob = {
        drop(bob);
        rejoin(&router, &certs, Transport::Bosh, "bob").await
    };
    assert_ne!(alice.node, lost);
    assert_eq!(alice.node, bob.node, "both land on the same new node");
    alice.sees(&["alice", "bob"], MEET).await.unwrap();
    bob.sees(&["alice", "bob"], MEET).await.unwrap();
    assert!(
        router.logs().contains("room re-placed"),
        "{}",
        router.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_node_takes_no_new_room_but_its_rooms_still_meet() {
    let certs = Certs::new();
    let nodes = prosody_nodes(3).await;
    let router = Router::start(&certs, &config(&certs, "", &entries(&nodes)));
    let mut alice = join(&router, &certs, Transport::WebSocket, "upgrade", "alice")
        .await
        .unwrap();
    let draining = alice.node.clone();
    let answer = reqwest::Client::new()
        .post(router.admin_url(&format!("/api/nodes/{draining}/drain")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    for i in 0..9 {
        let transport = if i % 2 == 0 {
            Transport::WebSocket
        } else {
            Transport::Bosh
        };
        let newcomer = join(&router, &certs, transport, &format!("fresh-{i}"), "x")
            .await
            .unwrap();
        assert_ne!(
            newcomer.node, draining,
            "fresh-{i} went to the draining node"
        );
    }
    let mut bob = join(&router, &certs, Transport::Bosh, "upgrade", "bob")
        .await
        .unwrap();
    assert_eq!(
        bob.node, draining,
        "an existing room stays on its draining node"
    );
    bob.sees(&["alice", "bob"], MEET).await.unwrap();
    alice.sees(&["alice", "bob"], MEET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redirected_clients_meet_the_proxied_ones() {
    let certs = Certs::new();
    let nodes = prosody_nodes(3).await;
    let proxied = Router::start(&certs, &config(&certs, "", &entries(&nodes)));
    let mut redirect_config = config(&certs, "[routing]\nmode = \"redirect\"\n", &[]);
    for node in &nodes {
        redirect_config.push_str(&format!(
            "\n[[nodes]]\nname = {:?}\nupstream = {:?}\npublic_url = {:?}\n",
            node.name(),
            node.url(),
            node.url()
        ));
    }
    let redirecting = Router::start(&certs, &redirect_config);

    let mut alice = join(&proxied, &certs, Transport::WebSocket, "Hybrid", "alice")
        .await
        .unwrap();
    // Two routers with the same fleet place a new room alike (replicas agree without talking).
    let mut bob = join(&redirecting, &certs, Transport::WebSocket, "hybrid", "bob")
        .await
        .unwrap();
    let mut carol = join(&redirecting, &certs, Transport::Bosh, "hybrid", "carol")
        .await
        .unwrap();
    assert_eq!(bob.node, alice.node);
    assert_eq!(carol.node, alice.node);
    for p in [&mut alice, &mut bob, &mut carol] {
        p.sees(&["alice", "bob", "carol"], MEET).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_browser_tabs_in_one_room_see_each_other() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    let router = Router::start(&certs, &config(&certs, "", &entries(&nodes)));
    // The test CA is not in Chromium's store; the router's certificate is what it is testing.
    let browser = support::browser::Browser::launch(&["--ignore-certificate-errors"]).await;
    let room_url = router.url("/BrowserRoom");
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut tab = browser.tab().await;
        tab.goto(&room_url).await;
        tab.wait_for("window.xmppRoom?.joined === true", MEET).await;
        tabs.push(tab);
    }
    let nicks: Vec<String> = {
        let mut nicks = Vec::new();
        for tab in &mut tabs {
            nicks.push(
                tab.eval("window.xmppRoom.nick")
                    .await
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        nicks
    };
    for tab in &mut tabs {
        let both = format!(
            "['{}', '{}'].every(n => window.xmppRoom.occupants.includes(n))",
            nicks[0], nicks[1]
        );
        tab.wait_for(&both, MEET).await;
        let listed = tab
            .eval("[...document.querySelectorAll('#occupants li')].length")
            .await;
        assert_eq!(listed, 2);
    }
    // The page, its script and its WebSocket all came from one node through the router.
    let node = page_node(&mut tabs[0]).await;
    let pinned: serde_json::Value = router.admin_json("/api/rooms/browserroom").await;
    assert_eq!(pinned["node"], node.as_str());
    // A participant from a Rust client joins them there.
    let mut erin = join(&router, &certs, Transport::Bosh, "browserroom", "erin")
        .await
        .unwrap();
    erin.sees(&[&nicks[0], &nicks[1]], MEET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_with_prosody_lets_a_browser_join_a_room() {
    let mut demo = Demo::start(&["--prosody"]);
    assert!(
        demo.banner.contains("real prosody signalling"),
        "{}",
        demo.banner
    );
    assert!(demo.banner.contains("muc.meet.jitsi"), "{}", demo.banner);

    let browser = support::browser::Browser::launch(&["--ignore-certificate-errors"]).await;
    let mut tab = browser.tab().await;
    tab.goto(&format!("https://localhost:{}/DemoCall", demo.port))
        .await;
    tab.wait_for("window.xmppRoom?.joined === true", MEET).await;
    // A tenant's room signals under its tenant, as jitsi-meet does: one room, one pin.
    tab.goto(&format!("https://localhost:{}/Acme/Standup", demo.port))
        .await;
    tab.wait_for("window.xmppRoom?.joined === true", MEET).await;
    let pinned = demo_pins(&demo);
    let rooms: Vec<&str> = (pinned.iter())
        .map(|p| p.split(" → ").next().unwrap())
        .collect();
    assert_eq!(rooms, [r#""democall""#, r#""acme/standup""#]);

    // SIGTERM: the demo stops its prosody processes on the way out.
    drop(tab);
    drop(browser);
    assert!(demo.stop(Duration::from_secs(40)), "the demo did not stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_page_signals_as_its_room() {
    let mut demo = Demo::start(&["--no-prometheus"]);
    let browser = support::browser::Browser::launch(&["--ignore-certificate-errors"]).await;
    let mut tab = browser.tab().await;
    // A tenant and a name that is not ASCII: the page's config.js, BOSH and WebSocket requests
    // name the room as jitsi-meet's client does, so they are the page's room.
    tab.goto(&format!("https://localhost:{}/Acme/Caf%C3%A9", demo.port))
        .await;
    let (node, log) = demo_page_log(&mut tab).await;
    assert_eq!(log.matches(&format!("→ {node}")).count(), 2, "{log}");
    assert!(log.contains("echoed"), "{log}");
    assert_eq!(demo_pins(&demo), [format!(r#""acme/café" → {node}"#)]);
    // A name that does not percent-decode is a room as it stands, for the router and the page.
    tab.goto(&format!("https://localhost:{}/Half%ZZ", demo.port))
        .await;
    let (node, log) = demo_page_log(&mut tab).await;
    assert_eq!(log.matches(&format!("→ {node}")).count(), 2, "{log}");
    let line = demo.lines.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(line.trim(), format!(r#"room "half%zz" → {node}"#));
    assert!(
        demo.lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "one pin"
    );
    drop(tab);
    drop(browser);
    assert!(demo.stop(Duration::from_secs(20)), "the demo did not stop");
}

/// The demo's console lines for the rooms pinned so far (`"room" → node`), read until it has
/// been quiet for two seconds.
fn demo_pins(demo: &Demo) -> Vec<String> {
    let mut pinned = Vec::new();
    while let Ok(line) = demo.lines.recv_timeout(Duration::from_secs(2)) {
        if let Some(room) = line.trim().strip_prefix("room ") {
            pinned.push(room.to_owned());
        }
    }
    pinned
}

/// The node a room page names last in its title (`<room> · <node>`).
async fn page_node(tab: &mut support::browser::Tab) -> String {
    let title = tab.eval("document.title").await;
    let title = title.as_str().unwrap();
    title.rsplit(' ').next().unwrap().to_owned()
}

/// The simple demo's room page once its three signalling requests are logged: its node and the
/// log.
async fn demo_page_log(tab: &mut support::browser::Tab) -> (String, String) {
    let done = "document.getElementById('log').textContent.split('\\n').length > 3";
    tab.wait_for(done, MEET).await;
    let log = tab.eval("document.getElementById('log').textContent").await;
    (page_node(tab).await, log.as_str().unwrap().to_owned())
}

/// A demo killed outright (SIGKILL: no code of its own runs) takes its prosody processes and its
/// Prometheus with it, and the next demo removes the temporary folders it left; a closed
/// terminal's SIGHUP stops a demo as Ctrl-C does, temporary folders and all.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_demo_leaves_no_prosody_or_prometheus_behind() {
    let mut demo = Demo::start(&["--prosody"]);
    let children = demo.children();
    let count = |name: &str| {
        children
            .iter()
            .filter(|(_, cmd)| cmd.contains(name))
            .count()
    };
    assert_eq!(count("/usr/bin/prosody"), 3, "{children:?}");
    assert_eq!(count("/usr/bin/prometheus"), 1, "{children:?}");
    assert!(demo.signal("KILL", Duration::from_secs(5)));
    let left = still_running(&children).await;
    assert!(
        left.is_empty(),
        "still running after the demo was killed: {left:?}"
    );
    // What a killed demo cannot remove, its children's temporary folders and its own, the next
    // demo removes as it starts.
    let (own, temp) = (demo_folder(&demo.banner), std::env::temp_dir());
    let folders: Vec<std::path::PathBuf> = (children.iter())
        .flat_map(|(_, cmd)| cmd.split([' ', '=']))
        .chain([own.to_str().unwrap()])
        .filter(|arg| arg.starts_with(temp.to_str().unwrap()))
        .map(|arg| {
            // The folder under the temporary directory that holds this path.
            let inside = std::path::Path::new(arg).strip_prefix(&temp).unwrap();
            temp.join(inside.components().next().unwrap())
        })
        .collect();
    assert!(
        folders.len() >= 5,
        "the demo's and its children's folders: {folders:?}"
    );
    assert!(folders.iter().all(|f| f.exists()), "{folders:?}");

    let mut demo = Demo::start(&[]);
    let left: Vec<_> = folders.iter().filter(|f| f.exists()).collect();
    for folder in &left {
        let _ = std::fs::remove_dir_all(folder);
    }
    assert!(
        left.is_empty(),
        "a killed demo's folders left behind: {left:?}"
    );
    let folder = demo_folder(&demo.banner);
    assert!(folder.exists(), "{}", folder.display());
    let children = demo.children();
    assert!(
        !children.is_empty(),
        "the demo started no Prometheus: {}",
        demo.banner
    );
    assert!(
        demo.signal("HUP", Duration::from_secs(20)),
        "SIGHUP did not stop the demo"
    );
    let left = still_running(&children).await;
    assert!(left.is_empty(), "still running after SIGHUP: {left:?}");
    assert!(!folder.exists(), "{} left behind", folder.display());
}

/// Which of `children` still run a few seconds on; those are killed, so that a failing test
/// leaves nothing behind.
async fn still_running(children: &[(u32, String)]) -> Vec<(u32, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|&(pid, _)| process_runs(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = (children.iter())
        .filter(|&&(pid, _)| process_runs(pid))
        .cloned()
        .collect();
    for (pid, _) in &left {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .status();
    }
    left
}

/// The demo's temporary folder: where the banner says its certificate is.
fn demo_folder(banner: &str) -> std::path::PathBuf {
    banner
        .lines()
        .find_map(|line| line.split_once("localhost: ")?.1.split(' ').next())
        .map(|cert| std::path::Path::new(cert).parent().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no certificate path in the banner: {banner}"))
}
