//! The JSON API's handlers. Field names here are the API's stable contract (README "Admin API").

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{error, json, Admin, Answer};
use crate::config::NodeSpec;
use crate::placement::pins::PinInfo;
use crate::placement::policy;
use crate::placement::shared::SharedError;
use crate::placement::Router;
use crate::room::RoomKey;

/// Most rooms one listing returns.
const MAX_LIMIT: usize = 10_000;

fn unix_secs_ago(age: Duration) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(age).as_millis() as f64 / 1000.0
}

pub(super) fn ready(admin: &Admin) -> Answer {
    let healthy = admin
        .router
        .fleet()
        .snapshot()
        .nodes()
        .iter()
        .filter(|n| n.live.healthy())
        .count();
    if healthy > 0 {
        json(
            StatusCode::OK,
            &json!({ "ready": true, "healthy_nodes": healthy }),
        )
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "no healthy node")
    }
}

pub(super) fn status(admin: &Admin) -> Answer {
    let state = admin.router.fleet().snapshot();
    json(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mode": admin.mode.to_string(),
            "nodes": state.nodes().len(),
            "healthy_nodes": state.nodes().iter().filter(|n| n.live.healthy()).count(),
            "pinned_rooms": admin.router.pins().len(),
            "websocket_tunnels": admin.tunnels.count(),
            "snapshot_age_seconds": admin.router.fleet().snapshot_age().map(|a| a.as_secs_f64()),
            "certificate": certificate(admin),
            "shared_pins": admin.router.shared_pins().map(|shared| json!({
                "connected": shared.connected(),
                "errors": shared.errors(),
                "primary": shared.connected_to(),
            })),
        }),
    )
}

pub(super) fn nodes(admin: &Admin) -> Answer {
    json(StatusCode::OK, &Value::Array(node_views(admin, None)))
}

/// One node as [`nodes`] lists it.
pub(super) fn node(admin: &Admin, name: &str) -> Answer {
    match node_views(admin, Some(name)).pop() {
        Some(node) => json(StatusCode::OK, &node),
        None => error(StatusCode::NOT_FOUND, "no such node"),
    }
}

/// Every node (or the one named `only`) with its `[[nodes]]` fields and its state.
fn node_views(admin: &Admin, only: Option<&str>) -> Vec<Value> {
    let state = admin.router.fleet().snapshot();
    let now = Instant::now();
    let cpu = state.cpu(now);
    let settings = admin.router.settings();
    state
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, node)| only.is_none_or(|name| node.spec.name == name))
        .map(|(i, node)| {
            let spec = &node.spec;
            json!({
                "name": spec.name,
                "upstream": spec.upstream.to_string(),
                "public_url": spec.public_url,
                "instance": spec.instance,
                "jvb_server_ids": spec.jvb_server_ids,
                "drain": spec.drain,
                "weight": spec.weight,
                "health_checks": spec.health_checks,
                "census_url": spec.census_url,
                "signal_report": spec.signal_report,
                "max_rooms": spec.max_rooms,
                "max_participants": spec.max_participants,
                "cpu": cpu.get(i).copied().flatten(),
                "cpu_estimate": policy::estimate(&state, &settings, i, now),
                "healthy": node.live.healthy(),
                "draining": node.live.draining(),
                "drain_reported": node.live.drain_reported(),
                "rooms": node.live.rooms(),
                "placed_since_reading": node.live.placed_since_reading(),
                "joined_since_reading": node.live.joined_since_reading(),
                "last_health_check": node.live.checked_at_ms().map(|ms| ms as f64 / 1000.0),
                "health_failure": node.live.failure(),
                "participants": node.live.participants(),
                "full": state.placing()[i].full(),
                "empty_since": node.live.empty_since_ms().map(|ms| ms as f64 / 1000.0),
            })
        })
        .collect()
}

/// What [`nodes`] shows of a node's state besides its `[[nodes]]` fields.
const NODE_STATE: [&str; 13] = [
    "cpu",
    "cpu_estimate",
    "healthy",
    "draining",
    "drain_reported",
    "rooms",
    "placed_since_reading",
    "joined_since_reading",
    "last_health_check",
    "health_failure",
    "participants",
    "full",
    "empty_since",
];

/// Rooms live on more than one node by the nodes' census: `[{room, nodes: [{node,
/// participants}]}]`, each room's largest part first.
pub(super) fn splits(admin: &Admin) -> Answer {
    json(StatusCode::OK, &json!(admin.router.splits()))
}

