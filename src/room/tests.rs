use super::*;
use proptest::prelude::*;

fn target(path: &str, query: Option<&str>) -> Result<Target<'static>, RoomError> {
    let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
    let query = query.map(|q| &*Box::leak(q.to_owned().into_boxed_str()));
    classify(path, query, Fetch::Resource, &RoomLimits::default())
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
        ("/room-size", Some("room=myroom&domain=meet.jitsi")),
        ("/room", Some("room=myroom")),
    ] {
        assert_eq!(key_of(path, query), "myroom", "{path} {query:?}");
    }
}

#[test]
fn endpoint_names_without_a_room_query_are_meeting_pages() {
    // jitsi-meet's nginx serves `/room`, `/about` and `/images` as the pages of meetings of
    // those names.
    for (path, query, key) in [
        ("/room", None, "room"),
        ("/Room", Some("jwt=x"), "room"),
        ("/about", None, "about"),
        ("/images", None, "images"),
        ("/acme/sounds", None, "acme/sounds"),
        ("/acme/room-size", None, "acme/room-size"),
    ] {
        assert!(
            matches!(target(path, query), Ok(Target::Room { page: true, .. })),
            "{path}"
        );
        assert_eq!(key_of(path, query), key, "{path}");
    }
    // Below them, nothing is a page, and they are no tenant.
    assert_eq!(target("/about/health", None), Ok(Target::Unrouted));
    assert_eq!(target("/room/standup", None), Ok(Target::Unrouted));
    assert_eq!(target("/images/", None), Ok(Target::Unrouted));
    assert_eq!(target("/images/logo.svg", None), Ok(Target::Unrouted));
}

#[test]
fn a_name_like_a_file_is_a_meeting_only_when_opened_as_a_page() {
    let page = |path: &'static str| classify(path, None, Fetch::Document, &RoomLimits::default());
    for (path, key) in [
        ("/Node.js", "node.js"),
        ("/acme/notes.txt", "acme/notes.txt"),
    ] {
        assert!(
            matches!(page(path), Ok(Target::Room { page: true, .. })),
            "{path}"
        );
        assert_eq!(target(path, None), Ok(Target::Unrouted), "{path}");
        let Ok(Target::Room { key: got, .. }) = page(path) else {
            unreachable!()
        };
        assert_eq!(got.as_str(), key);
    }
    // Reserved names and folders stay what they are, however they are opened.
    for path in ["/config.js", "/libs/app.bundle.min.js", "/http-bind"] {
        assert_eq!(page(path), Ok(Target::Unrouted), "{path}");
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
    for dots in ["/..", "/.", "/%2e%2E", "/./myroom", "/myroom/.."] {
        assert_eq!(target(dots, None), Err(RoomError::DotSegment), "{dots}");
    }
    let dots = target("/http-bind", Some("room=.."));
    assert_eq!(dots, Err(RoomError::DotSegment));
    assert!(target("/...", None).is_ok());
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
        for fetch in [Fetch::Document, Fetch::Resource] {
            let _ = classify(&path, query.as_deref(), fetch, &RoomLimits::default());
        }
    }

    #[test]
    fn path_and_query_forms_agree(room in "[^/%?#&\\x00-\\x1f\\x7f.]{1,40}") {
        let encoded = encode_all(&room);
        let path = format!("/{encoded}");
        let from_path = classify(&path, None, Fetch::Resource, &RoomLimits::default());
        let query = format!("room={encoded}");
        let from_query = classify("/http-bind", Some(&query), Fetch::Resource, &RoomLimits::default());
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
            classify(&path, None, Fetch::Resource, &RoomLimits::default())
        {
            prop_assert!(key.as_str().chars().count() <= 200);
            prop_assert!(!key.as_str().chars().any(char::is_control));
            prop_assert!(!key.as_str().contains('/'));
        }
    }
}
