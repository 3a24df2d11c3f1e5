//! The room census: which rooms a node hosts, asked of the node itself.
//!
//! A node may name a `census_url` (Jitsi's prosody module `mod_muc_census`, served at
//! `/room-census` on prosody's HTTP port), polled every `[census] interval`. Its answer:
//! `{"room_census": [{"room_name": "myroom@conference.meet.jitsi", "participants": 3,
//! "created_time": 1700000000, "leaked": false}, ...]}`; a node with no room answers
//! `{"room_census": {}}` with the module's releases that encode an empty Lua table as an
//! object (Prosody's `util.json`, cjson), `[]` with later ones. A listed room is live (its count
//! leaves out jicofo's focus, so 0 is live too) unless `leaked`. Rooms opened under a tenant are
//! named `[tenant]myroom@...`; both map to the router's room keys (`tenant/myroom`) through the
//! same normalisation as URLs, and the MUC domain is ignored. jitsi's signal-sidecar serves the
//! same answer at `/signal/census`, and `{"room_census": null}` (status 200) while its own poll
//! of prosody fails: that is no census, not a node without rooms.
//!
//! A room live on more than one node's census at once is split ([`splits`]).

use std::collections::HashMap;

use serde::Deserialize;

use super::Node;
use crate::error_chain::error_chain;
use crate::local_fault::LocalFault;
use crate::room::{RoomKey, RoomLimits};

/// The largest census answer read (a node with 100,000 rooms answers about 10 MB).
const MAX_ANSWER: usize = 16 << 20;

/// One live room of a node's census.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRoom {
    /// The room's key, as the router pins it.
    pub key: String,
    /// Participants, not counting jicofo's focus.
    pub participants: u32,
}

/// Why a census gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    /// Not a 2xx.
    #[error("status {0}")]
    Status(u16),
    /// No answer in time, or no connection.
    #[error("{0}")]
    Unreachable(String),
    /// An answer that is not a census.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// A shortage of the router's own (no verdict on the node).
    #[error("{0}")]
    Local(LocalFault),
}

#[derive(Deserialize)]
struct Answer {
    /// `null` from a signal-sidecar whose own poll of prosody's census failed: it answers
    /// `{"room_census": null}` with status 200 then.
    room_census: Option<Rooms>,
}

/// The rooms: a list, or `{}` for none (see the module's docs).
#[derive(Deserialize)]
#[serde(untagged)]
enum Rooms {
    List(Vec<Entry>),
    None(std::collections::BTreeMap<String, serde::de::IgnoredAny>),
}

#[derive(Deserialize)]
struct Entry {
    room_name: String,
    /// Jitsi's module subtracts jicofo's focus, which makes -1 of a room with no one in it.
    #[serde(default)]
    participants: i64,
    #[serde(default)]
    leaked: bool,
}

/// The room key a census room name stands for: `[tenant]room@muc.domain` → `tenant/room`,
/// `room@muc.domain` → `room`; `None` for a name no URL could open.
pub fn room_key(room_name: &str, limits: &RoomLimits) -> Option<String> {
    let local = room_name
        .split_once('@')
        .map_or(room_name, |(local, _)| local);
    let text = match local
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
    {
        Some((tenant, room)) => format!("{tenant}/{room}"),
        None => local.to_owned(),
    };
    RoomKey::parse(&text, limits)
        .ok()
        .map(|key| key.as_str().to_owned())
}

/// Reads a census answer: its live rooms, leaked ones and names no URL could open left out.
pub fn parse(body: &[u8], limits: &RoomLimits) -> Result<Vec<LiveRoom>, CensusError> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| CensusError::Malformed(e.to_string()))?;
    let Some(rooms) = answer.room_census else {
        let problem = "room_census is null or missing: no census in the answer (a signal-sidecar answers null when it cannot read prosody's census)";
        return Err(CensusError::Malformed(problem.into()));
    };
    let entries = match rooms {
        Rooms::List(entries) => entries,
        Rooms::None(map) if map.is_empty() => Vec::new(),
        Rooms::None(_) => {
            let problem = "room_census is an object with keys, not a list of rooms";
            return Err(CensusError::Malformed(problem.into()));
        }
    };
    let live = (entries.into_iter()).filter(|entry| !entry.leaked);
    Ok(live
        .filter_map(|entry| {
            Some(LiveRoom {
                key: room_key(&entry.room_name, limits)?,
                participants: u32::try_from(entry.participants.max(0)).unwrap_or(u32::MAX),
            })
        })
        .collect())
}

