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
//! the page's affinity cookie rather than create a pin. Unless a browser opens it as a page
//! ([`Fetch::Document`]): jitsi-meet's nginx serves a name that is no file as a meeting's page, so
//! `/node.js` opened from a link is the meeting "node.js", and its participants must meet on one node.

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
    "_unlock",
];

/// Endpoints of a node's jicofo and prosody modules, when an operator routes them through the
/// node's nginx: jicofo's `/conference-request/v1` and `/about/health`, `mod_muc_size`'s
/// `/room-size` and `/room`. Those that concern a room name it in `room=` and are routed by it.
/// jitsi-meet's nginx reserves none of these names, though, so a lone one without `room=` is a
/// meeting's page like any other name (`/room` is the meeting called "room"); none is a tenant.
const ENDPOINT_NAMES: &[&str] = &[
    "conference-request",
    "about",
    "room",
    "room-size",
    "room-password",
];

/// Folders whose contents are never a room. jitsi-meet's nginx serves them as folders only with
/// the slash after them (`/images/…`); a lone name (`/images`) is a meeting's page there, and
/// here. None is a tenant.
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
    /// The decoded name is `.` or `..`: a dot segment, which browsers resolve before they send a
    /// path and nginx resolves before it serves one, so no room is named so.
    #[error("room name is a dot segment ('.' or '..')")]
    DotSegment,
    /// An explicit key (admin input) was empty.
    #[error("room name is empty")]
    Empty,
}

/// What a request loads, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// A page into a browser window or frame: someone opened a link or typed an address.
    Document,
    /// Anything else: a script, a style sheet, an image, an API call, a non-browser client.
    Resource,
}

/// Classifies a request by its raw (still percent-encoded) path and query, and what it loads.
pub fn classify<'a>(
    path: &'a str,
    query: Option<&'a str>,
    fetch: Fetch,
    limits: &RoomLimits,
) -> Result<Target<'a>, RoomError> {
    let Some((tenant, head, next)) = path_parts(path) else {
        return Ok(Target::Unrouted);
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
    if RESERVED_DIRS.contains(&head) && (next.is_some() || path.ends_with('/')) {
        return Ok(Target::Unrouted);
    }
    let endpoint = ENDPOINT_NAMES.contains(&head)
        && (next.is_some() || query.is_some_and(|query| param(query, "room").is_some()));
    if endpoint
        || RESERVED_NAMES.contains(&head)
        || QUERY_DIRS.contains(&head)
        || (is_static_file(head) && fetch == Fetch::Resource)
    {
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

/// A path's tenant (when it has one), the segment after it and the one after that, with
/// jitsi-meet's load-test folder looked through; `None` for `/`, and for the load-test folder
/// itself.
fn path_parts(path: &str) -> Option<(Option<&str>, &str, Option<&str>)> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let first = segments.next()?;
    let second = segments.next();
    let (first, second) = match first {
        LOAD_TEST => (second?, segments.next()),
        _ => (first, second),
    };
    // jitsi-meet's nginx strips one leading tenant segment: `/<tenant>/<anything>` is `/<anything>`.
    let (tenant, head, next) = match second {
        Some(second) if !is_reserved(first) => (Some(first), second, segments.next()),
        _ => (None, first, second),
    };
    let (head, next) = match (tenant, head) {
        (Some(_), LOAD_TEST) => (next?, segments.next()),
        _ => (head, next),
    };
    Some((tenant, head, next))
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
        || ENDPOINT_NAMES.contains(&segment)
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
    if text == "." || text == ".." {
        return Err(RoomError::DotSegment);
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
