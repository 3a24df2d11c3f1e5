//! Request → room key. Pure: no I/O, no hyper, so it can be fuzzed and property-tested.
//!
//! A Jitsi client names its room in two ways: the room page `/<room>` (or `/<tenant>/<room>`), and
//! the `room=` query parameter of the signalling endpoints (`/http-bind`, `/xmpp-websocket`,
//! `config.js`, `/conference-request/v1`, `/_api/room-info`, optionally behind `/<tenant>/`). Both
//! forms go through the same normalisation as the web client (percent-decode, NFKC, lower-case),
//! so every form of one room yields one [`RoomKey`].
//!
//! DESIGN note: besides the reserved names ([`classify`]), a single path segment ending in a static-file
//! extension (`.js`, `.css`, `.html`, …) is treated as an asset, not a room: jitsi-meet serves files
//! such as `/logging_config.js`, `/title.html` or `/robots.txt` from its web root, and they must follow
//! the page's affinity cookie rather than create a pin.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;
use unicode_normalization::UnicodeNormalization;

/// Path segments that are never a room (jitsi-meet's own endpoints and files).
const RESERVED_NAMES: &[&str] = &[
    "config.js",
    "interface_config.js",
    "external_api.js",
    "external_api.min.js",
    "favicon.ico",
    "manifest.json",
    "pwa-worker.js",
    "http-bind",
    "http-pre-bind",
    "xmpp-websocket",
    "conference-request",
    "about",
    "room",
    "room-size",
    "room-password",
    "_unlock",
];

/// Folders whose contents are never a room.
const RESERVED_DIRS: &[&str] = &[
    "static",
    "libs",
    "css",
    "images",
    "fonts",
    "sounds",
    "lang",
    "connection_optimization",
    "transcripts",
    ".well-known",
    "colibri-ws",
    "colibri-relay-ws",
    "rtcstats-ws",
];

/// Folders of endpoints that, like the reserved names, name their room in the `room=` query:
/// jitsi-meet's nginx sends `/_api/room-info?room=<room>` (and `/<tenant>/_api/room-info`) to the
/// node's prosody, which answers for the rooms it hosts. Their other files (`/_api/public/…`)
/// carry no room and follow the affinity cookie.
const QUERY_DIRS: &[&str] = &["_api"];

/// Folders that carry a videobridge server id as their first sub-segment.
const BRIDGE_DIRS: &[&str] = &["colibri-ws", "colibri-relay-ws"];

/// Extensions of files a jitsi-meet web root serves; a segment ending in one is an asset.
const STATIC_EXTENSIONS: &[&str] = &[
    "js",
    "mjs",
    "css",
    "html",
    "htm",
    "ico",
    "json",
    "png",
    "svg",
    "jpg",
    "jpeg",
    "gif",
    "webp",
    "txt",
    "xml",
    "map",
    "wasm",
    "woff",
    "woff2",
    "ttf",
    "mp3",
    "wav",
    "opus",
    "ogg",
    "webmanifest",
];

/// Limits applied while parsing; from the `[limits]` section of the config.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// The longest accepted room key, in characters (tenant and `/` included).
    pub max_chars: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits { max_chars: 200 }
    }
}

/// A validated, normalised room key: `tenant/room`, or `room` when there is no tenant.
///
/// Only [`classify`] builds one, so holding a `RoomKey` means the text is decoded, NFKC-normalised,
/// lower-cased, free of control characters and within the length limit. A `/` appears only as the
/// tenant separator, so `room` and `tenant/room` never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey<'a> {
    text: Cow<'a, str>,
}

impl<'a> RoomKey<'a> {
    /// The key as stored in the pin table.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The tenant part, if the room was opened under one.
    pub fn tenant(&self) -> Option<&str> {
        self.text.split_once('/').map(|(tenant, _)| tenant)
    }

    /// The room part, without the tenant.
    pub fn room(&self) -> &str {
        self.text
            .split_once('/')
            .map_or(&*self.text, |(_, room)| room)
    }

