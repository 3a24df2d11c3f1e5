//! The fleet dashboard in real headless Chromium: the page loads from the admin listener, shows
//! the nodes and the busiest rooms, and its drain buttons change the fleet.

mod support;

use std::time::Duration;

use support::browser::{Browser, Tab};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

async fn text(tab: &mut Tab, selector: &str) -> String {
    let expression = format!("document.querySelector({selector:?})?.textContent ?? ''");
    tab.eval(&expression).await.as_str().unwrap().to_owned()
}

async fn draining(router: &Router, node: &str) -> bool {
    let nodes: serde_json::Value = router.admin_json("/api/nodes").await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["draining"]
        .as_bool()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_fleet_and_drains_a_node() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let redis = Redis::start().await;
    let sections = format!(
        "[health]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n\n[pins.redis]\nurl = {:?}\n",
        redis.url()
    );
    let router = Router::start(&certs, &config(&certs, &sections, &node_entries(&nodes)));
    let client = router.client();
    for i in 0..6 {
        // Room 0 is asked for most, so it heads the busiest rooms.
        for _ in 0..if i == 0 { 5 } else { 1 } {
            client
                .get(router.url(&format!("/dash-{i}")))
                .send()
                .await
                .unwrap();
        }
    }

    let browser = Browser::launch(&[]).await;
    let mut tab = browser.tab().await;
    tab.goto(&router.admin_url("/")).await;
    tab.wait_for("document.querySelectorAll('#nodes tr').length === 2", WAIT)
        .await;
    let names = tab
        .eval("[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.node).join(',')")
        .await;
    assert_eq!(names, "jitsi-a,jitsi-b");
    assert_eq!(text(&mut tab, "#s-rooms").await, "6");
    assert_eq!(text(&mut tab, "#s-healthy").await, "2");
    let shared = format!("127.0.0.1:{}", redis.port);
    assert_eq!(
        text(&mut tab, "#s-shared").await,
        shared,
        "the shared pin store"
    );
    assert_eq!(
        text(&mut tab, "#rooms tr td").await,
        "dash-0",
        "the busiest room first"
    );
    let rooms_shown = tab
        .eval("[...document.querySelectorAll('#nodes tr .rooms')].reduce((s, td) => s + Number(td.textContent), 0)")
        .await;
    assert_eq!(rooms_shown, 6);
    let weights = tab
        .eval("[...document.querySelectorAll('#nodes tr .weight')].map(td => td.textContent).join(',')")
        .await;
    assert_eq!(
        weights, "1,1",
        "each node's weight ([[nodes]] weight, 1 by default)"
    );

    // Drain jitsi-a with its button: the page and the API both show it.
    let row = r#"tr[data-node="jitsi-a"]"#;
    tab.eval(&format!("document.querySelector('{row} button').click()"))
        .await;
    tab.wait_for(
        &format!("document.querySelector('{row} .drain')?.textContent === 'draining'"),
        WAIT,
    )
    .await;
    assert!(draining(&router, "jitsi-a").await);
    assert_eq!(text(&mut tab, &format!("{row} button")).await, "Undrain");
    for i in 0..6 {
        let response = client
            .get(router.url(&format!("/after-drain-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            shard(&response),
            "jitsi-b",
            "a draining node takes no new room"
        );
    }

    // And back.
    tab.eval(&format!("document.querySelector('{row} button').click()"))
        .await;
    tab.wait_for(
        &format!("document.querySelector('{row} button')?.textContent === 'Drain'"),
        WAIT,
    )
    .await;
    assert!(!draining(&router, "jitsi-a").await);

    // A node that fails its health checks turns red without a reload of the page, and says
    // which check failed and why.
    nodes[1].set_healthy(false);
    tab.wait_for(
        r#"document.querySelector('tr[data-node="jitsi-b"] .health .pill')?.textContent === 'unhealthy'"#,
        Duration::from_secs(30),
    )
    .await;
    tab.wait_for(
        r#"(document.querySelector('tr[data-node="jitsi-b"] .health .why')?.textContent ?? '').includes('/http-bind: status 502')"#,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_the_dashboard_asks_for_it() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let token = "dashboard-token-0123456789";
    let router = Router::start(
        &certs,
        &config(
            &certs,
            &format!("[admin]\ntoken = {token:?}\n"),
            &node_entries(&nodes),
        ),
    );
    let browser = Browser::launch(&[]).await;
    let mut tab = browser.tab().await;
    tab.goto(&router.admin_url("/")).await;
    tab.wait_for(
        "getComputedStyle(document.getElementById('login')).display === 'block'",
        WAIT,
    )
    .await;
    assert_eq!(
        tab.eval("document.querySelectorAll('#nodes tr').length")
            .await,
        0,
        "no data without the token"
    );
    tab.eval(&format!(
        "document.getElementById('token').value = {token:?}; document.querySelector('#login button').click()"
    ))
    .await;
    tab.wait_for("document.querySelectorAll('#nodes tr').length === 1", WAIT)
        .await;
    assert_eq!(text(&mut tab, "#nodes tr td").await, "jitsi-a");
}