/// The served certificate: where it comes from, when it is valid and, from ACME, when it will
/// be renewed and what chose that time (Unix seconds).
fn certificate(admin: &Admin) -> Value {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let validity = admin.certs.validity();
    let plan = admin.certs.renewal_plan();
    json!({
        "source": if admin.acme { "acme" } else { "files" },
        "not_before": validity.map(|v| secs(v.not_before)),
        "not_after": validity.map(|v| secs(v.not_after)),
        "renew_at": plan.map(|p| secs(p.at)),
        "renew_by": plan.map(|p| p.by),
    })
}

/// Asks the ACME issuer to renew the certificate now.
pub(super) fn renew(admin: &Admin) -> Answer {
    if !admin.acme {
        let reason =
            "the certificate comes from [tls] cert and key: replace those files to renew it";
        return error(StatusCode::CONFLICT, reason);
    }
    admin.certs.request_renewal();
    json(StatusCode::ACCEPTED, &json!({ "renewing": true }))
}

pub(super) fn put_node(admin: &Admin, name: &str, body: &[u8]) -> Answer {
    let mut node: Value = match serde_json::from_slice(body) {
        Ok(node) => node,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad node JSON: {e}")),
    };
    // A node as `nodes` lists it can be sent back as it is: its state is not an input.
    if let Some(node) = node.as_object_mut() {
        for field in NODE_STATE {
            node.remove(field);
        }
    }
    if let Some(named) = node
        .get("name")
        .filter(|named| named.as_str() != Some(name))
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("the body names node {named} but the path names {name:?}"),
        );
    }
    let spec = match NodeSpec::from_json(name, node, admin.mode) {
        Ok(spec) => spec,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let existed = admin.router.fleet().snapshot().node(name).is_some();
    if let Err(reason) = admin.router.fleet().put_node(spec) {
        return error(StatusCode::CONFLICT, &reason);
    }
    tracing::info!(
        node = name,
        updated = existed,
        "node registered through the admin API"
    );
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json(status, &json!({ "name": name, "created": !existed }))
}

pub(super) fn delete_node(admin: &Admin, name: &str) -> Answer {
    if !admin.router.fleet().remove_node(name) {
        return error(StatusCode::NOT_FOUND, &format!("no node named {name:?}"));
    }
    tracing::info!(node = name, "node removed through the admin API");
    json(StatusCode::OK, &json!({ "name": name, "removed": true }))
}

/// Sets the operator's drain switch of a node. The answer's `draining` is whether the node
/// drains now, which its signal-sidecar may keep true (`drain_reported`).
pub(super) fn drain(admin: &Admin, name: &str, draining: bool) -> Answer {
    let fleet = admin.router.fleet();
    let (Some(was), Some(node)) = (
        fleet.set_draining(name, draining),
        fleet.snapshot().node(name).cloned(),
    ) else {
        return error(StatusCode::NOT_FOUND, &format!("no node named {name:?}"));
    };
    let live = &node.live;
    let answer = json!({
        "name": name,
        "draining": live.draining(),
        "was_draining": was,
        "drain_reported": live.drain_reported(),
    });
    json(StatusCode::OK, &answer)
}

fn room_json(pin: &PinInfo) -> Value {
    json!({
        "room": pin.room,
        "node": pin.node.as_str(),
        "pinned_at": unix_secs_ago(pin.pinned_for),
        "last_seen": unix_secs_ago(pin.idle),
        "requests": pin.requests,
    })
}

pub(super) async fn rooms(admin: &Admin, query: &str) -> Answer {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    };
    let limit = match param("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(limit)) if limit <= MAX_LIMIT => limit,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be a number up to {MAX_LIMIT}"),
            )
        }
    };
    let node = param("node");
    if let Some(node) = &node {
        if admin.router.fleet().snapshot().node(node).is_none() {
            return error(StatusCode::NOT_FOUND, &format!("no node named {node:?}"));
        }
    }
    // Listing a million pins takes a good part of a second and a copy of every pin: one
    // listing at a time, off the threads that serve requests, and only the rooms shown sorted.
    let _one_at_a_time = admin.listing.lock().await;
    let router = admin.router.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let mut pins: Vec<PinInfo> = router
            .pins()
            .export()
            .into_iter()
            .filter(|pin| node.as_deref().is_none_or(|n| pin.node.as_str() == n))
            .collect();
        let total = pins.len();
        let busiest_first = |a: &PinInfo, b: &PinInfo| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.room.cmp(&b.room))
        };
        if limit < pins.len() {
            pins.select_nth_unstable_by(limit, busiest_first);
            pins.truncate(limit);
        }
        pins.sort_unstable_by(busiest_first);
        let rooms: Vec<Value> = pins.iter().map(room_json).collect();
        json!({ "total": total, "rooms": rooms })
    })
    .await;
    match listed {
        Ok(listed) => json(StatusCode::OK, &listed),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "listing the rooms failed",
        ),
    }
}

