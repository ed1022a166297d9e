//! The shop's payment service, as the checkout scenario plays it: `POST
//! /payments/confirm` signed the way payment providers sign webhooks, the header
//! `Flashsale-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`
//! under the server's `payments.webhook_secret`. A confirmation whose fate is open
//! (`409 order_pending`, `429`, `5xx`, no answer) is sent again with the same
//! `paymentId`, which the server answers like the first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::time::Instant;

use super::buyer::Shared;

/// The header a confirmation's signature travels in.
pub const SIGNATURE_HEADER: &str = "Flashsale-Signature";

/// The signature (`v1`): lowercase hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The value of [`SIGNATURE_HEADER`] for `body` signed at `t` (unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// How a payment's confirmation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Confirmed {
    /// `200`: the order is paid.
    Paid,
    /// `409 payment_window_closed`: it expired first (the shop refunds).
    WindowClosed,
    /// Another final answer (its label): `401`, `404`, `409 amount_mismatch`…
    Refused(String),
    /// Still open at the run's deadline; `maybe_paid` when a confirmation may have
    /// reached the server (a 5xx or no answer), so that nobody knows whether it paid.
    Unanswered { maybe_paid: bool },
}

/// One answer to a confirmation.
struct Answer {
    /// `None`: no HTTP answer.
    status: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Answer {
    /// The report's name for it: `200`, `409 order_pending`, `503`, `error`…
    fn label(&self) -> String {
        match (self.status, &self.error) {
            (None, _) => "error".into(),
            (Some(s), Some(e)) if (400..500).contains(&s) => format!("{s} {e}"),
            (Some(s), _) => s.to_string(),
        }
    }
}

/// Sends one confirmation of `body`, signed now.
async fn send(shared: &Shared, secret: &[u8], body: &[u8]) -> Answer {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let sent = shared
        .target
        .client
        .post(format!("{}/payments/confirm", shared.target.public))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, t, body))
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Err(_) => Answer {
            status: None,
            error: None,
            retry_after: None,
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = crate::retry_after(r.headers());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Answer {
                status: Some(status),
                error: body["error"].as_str().map(str::to_string),
                retry_after,
            }
        }
    }
}

/// Confirms that `order` was paid `amount_cents`, under a new payment id, until the
/// answer is final or the run's deadline passes (backing off from 100 ms to 2 s, or as
/// `Retry-After` says). Each request's answer and latency (µs, from its sending) go to
/// `answers`.
pub(super) async fn confirm(
    shared: &Shared,
    answers: &mut Vec<(String, u64)>,
    order: &str,
    amount_cents: i64,
) -> Confirmed {
    let payment = format!("pay-{}", uuid::Uuid::new_v4().simple());
    let body = json!({"orderId": order, "paymentId": payment, "amountCents": amount_cents});
    let body = serde_json::to_vec(&body).expect("JSON");
    let secret = shared.payment_secret.as_bytes();
    let mut backoff = Duration::from_millis(100);
    let mut maybe_paid = false;
    loop {
        let answered = tokio::time::timeout_at(shared.hard_deadline, async {
            let _permit = shared.permits.acquire().await.expect("never closed");
            let sent = Instant::now();
            let answer = send(shared, secret, &body).await;
            (answer, sent.elapsed())
        })
        .await;
        let Ok((answer, latency)) = answered else {
            // Cut off in flight: it may have reached the server.
            return Confirmed::Unanswered { maybe_paid: true };
        };
        answers.push((answer.label(), latency.as_micros() as u64));
        match (answer.status, answer.error.as_deref()) {
            (Some(200), _) => return Confirmed::Paid,
            (Some(409), Some("payment_window_closed")) => return Confirmed::WindowClosed,
            (Some(409), Some("order_pending")) | (Some(429), _) => {}
            (Some(s), _) if s >= 500 => maybe_paid = true,
            (None, _) => maybe_paid = true,
            (Some(_), _) => return Confirmed::Refused(answer.label()),
        }
        let wait = answer.retry_after.unwrap_or(backoff);
        if Instant::now() + wait >= shared.hard_deadline {
            return Confirmed::Unanswered { maybe_paid };
        }
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed apart from this code:
    //   printf '%s' '1767225600.{"amountCents":999,"orderId":"0194f3a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e","paymentId":"pay-1"}' \
    //     | openssl dgst -sha256 -hmac 'whsec-load-test-0123456789abcdef0123'
    const SECRET: &str = "whsec-load-test-0123456789abcdef0123";
    const T: u64 = 1_767_225_600;
    const BODY: &str = r#"{"amountCents":999,"orderId":"0194f3a2-7c1e-7b3a-9d2e-5f6a7b8c9d0e","paymentId":"pay-1"}"#;
    const V1: &str = "a50b0e6f56719f61393171bbcd98964bb532053057f7f4df2ae33dab2ae5b85a";

    #[test]
    fn the_signature_is_the_hmac_of_the_time_and_the_raw_body() {
        assert_eq!(sign(SECRET.as_bytes(), T, BODY.as_bytes()), V1);
    }

    #[test]
    fn the_header_names_the_time_then_the_signature() {
        assert_eq!(
            signature(SECRET.as_bytes(), T, BODY.as_bytes()),
            format!("t=1767225600,v1={V1}")
        );
    }

    #[test]
    fn the_signature_covers_every_byte_of_the_body_and_the_time() {
        let spaced = BODY.replace(':', ": ");
        assert_ne!(sign(SECRET.as_bytes(), T, spaced.as_bytes()), V1);
        assert_ne!(sign(SECRET.as_bytes(), T + 1, BODY.as_bytes()), V1);
        assert_ne!(
            sign(b"another-secret-0123456789abcdef0123", T, BODY.as_bytes()),
            V1
        );
    }

    #[test]
    fn answers_are_named_by_status_and_error_code() {
        let answer = |status, error: Option<&str>| Answer {
            status,
            error: error.map(str::to_string),
            retry_after: None,
        };
        assert_eq!(answer(Some(200), None).label(), "200");
        assert_eq!(
            answer(Some(409), Some("order_pending")).label(),
            "409 order_pending"
        );
        assert_eq!(
            answer(Some(401), Some("invalid_signature")).label(),
            "401 invalid_signature"
        );
        assert_eq!(answer(Some(503), Some("unavailable")).label(), "503");
        assert_eq!(answer(None, None).label(), "error");
    }
}
