//! The periodic sweeps: idle pooled upstream connections closed, idle pins forgotten.

use std::sync::Arc;
use std::time::Duration;

use crate::placement::Router;
use crate::proxy::Proxy;

/// Runs `sweep` every half of `idle` (between 0.1 s and a minute), so that nothing stays more
/// than half as long again as its idle timeout.
async fn every_half(idle: Duration, mut sweep: impl FnMut()) {
    let period = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        sweep();
    }
}

pub(super) async fn close_idle_connections(proxy: Arc<Proxy>, idle: Duration) {
    every_half(idle, || {
        let closed = proxy.close_idle_connections();
        if closed > 0 {
            tracing::debug!(closed, "idle upstream connections closed");
        }
    })
    .await;
}

pub(super) async fn sweep_pins(router: Arc<Router>, idle: Duration) {
    every_half(idle, || {
        let dropped = router.sweep();
        if dropped > 0 {
            tracing::debug!(
                dropped,
                remaining = router.pins().len(),
                "idle pins forgotten"
            );
        }
    })
    .await;
}
