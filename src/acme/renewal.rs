//! When the served certificate is renewed.
//!
//! An ACME server that offers renewal information (ARI, RFC 9773) suggests a window for each
//! certificate: the router renews at a uniformly random time inside it (at once if the window
//! has begun), asks again when the server's `Retry-After` says (held between a minute and a
//! day, as the RFC advises), and names the certificate it replaces in the new order, which Let's
//! Encrypt exempts from its rate limits. A server can so move a renewal earlier, for instance
//! before revoking certificates. A server without ARI, or an answer that cannot be used, gets
//! the fallback: renewal at two thirds of the lifetime.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier, Identifier, NewOrder, Order, RenewalInfo};
use rustls::pki_types::CertificateDer;

use super::Issuer;
use crate::tls::{RenewalPlan, Validity};

/// The shortest and longest wait before asking for a certificate's window again.
const ASK_AGAIN: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(86_400));

/// The wait before asking again after the server's answer could not be had or used.
const ASK_AGAIN_AFTER_ERROR: Duration = Duration::from_secs(3600);

impl Issuer {
    /// Waits until the served certificate is due for renewal (at once without one), asking
    /// the server for its window again when it says, or until a renewal is asked for.
    pub(super) async fn until_renewal(&self) {
        let mut pick = None;
        loop {
            let (plan, ask_again) = self.plan_renewal(&mut pick).await;
            if self.certs.renewal_plan() != Some(plan) {
                let at = humantime::format_rfc3339_seconds(plan.at);
                tracing::info!(%at, by = plan.by, "acme: renewal planned");
                self.certs.plan_renewal(Some(plan));
            }
            let due = (plan.at.duration_since(SystemTime::now())).unwrap_or_default();
            if due.is_zero() {
                return;
            }
            let nap = ask_again.map_or(due, |again| again.min(due));
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = self.certs.renewal_requested() => {
                    tracing::info!("acme: renewal asked for");
                    return;
                }
            }
        }
    }

    /// When to renew the served certificate, and when to ask the server again (`None`: no
    /// need, it offers no renewal information).
    async fn plan_renewal(&self, pick: &mut Option<Pick>) -> (RenewalPlan, Option<Duration>) {
        let Some((leaf, validity)) = self.certs.leaf() else {
            let now = RenewalPlan {
                at: SystemTime::now(),
                by: "lifetime",
            };
            return (now, None);
        };
        let fallback = RenewalPlan {
            at: two_thirds(validity),
            by: "lifetime",
        };
        let Some(id) = certificate_id(&leaf) else {
            return (fallback, None);
        };
        let account = match self.account(false).await {
            Ok(account) => account,
            Err(e) => {
                tracing::warn!(error = %e, "acme: renewal information not asked for");
                return (fallback, Some(ASK_AGAIN_AFTER_ERROR));
            }
        };
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => match in_window(&info, pick) {
                Some(at) => {
                    let at = at.min(validity.not_after);
                    (RenewalPlan { at, by: "ari" }, Some(ask_again(retry_after)))
                }
                None => {
                    tracing::warn!(window = ?info.suggested_window, "acme: the suggested renewal window ends before it starts; renewing by the lifetime");
                    (fallback, Some(ASK_AGAIN_AFTER_ERROR))
                }
            },
            Err(instant_acme::Error::Unsupported(_)) => (fallback, None),
            Err(e) => {
                tracing::warn!(error = %e, "acme: no renewal information; renewing by the lifetime");
                (fallback, Some(ASK_AGAIN_AFTER_ERROR))
            }
        }
    }

    /// A new order for the domains: one replacing the served certificate when the server
    /// offers renewal information, else (or if the server will not take it as one) a plain one.
    pub(super) async fn new_order(
        &self,
        account: &Account,
        identifiers: &[Identifier],
    ) -> Result<Order, instant_acme::Error> {
        let replaces = (self.certs.leaf()).and_then(|(leaf, _)| certificate_id(&leaf));
        if let Some(id) = replaces {
            match account
                .new_order(&NewOrder::new(identifiers).replaces(id))
                .await
            {
                Ok(order) => return Ok(order),
                Err(instant_acme::Error::Unsupported(_)) => {}
                Err(e) => {
                    tracing::info!(error = %e, "acme: the order as a replacement was not taken; ordering anew");
                }
            }
        }
        account.new_order(&NewOrder::new(identifiers)).await
    }
}