/// Asks one node's census.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: std::time::Duration,
    limits: &RoomLimits,
) -> Result<Vec<LiveRoom>, CensusError> {
    let unreachable = |e: reqwest::Error| match LocalFault::find(&e) {
        Some(fault) => CensusError::Local(fault),
        None if e.is_timeout() => CensusError::Unreachable("timed out".into()),
        None => {
            CensusError::Unreachable(format!("unreachable ({})", error_chain(&e.without_url())))
        }
    };
    let request = client.get(url).timeout(timeout);
    let mut response = request.send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(CensusError::Status(response.status().as_u16()));
    }
    let body = (super::body_within(&mut response, MAX_ANSWER).await)
        .map_err(unreachable)?
        .ok_or_else(|| CensusError::Malformed(format!("over {MAX_ANSWER} bytes")))?;
    parse(&body, limits)
}

/// A room the census found live on more than one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Split {
    /// The room key.
    pub room: String,
    /// Each node it is live on with its participants there, most participants first.
    pub nodes: Vec<SplitPart>,
}

/// One node's part of a split room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SplitPart {
    /// The node.
    pub node: String,
    /// Participants on it.
    pub participants: u32,
}

/// The rooms live on more than one of `censuses`' nodes at once (split), by room key.
pub fn splits(censuses: &[(&Node, &[LiveRoom])]) -> Vec<Split> {
    let mut by_room: HashMap<&str, Vec<SplitPart>> = HashMap::new();
    for (node, rooms) in censuses {
        for room in *rooms {
            by_room.entry(&room.key).or_default().push(SplitPart {
                node: node.id.as_str().to_owned(),
                participants: room.participants,
            });
        }
    }
    let mut splits: Vec<Split> = (by_room.into_iter())
        .filter(|(_, parts)| parts.len() > 1)
        .map(|(room, mut parts)| {
            parts.sort_by(|a, b| (b.participants.cmp(&a.participants)).then(a.node.cmp(&b.node)));
            let room = room.to_owned();
            Split { room, nodes: parts }
        })
        .collect();
    splits.sort_by(|a, b| a.room.cmp(&b.room));
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_map_to_room_keys_as_urls_do() {
        let limits = RoomLimits::default();
        let key = |name: &str| room_key(name, &limits);
        assert_eq!(
            key("myroom@conference.meet.jitsi").as_deref(),
            Some("myroom")
        );
        assert_eq!(key("MyRoom@muc.meet.jitsi").as_deref(), Some("myroom"));
        assert_eq!(
            key("[acme]standup@muc.meet.jitsi").as_deref(),
            Some("acme/standup")
        );
        // The web client percent-encodes the room name it joins (`getBackendSafeRoomName`).
        assert_eq!(
            key("caf%c3%a9%20talk@muc.meet.jitsi").as_deref(),
            Some("café talk")
        );
        assert_eq!(key("@muc.meet.jitsi"), None);
    }

    #[test]
    fn leaked_rooms_are_not_live_and_a_bad_answer_is_malformed() {
        let limits = RoomLimits::default();
        let body = br#"{"room_census": [
            {"room_name": "a@muc.meet.jitsi", "participants": 0, "created_time": 1700000000, "leaked": false},
            {"room_name": "b@muc.meet.jitsi", "participants": 2, "created_time": 1700000000, "leaked": true},
            {"room_name": "[t]c@muc.meet.jitsi", "participants": 3, "created_time": null},
            {"room_name": "d@muc.meet.jitsi", "participants": -1}
        ]}"#;
        let live = parse(body, &limits).unwrap();
        let keys: Vec<(&str, u32)> = live
            .iter()
            .map(|r| (r.key.as_str(), r.participants))
            .collect();
        assert_eq!(keys, [("a", 0), ("t/c", 3), ("d", 0)]);
        assert!(matches!(
            parse(b"{\"rooms\": []}", &limits),
            Err(CensusError::Malformed(_))
        ));
        // Jitsi's module encodes no rooms as an empty object in some releases.
        assert_eq!(parse(br#"{"room_census": {}}"#, &limits).unwrap(), []);
        assert!(matches!(
            parse(br#"{"room_census": {"a": 1}}"#, &limits),
            Err(CensusError::Malformed(_))
        ));
        for no_census in [&br#"{"room_census": null}"#[..], b"{}"] {
            let reason = parse(no_census, &limits).unwrap_err().to_string();
            assert!(
                reason.contains("room_census is null or missing"),
                "{reason}"
            );
        }
        assert!(matches!(
            parse(b"<html>", &limits),
            Err(CensusError::Malformed(_))
        ));
    }
}
