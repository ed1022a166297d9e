//! `POST /payments/confirm`: the shop's payment service confirms that an order was
//! paid. The request is signed the way payment providers sign their webhooks:
//!
//! ```text
//! Flashsale-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
//! ```
//!
//! The signature covers the exact bytes received, so the body is checked before it is
//! parsed; `t` must be within `payments.signature_tolerance_secs` of this server's
//! clock (a captured request cannot be replayed later), and several `v1` values may
//! be given while a secret is being rotated. Without `payments.webhook_secret` the
//! endpoint does not exist (`404`).

use actix_web::{web, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::error::ApiError;
use super::{parse_json, read_body, resource, AppState};
use crate::domain::{AmountCents, OrderId, PaymentId};
use crate::orders::payment::{self, Paid, Payment};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/payments/confirm").post(confirm));
}

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Flashsale-Signature";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Confirmation {
    order_id: String,
    payment_id: String,
    amount_cents: i64,
}

#[tracing::instrument(skip_all, fields(order_id))]
async fn confirm(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let payments = &state.settings.payments;
    let Some(secret) = &payments.webhook_secret else {
        return Err(ApiError::NotFound);
    };
    let body = read_body(payload, &state.settings.http).await?;
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now = crate::domain::now_ms() / 1000;
    let verdict = verify(
        secret.expose().as_bytes(),
        header,
        &body,
        now,
        payments.signature_tolerance_secs,
    );
    if let Err(why) = verdict {
        metrics::counter!("flashsale_payments_total", "outcome" => "invalid_signature")
            .increment(1);
        tracing::warn!(
            why = why.as_str(),
            "payment confirmation refused: bad signature"
        );
        return Err(ApiError::InvalidSignature);
    }
    let body: Confirmation = parse_json(&body)?;
    let invalid = |e: crate::domain::ParseError| ApiError::InvalidRequest(e.0);
    let order = OrderId::parse(&body.order_id).map_err(invalid)?;
    tracing::Span::current().record("order_id", tracing::field::display(&order));
    let payment = Payment {
        order,
        payment: PaymentId::parse(&body.payment_id).map_err(invalid)?,
        amount: AmountCents::try_from(body.amount_cents).map_err(invalid)?,
    };
    let payment_id = payment.payment.clone();
    let Paid { order, repeat } = payment::confirm(&state.directory, payment).await?;
    if !repeat {
        tracing::info!("order paid");
    }
    Ok(HttpResponse::Ok().json(json!({
        "orderId": order.order_id,
        "status": order.status,
        "paymentId": payment_id.as_str(),
    })))
}

/// Why a signature was refused (for the log; the client only hears that it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSignature {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

impl BadSignature {
    pub fn as_str(self) -> &'static str {
        match self {
            BadSignature::Missing => "no Flashsale-Signature header",
            BadSignature::Malformed => "the header is not t=<seconds>,v1=<hex>",
            BadSignature::Stale => "t is too far from now",
            BadSignature::Mismatch => "no v1 matches the body",
        }
    }
}

/// The `v1` signature of `body` sent at `t`: hex HMAC-SHA256 over `"<t>.<body>"`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, t, body).finalize().into_bytes())
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a `Flashsale-Signature` header against the raw body at `now` (unix
/// seconds). The comparison takes the same time whatever the signature's bytes.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), BadSignature> {
    let header = header.ok_or(BadSignature::Missing)?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| BadSignature::Malformed)?),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| BadSignature::Malformed)?)
            }
            // Other schemes (a later version) are for other readers.
            Some(_) => {}
            None => return Err(BadSignature::Malformed),
        }
    }
    let t = t.ok_or(BadSignature::Malformed)?;
    if signatures.is_empty() {
        return Err(BadSignature::Malformed);
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(BadSignature::Stale);
    }
    // `verify_slice` compares in constant time.
    let matches = signatures
        .iter()
        .any(|s| mac(secret, t, body).verify_slice(s).is_ok());
    match matches {
        true => Ok(()),
        false => Err(BadSignature::Mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef0123456789abcdef";
    const BODY: &[u8] = br#"{"orderId":"0190d1b2-0000-7000-8000-000000000001","paymentId":"pay_1","amountCents":2500}"#;

    /// The same value as `printf '%s' "1790000000.$BODY" | openssl dgst -sha256 -hmac
    /// "$SECRET"`: the signature is the documented HMAC, not one of our own making.
    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        assert_eq!(
            sign(SECRET, 1_790_000_000, BODY),
            "a16d61b61bfe66e076b7de0ac56361265e7b513caaaeb3c82f0afe0be423ea5d"
        );
    }

    #[test]
    fn a_header_is_checked_for_form_age_and_value() {
        let t = 1_790_000_000;
        let good = format!("t={t},v1={}", sign(SECRET, t, BODY));
        assert_eq!(verify(SECRET, Some(&good), BODY, t, 300), Ok(()));
        assert_eq!(verify(SECRET, Some(&good), BODY, t + 300, 300), Ok(()));
        assert_eq!(
            verify(SECRET, Some(&good), BODY, t + 301, 300),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify(SECRET, Some(&good), BODY, t - 301, 300),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify(
                b"another secret of the same kind, long",
                Some(&good),
                BODY,
                t,
                300
            ),
            Err(BadSignature::Mismatch)
        );
        let altered = br#"{"orderId":"0190d1b2-0000-7000-8000-000000000001","paymentId":"pay_1","amountCents":1}"#;
        assert_eq!(
            verify(SECRET, Some(&good), altered, t, 300),
            Err(BadSignature::Mismatch)
        );
        // Rotating a secret: any v1 may match.
        let both = format!("t={t},v1={},v1={}", "00".repeat(32), sign(SECRET, t, BODY));
        assert_eq!(verify(SECRET, Some(&both), BODY, t, 300), Ok(()));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(SECRET, Some(bad), BODY, t, 300),
                Err(BadSignature::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify(SECRET, None, BODY, t, 300),
            Err(BadSignature::Missing)
        );
    }
}