    /// A copy that owns its text, for keeping beyond the request.
    pub fn into_owned(self) -> RoomKey<'static> {
        RoomKey {
            text: Cow::Owned(self.text.into_owned()),
        }
    }

    /// Parses an already-normalised key as written by operators or stored by the router
    /// (for example `tenant/room` in an admin request); runs the same normalisation.
    pub fn parse(text: &str, limits: &RoomLimits) -> Result<RoomKey<'static>, RoomError> {
        let (tenant, room) = match text.split_once('/') {
            Some((tenant, room)) => (Some(tenant), room),
            None => (None, text),
        };
        match build_key(tenant, room, limits)? {
            Some(key) => Ok(key.into_owned()),
            None => Err(RoomError::Empty),
        }
    }
}

impl fmt::Display for RoomKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a request belongs, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// The request belongs to a room. `page` is true for the room page itself (`/<room>`),
    /// whose response sets the affinity cookie.
    Room {
        /// The room's key.
        key: RoomKey<'a>,
        /// Whether this is the room page rather than signalling.
        page: bool,
    },
    /// A bridge channel (`/colibri-ws/<server-id>/...`), routed by the server id a node declares.
    Bridge {
        /// The server id as it appears in the path.
        server_id: &'a str,
    },
    /// No room in the request (`/`, assets): routed by the affinity cookie, else to any node.
    Unrouted,
}

/// Why a request's room could not be accepted; each maps to `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The key is longer than the configured limit.
    #[error("room name too long: {chars} characters, at most {max} allowed")]
    TooLong {
        /// Characters in the normalised key.
        chars: usize,
        /// The configured limit.
        max: usize,
    },
    /// The decoded name holds a control character.
    #[error("room name contains a control character")]
    ControlCharacter,
    /// The decoded name holds a `/`.
    #[error("room name contains '/' after decoding")]
    Slash,
    /// The percent-decoded bytes are not UTF-8.
    #[error("room name is not valid UTF-8 after percent-decoding")]
    InvalidUtf8,
    /// An explicit key (admin input) was empty.
    #[error("room name is empty")]
    Empty,
}

/// Classifies a request by its raw (still percent-encoded) path and query.
pub fn classify<'a>(
    path: &'a str,
    query: Option<&'a str>,
    limits: &RoomLimits,
) -> Result<Target<'a>, RoomError> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let Some(first) = segments.next() else {
        return Ok(Target::Unrouted);
    };
    let second = segments.next();
    let (first, second) = match first {
        LOAD_TEST => match second {
            Some(second) => (second, segments.next()),
            None => return Ok(Target::Unrouted),
        },
        _ => (first, second),
    };
    // jitsi-meet's nginx strips one leading tenant segment: `/<tenant>/<anything>` is `/<anything>`.
    let (tenant, head, next) = match second {
        Some(second) if !is_reserved(first) => (Some(first), second, segments.next()),
        _ => (None, first, second),
    };
    let (head, next) = match (tenant, head) {
        (Some(_), LOAD_TEST) => match next {
            Some(next) => (next, segments.next()),
            None => return Ok(Target::Unrouted),
        },
        _ => (head, next),
    };
    if tenant == Some(ETHERPAD) {
        if let Some(pad) = etherpad_pad(head, next, query) {
            return pinned_as(Some(ETHERPAD), pad, limits);
        }
    }
    if BRIDGE_DIRS.contains(&head) {
        return Ok(Target::Bridge {
            server_id: next.unwrap_or(""),
        });
    }
    if RESERVED_DIRS.contains(&head) {
        return Ok(Target::Unrouted);
    }
    if RESERVED_NAMES.contains(&head) || QUERY_DIRS.contains(&head) || is_static_file(head) {
        return from_query(tenant, query, limits);
    }
    if next.is_some() {
        // Deeper paths are no room page of jitsi-meet's; let the affinity cookie route them.
        return Ok(Target::Unrouted);
    }
    if head == SOCKET_IO {
        return socket_io(tenant, query, limits);
    }
    Ok(match build_key(tenant, head, limits)? {
        Some(key) => Target::Room { key, page: true },
        None => Target::Unrouted,
    })
}