/// One room's pin. With a shared pin store (router replicas), a room this router holds no pin
/// for is looked up there, an unpin also unpins it there (and so on every replica), and a move
/// is written there; the answer then says whether the store took the change (`replicas_told`).
pub(super) async fn room(admin: &Admin, method: &Method, raw: &str, body: &[u8]) -> Answer {
    let key = match RoomKey::parse(raw, &admin.room_limits) {
        Ok(key) => key,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid room: {e}")),
    };
    let (router, room) = (&admin.router, key.as_str());
    match *method {
        Method::GET => room_pin(router, room).await,
        Method::DELETE => unpin_room(router, room).await,
        Method::PUT => move_room(router, room, body).await,
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, PUT or DELETE on a room",
        ),
    }
}

fn not_pinned(room: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!("room {room:?} is not pinned"),
    )
}

/// A room this router holds no pin for, when the shared pin store did not answer either.
fn store_silent(room: &str, e: &SharedError) -> Answer {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("room {room:?} is not pinned on this router, and the shared pin store did not answer: {e}"),
    )
}

/// `GET`: the pin, this router's or else the shared store's.
async fn room_pin(router: &Router, room: &str) -> Answer {
    match (router.pins().info(room), router.shared_pins()) {
        (Some(pin), _) => json(StatusCode::OK, &room_json(&pin)),
        (None, None) => not_pinned(room),
        (None, Some(shared)) => match shared.held(room).await {
            Ok(Some(node)) => json(
                StatusCode::OK,
                &json!({ "room": room, "node": node, "pinned_by": "another replica" }),
            ),
            Ok(None) => not_pinned(room),
            Err(e) => store_silent(room, &e),
        },
    }
}

/// `DELETE`: the room unpinned here and in the shared store.
async fn unpin_room(router: &Router, room: &str) -> Answer {
    let here = router.unpin(room).map(|node| node.as_str().to_owned());
    let mut answer = json!({ "room": room, "unpinned_from": here });
    if let Some(shared) = router.shared_pins() {
        match shared.unpinned(room).await {
            Ok(held) => {
                answer["replicas_told"] = true.into();
                if here.is_none() {
                    answer["unpinned_from"] = held.into();
                }
            }
            Err(e) if here.is_none() => return store_silent(room, &e),
            Err(e) => {
                tracing::warn!(room, error = %e, "unpinned here; the other replicas were not told");
                answer["replicas_told"] = false.into();
            }
        }
    }
    match answer["unpinned_from"].as_str() {
        Some(node) => {
            tracing::info!(room, node, "room unpinned through the admin API");
            json(StatusCode::OK, &answer)
        }
        None => not_pinned(room),
    }
}

/// `PUT {"node": "<name>"}`: the room pinned to that node here and in the shared store.
async fn move_room(router: &Router, room: &str, body: &[u8]) -> Answer {
    let node = match serde_json::from_slice::<Value>(body) {
        Ok(value) => match value.get("node").and_then(Value::as_str) {
            Some(node) => node.to_owned(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be {\"node\": \"<name>\"}",
                )
            }
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")),
    };
    let Some(from) = router.move_room(room, &node) else {
        return error(StatusCode::NOT_FOUND, &format!("no node named {node:?}"));
    };
    let mut answer =
        json!({ "room": room, "node": node, "from": from.as_ref().map(|f| f.as_str()) });
    if let Some(shared) = router.shared_pins() {
        let told = shared.moved(room, &node).await;
        if let Err(e) = &told {
            tracing::warn!(room, error = %e, "moved here; the other replicas were not told");
        }
        answer["replicas_told"] = told.is_ok().into();
    }
    json(StatusCode::OK, &answer)
}
