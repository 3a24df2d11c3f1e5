//! The tests' XMPP participants: the `bench` subcommand's own client
//! (`jitsi_router::bench::xmpp`), logging in on the demo prosody's `meet.jitsi` and joining
//! `<room>@muc.meet.jitsi` through a test router, over WebSocket or BOSH.

use std::time::Duration;

use jitsi_router::bench::xmpp::Endpoint;
use jitsi_router::demo::prosody::{DOMAIN, MUC};

pub use jitsi_router::bench::xmpp::{Participant, Transport};

use super::{Certs, Router};

/// Connects through `router`, logs in anonymously and joins `room` as `nick`. In redirect
/// mode the `307` is followed to the node, as a browser would.
pub async fn join(
    router: &Router,
    certs: &Certs,
    transport: Transport,
    room: &str,
    nick: &str,
) -> Result<Participant, String> {
    let endpoint = Endpoint {
        base: format!("https://127.0.0.1:{}", router.https.port()),
        tls: certs.client_config(),
        http: router.client(),
        domain: DOMAIN.into(),
        muc: MUC.into(),
        step: Duration::from_secs(20),
    };
    let mut participant = Participant::connect(&endpoint, transport, room, nick).await?;
    participant.join().await?;
    Ok(participant)
}