/// The folder of jitsi-meet's load-test client: `/_load-test/<room>` (and
/// `/<tenant>/_load-test/<room>`) is a page that joins the conference `<room>`, and
/// `/_load-test/libs/…` its script. docker-jitsi-meet's nginx serves them as the room page and
/// its assets, and so does the router: the folder is dropped from the path, so that the page is
/// routed, and sets the affinity cookie, as the room it joins.
const LOAD_TEST: &str = "_load-test";

/// Etherpad's folder: docker-jitsi-meet's web front sends `/etherpad/` to the node's Etherpad,
/// which keeps each pad (a meeting's shared document) to itself.
const ETHERPAD: &str = "etherpad";

/// The pad an Etherpad request belongs to: its page `/etherpad/p/<pad>` (and the pages under
/// it, such as `/timeslider` and `/export/…`), or its socket.io connection, which names the pad
/// in `padId=` (Etherpad does, it says, so that proxies can shard by pad). Every participant
/// must reach the Etherpad holding the pad, so each pad is pinned as a room `etherpad/<pad>`
/// and pads spread over the nodes like rooms. Etherpad's other files follow the pad page that
/// loaded them (`Referer`) or the affinity cookie.
fn etherpad_pad<'a>(head: &str, next: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    match head {
        "p" => next,
        SOCKET_IO => query.and_then(|query| param(query, "padId")),
        _ => None,
    }
}

/// socket.io's endpoint: docker-jitsi-meet's web front sends `/socket.io/` to the whiteboard's
/// collaboration server (excalidraw-backend), and Etherpad under `/etherpad/` has one too.
const SOCKET_IO: &str = "socket.io";

/// A socket.io connection is no room page: it never sets the affinity cookie, which names
/// the node of the conference the browser is in. Every participant of a meeting must reach one
/// collaboration server, so it is pinned: jitsi-meet's whiteboard names its board in `room=`
/// (an md5 of the meeting's URL), and each board gets a pin of its own; without a room
/// (Etherpad's without a pad, other clients') it is pinned as a room of its path.
fn socket_io<'a>(
    tenant: Option<&'a str>,
    query: Option<&'a str>,
    limits: &RoomLimits,
) -> Result<Target<'a>, RoomError> {
    if tenant.is_none() {
        if let named @ Target::Room { .. } = from_query(None, query, limits)? {
            return Ok(named);
        }
    }
    pinned_as(tenant, SOCKET_IO, limits)
}

/// A request that is no room page pinned as the room `name` (under `tenant`).
fn pinned_as<'a>(
    tenant: Option<&'a str>,
    name: &'a str,
    limits: &RoomLimits,
) -> Result<Target<'a>, RoomError> {
    Ok(match build_key(tenant, name, limits)? {
        Some(key) => Target::Room { key, page: false },
        None => Target::Unrouted,
    })
}

fn is_reserved(segment: &str) -> bool {
    RESERVED_NAMES.contains(&segment)
        || RESERVED_DIRS.contains(&segment)
        || QUERY_DIRS.contains(&segment)
}

fn is_static_file(segment: &str) -> bool {
    segment.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && STATIC_EXTENSIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(ext))
    })
}

fn from_query<'a>(
    tenant: Option<&'a str>,
    query: Option<&'a str>,
    limits: &RoomLimits,
) -> Result<Target<'a>, RoomError> {
    let Some(raw) = query.and_then(|query| param(query, "room")) else {
        return Ok(Target::Unrouted);
    };
    Ok(match build_key(tenant, raw, limits)? {
        Some(key) => Target::Room { key, page: false },
        None => Target::Unrouted,
    })
}