/// The ARI identifier of a certificate: its authority key identifier and serial number.
/// `None` for a certificate without an authority key identifier (no ARI for it).
fn certificate_id(leaf: &CertificateDer<'_>) -> Option<CertificateIdentifier<'static>> {
    (CertificateIdentifier::try_from(leaf).ok()).map(CertificateIdentifier::into_owned)
}

/// Two thirds through the validity: the renewal time without ARI.
fn two_thirds(v: Validity) -> SystemTime {
    let life = (v.not_after.duration_since(v.not_before)).unwrap_or_default();
    v.not_before + life * 2 / 3
}

/// The wait before asking again, from the server's `Retry-After`.
fn ask_again(retry_after: Duration) -> Duration {
    retry_after.clamp(ASK_AGAIN.0, ASK_AGAIN.1)
}

/// The time drawn in a suggested window, kept while the server suggests the same window so
/// that asking again does not draw again (each draw would pull the renewal earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pick {
    start: SystemTime,
    end: SystemTime,
    at: SystemTime,
}

/// The renewal time in the server's suggested window: the last pick while the window is the
/// same, else a new uniformly random time in it. `None` for a window that ends before it
/// starts, which the RFC says to treat as no answer.
fn in_window(info: &RenewalInfo, last: &mut Option<Pick>) -> Option<SystemTime> {
    let start = SystemTime::from(info.suggested_window.start);
    let end = SystemTime::from(info.suggested_window.end);
    let span = end.duration_since(start).ok().filter(|s| !s.is_zero())?;
    if let Some(pick) = last.filter(|p| p.start == start && p.end == end) {
        return Some(pick.at);
    }
    let at = start + span.mul_f64(random_fraction());
    *last = Some(Pick { start, end, at });
    Some(at)
}

/// A number in [0, 1), different in every process and call: jitter, not cryptography.
pub(super) fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str) -> RenewalInfo {
        let text = format!(r#"{{"suggestedWindow": {{"start": "{start}", "end": "{end}"}}}}"#);
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_pick_falls_in_the_window_and_stays_while_the_window_does() {
        let info = window("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z");
        let mut last = None;
        let at = in_window(&info, &mut last).unwrap();
        let start = SystemTime::from(info.suggested_window.start);
        let end = SystemTime::from(info.suggested_window.end);
        assert!(start <= at && at < end, "{at:?}");
        for _ in 0..10 {
            assert_eq!(in_window(&info, &mut last), Some(at));
        }
        let earlier = window("2026-11-01T00:00:00Z", "2026-11-01T01:00:00Z");
        let moved = in_window(&earlier, &mut last).unwrap();
        assert!(moved < SystemTime::from(earlier.suggested_window.end));
        assert!(moved >= SystemTime::from(earlier.suggested_window.start));
    }

    #[test]
    fn picks_spread_over_the_window() {
        let info = window("2026-12-01T00:00:00Z", "2026-12-01T00:16:40Z");
        let start = SystemTime::from(info.suggested_window.start);
        let halves = (0..200)
            .map(|_| in_window(&info, &mut None).unwrap())
            .filter(|at| at.duration_since(start).unwrap() < Duration::from_secs(500))
            .count();
        assert!(
            (50..150).contains(&halves),
            "{halves} of 200 in the first half"
        );
    }

    #[test]
    fn a_window_ending_before_it_starts_is_no_answer() {
        let backwards = window("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z");
        assert_eq!(in_window(&backwards, &mut None), None);
        let empty = window("2026-12-02T00:00:00Z", "2026-12-02T00:00:00Z");
        assert_eq!(in_window(&empty, &mut None), None);
    }

    #[test]
    fn the_server_is_asked_again_between_a_minute_and_a_day_later() {
        assert_eq!(ask_again(Duration::ZERO), Duration::from_secs(60));
        assert_eq!(
            ask_again(Duration::from_secs(21_600)),
            Duration::from_secs(21_600)
        );
        assert_eq!(
            ask_again(Duration::from_secs(10 << 20)),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn without_ari_renewal_is_two_thirds_through_the_lifetime() {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let v = Validity {
            not_before,
            not_after: not_before + Duration::from_secs(90),
        };
        assert_eq!(two_thirds(v), not_before + Duration::from_secs(60));
    }
}