/// The raw value of a query string's first parameter `name`.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    (query.split('&')).find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Builds the key from raw tenant and room segments; `None` when the room is empty.
fn build_key<'a>(
    tenant: Option<&'a str>,
    room: &'a str,
    limits: &RoomLimits,
) -> Result<Option<RoomKey<'a>>, RoomError> {
    let room = normalise(room)?;
    if room.is_empty() {
        return Ok(None);
    }
    let text = match tenant {
        None => room,
        Some(tenant) => {
            let tenant = normalise(tenant)?;
            if tenant.is_empty() {
                room
            } else {
                Cow::Owned(format!("{tenant}/{room}"))
            }
        }
    };
    let chars = text.chars().count();
    if chars > limits.max_chars {
        return Err(RoomError::TooLong {
            chars,
            max: limits.max_chars,
        });
    }
    Ok(Some(RoomKey { text }))
}

/// Percent-decode, NFKC, lower-case, then check the character set — the web client's order.
fn normalise(raw: &str) -> Result<Cow<'_, str>, RoomError> {
    let simple = raw
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'%' && !b.is_ascii_uppercase());
    let text: Cow<'_, str> = if simple {
        Cow::Borrowed(raw)
    } else {
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| RoomError::InvalidUtf8)?;
        if decoded.is_ascii() {
            Cow::Owned(decoded.to_ascii_lowercase())
        } else {
            Cow::Owned(decoded.nfkc().collect::<String>().to_lowercase())
        }
    };
    if text.chars().any(char::is_control) {
        return Err(RoomError::ControlCharacter);
    }
    if text.contains('/') {
        return Err(RoomError::Slash);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(path: &str, query: Option<&str>) -> Result<Target<'static>, RoomError> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        let query = query.map(|q| &*Box::leak(q.to_owned().into_boxed_str()));
        classify(path, query, &RoomLimits::default())
    }

    fn key_of(path: &str, query: Option<&str>) -> String {
        match target(path, query) {
            Ok(Target::Room { key, .. }) => key.to_string(),
            other => panic!("{path}?{query:?} gave {other:?}, not a room"),
        }
    }

    #[test]
    fn socket_io_is_pinned_by_its_board_and_is_no_page() {
        let whiteboard = target(
            "/socket.io/",
            Some("EIO=4&transport=polling&room=9f86d081e"),
        );
        match whiteboard {
            Ok(Target::Room { key, page: false }) => assert_eq!(key.as_str(), "9f86d081e"),
            other => panic!("{other:?}"),
        }
        for (path, query, key) in [
            (
                "/socket.io/",
                Some("EIO=4&transport=websocket"),
                "socket.io",
            ),
            ("/socket.io/", None, "socket.io"),
            (
                "/etherpad/socket.io/",
                Some("EIO=3&room=x"),
                "etherpad/socket.io",
            ),
        ] {
            match target(path, query) {
                Ok(Target::Room {
                    key: k,
                    page: false,
                }) => assert_eq!(k.as_str(), key),
                other => panic!("{path}?{query:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_etherpad_pad_is_pinned_by_its_name_and_is_no_page() {
        for (path, query) in [
            ("/etherpad/p/Standup-Notes", None),
            ("/etherpad/p/Standup-Notes/timeslider", None),
            ("/etherpad/p/Standup-Notes/export/txt", None),
            (
                "/etherpad/socket.io/",
                Some("padId=Standup-Notes&EIO=4&transport=polling"),
            ),
            ("/etherpad/socket.io/", Some("EIO=4&padId=standup-notes")),
        ] {
            match target(path, query) {
                Ok(Target::Room { key, page: false }) => {
                    assert_eq!(key.as_str(), "etherpad/standup-notes", "{path}")
                }
                other => panic!("{path}?{query:?}: {other:?}"),
            }
        }
        for path in [
            "/etherpad/static/css/pad.css",
            "/etherpad/locales.json",
            "/etherpad/pluginfw/plugin-definitions.json",
        ] {
            assert_eq!(target(path, None), Ok(Target::Unrouted), "{path}");
        }
        // Only `padId=` names a pad, not a parameter whose name ends the same.
        assert_eq!(
            key_of("/etherpad/socket.io/", Some("xpadId=a")),
            "etherpad/socket.io"
        );
    }

    #[test]
    fn page_and_query_forms_are_one_room() {
        for (path, query) in [
            ("/MyRoom", None),
            ("/myroom", None),
            ("/my%52oom", None),
            ("/myroom/", None),
            ("/http-bind", Some("room=myroom")),
            ("/xmpp-websocket", Some("room=MyRoom")),
            ("/config.js", Some("room=myroom")),
            ("/conference-request/v1", Some("room=myroom")),
            ("/http-bind", Some("foo=1&room=my%72oom&bar=2")),
            ("/_api/room-info", Some("room=myroom")),
        ] {
            assert_eq!(key_of(path, query), "myroom", "{path} {query:?}");
        }
    }

    #[test]
    fn page_is_flagged_only_for_the_room_page() {
        assert!(matches!(
            target("/a", None),
            Ok(Target::Room { page: true, .. })
        ));
        assert!(matches!(
            target("/http-bind", Some("room=a")),
            Ok(Target::Room { page: false, .. })
        ));
    }

    #[test]
    fn the_load_test_client_is_the_page_of_the_room_it_joins() {
        // docker-jitsi-meet serves jitsi-meet's load-test client at `/_load-test/<room>`; it
        // joins `<room>` (`/xmpp-websocket?room=<room>`), so its page is that room's.
        for (path, key) in [
            ("/_load-test/MyRoom", "myroom"),
            ("/_load-test/myroom/", "myroom"),
            ("/acme/_load-test/Standup", "acme/standup"),
        ] {
            match target(path, None) {
                Ok(Target::Room { key: k, page: true }) => assert_eq!(k.as_str(), key, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(
            key_of("/_load-test/myroom", None),
            key_of("/xmpp-websocket", Some("room=myroom"))
        );
    }

    #[test]
    fn tenant_prefixes_the_key() {
        assert_eq!(key_of("/Acme/Standup", None), "acme/standup");
        assert_eq!(
            key_of("/acme/http-bind", Some("room=standup")),
            "acme/standup"
        );
        assert_eq!(
            key_of("/acme/xmpp-websocket", Some("room=standup")),
            "acme/standup"
        );
        assert_eq!(
            key_of("/acme/_api/room-info", Some("room=standup")),
            "acme/standup"
        );
        assert_ne!(key_of("/acme/standup", None), key_of("/standup", None));
        let key = RoomKey::parse("acme/standup", &RoomLimits::default()).unwrap();
        assert_eq!((key.tenant(), key.room()), (Some("acme"), "standup"));
    }

    #[test]
    fn nfkc_and_unicode_lowercase() {
        // U+FF2D FULLWIDTH M folds to "m" under NFKC; "É" lower-cases to "é".
        assert_eq!(key_of("/%EF%BC%ADeeting", None), "meeting");
        assert_eq!(key_of("/Caf%C3%89", None), "café");
        assert_eq!(key_of("/http-bind", Some("room=caf%C3%A9")), "café");
        // Decomposed e + combining acute composes to the same key.
        assert_eq!(key_of("/cafe%CC%81", None), "café");
    }

    #[test]
    fn reserved_paths_are_not_rooms() {
        for path in [
            "/",
            "",
            "/config.js",
            "/interface_config.js",
            "/external_api.js",
            "/external_api.min.js",
            "/favicon.ico",
            "/manifest.json",
            "/pwa-worker.js",
            "/http-bind",
            "/http-pre-bind",
            "/xmpp-websocket",
            "/conference-request/v1",
            "/about/health",
            "/room",
            "/room-size",
            "/room-password",
            "/_unlock",
            "/static/close.html",
            "/libs/app.bundle.min.js",
            "/css/all.css",
            "/images/watermark.svg",
            "/fonts/x.woff2",
            "/sounds/joined.mp3",
            "/lang/main-de.json",
            "/.well-known/acme-challenge/token",
            "/logging_config.js",
            "/title.html",
            "/acme/libs/app.bundle.min.js",
            "/_api/room-info",
            "/_api/public/logo.png",
            "/connection_optimization/do_external_connect.min.js",
            "/transcripts/standup-2026-12-06",
            "/acme/_api/public/logo.png",
            "/a/b/c",
            "/rtcstats-ws/",
            "/_load-test",
            "/_load-test/",
            "/_load-test/libs/load-test-participant.min.js",
            "/acme/_load-test/libs/load-test-participant.min.js",
            "/acme/_load-test",
        ] {
            assert_eq!(target(path, None), Ok(Target::Unrouted), "{path}");
        }
    }

    #[test]
    fn bridge_channels_carry_a_server_id() {
        assert_eq!(
            target("/colibri-ws/jvb-1/conf123/ep9", Some("pwd=secret")),
            Ok(Target::Bridge { server_id: "jvb-1" })
        );
        assert_eq!(
            target("/colibri-relay-ws/jvb-2/x/y", None),
            Ok(Target::Bridge { server_id: "jvb-2" })
        );
        assert_eq!(
            target("/colibri-ws", None),
            Ok(Target::Bridge { server_id: "" })
        );
    }

    #[test]
    fn limits_and_character_set() {
        let long = "a".repeat(201);
        assert_eq!(
            target(&format!("/{long}"), None),
            Err(RoomError::TooLong {
                chars: 201,
                max: 200
            })
        );
        assert!(target(&format!("/{}", "a".repeat(200)), None).is_ok());
        assert_eq!(
            target("/bad%0Aroom", None),
            Err(RoomError::ControlCharacter)
        );
        assert_eq!(target("/a%2Fb", None), Err(RoomError::Slash));
        assert_eq!(target("/bad%FFroom", None), Err(RoomError::InvalidUtf8));
        assert_eq!(
            target("/http-bind", Some("room=%C0%AF")),
            Err(RoomError::InvalidUtf8)
        );
    }

    #[test]
    fn empty_room_parameter_is_no_room() {
        assert_eq!(target("/http-bind", Some("room=")), Ok(Target::Unrouted));
        assert_eq!(target("/http-bind", Some("rooms=x")), Ok(Target::Unrouted));
    }

    fn encode_all(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    proptest! {
        #[test]
        fn never_panics(path in "\\PC*", query in proptest::option::of("\\PC*")) {
            let _ = classify(&path, query.as_deref(), &RoomLimits::default());
        }

        #[test]
        fn path_and_query_forms_agree(room in "[^/%?#&\\x00-\\x1f\\x7f.]{1,40}") {
            let encoded = encode_all(&room);
            let path = format!("/{encoded}");
            let from_path = classify(&path, None, &RoomLimits::default());
            let query = format!("room={encoded}");
            let from_query = classify("/http-bind", Some(&query), &RoomLimits::default());
            match (from_path, from_query) {
                (Ok(Target::Room { key: a, .. }), Ok(Target::Room { key: b, .. })) => {
                    prop_assert_eq!(a, b)
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "disagree: {:?} vs {:?}", a, b),
            }
        }

        #[test]
        fn case_and_encoding_do_not_matter(room in "[a-zA-Z0-9_-]{1,60}") {
            let plain = key_of(&format!("/{room}"), None);
            prop_assert_eq!(&plain, &room.to_lowercase());
            prop_assert_eq!(&key_of(&format!("/{}", room.to_uppercase()), None), &plain);
            prop_assert_eq!(&key_of(&format!("/{}", encode_all(&room)), None), &plain);
        }

        #[test]
        fn accepted_keys_respect_the_limits(path in "/[^/]{0,250}") {
            if let Ok(Target::Room { key, .. }) =
                classify(&path, None, &RoomLimits::default())
            {
                prop_assert!(key.as_str().chars().count() <= 200);
                prop_assert!(!key.as_str().chars().any(char::is_control));
                prop_assert!(!key.as_str().contains('/'));
            }
        }
    }
}
