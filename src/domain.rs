//! Domain types. Each is built only through a fallible parse, so handlers turn raw
//! request parts into these before any actor sees them.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn invalid(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// A catalog product id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64")]
pub struct ProductId(i64);

impl TryFrom<i64> for ProductId {
    type Error = ParseError;
    fn try_from(n: i64) -> Result<Self, ParseError> {
        match n {
            1.. => Ok(Self(n)),
            _ => Err(invalid("product id must be a positive integer")),
        }
    }
}

impl ProductId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.parse::<i64>() {
            Ok(n) if n > 0 && !raw.starts_with('+') => Ok(Self(n)),
            _ => Err(invalid("product id must be a positive integer")),
        }
    }
    pub fn from_db(n: i64) -> Self {
        Self(n)
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user id: a UUID in its lowercase hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct UserId(String);

impl From<uuid::Uuid> for UserId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id.to_string())
    }
}

impl TryFrom<String> for UserId {
    type Error = ParseError;
    fn try_from(raw: String) -> Result<Self, ParseError> {
        Self::parse(&raw)
    }
}

impl UserId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        uuid::Uuid::parse_str(raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| invalid("user id must be a UUID"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order id: a time-ordered UUID (v7), so shard indexes grow at the end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct OrderId(String);

impl From<uuid::Uuid> for OrderId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id.to_string())
    }
}

impl TryFrom<String> for OrderId {
    type Error = ParseError;
    fn try_from(raw: String) -> Result<Self, ParseError> {
        Self::parse(&raw)
    }
}

impl OrderId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        uuid::Uuid::parse_str(raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| invalid("order id must be a UUID"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client's `Idempotency-Key`: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct IdempotencyKey(String);

impl TryFrom<String> for IdempotencyKey {
    type Error = ParseError;
    fn try_from(raw: String) -> Result<Self, ParseError> {
        Self::parse(&raw)
    }
}

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 128 {
            return Err(invalid("Idempotency-Key must be 1 to 128 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("Idempotency-Key must be visible ASCII characters"));
        }
        Ok(Self(raw.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A payment's id as the shop's payment service names it: 1 to 128 visible ASCII
/// characters. A repeat of one confirmation carries the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaymentId(String);

impl PaymentId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let fits = (1..=128).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        match fits {
            true => Ok(Self(raw.to_string())),
            false => Err(invalid(
                "paymentId must be 1 to 128 visible ASCII characters",
            )),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units in one order: 1 up to the configured maximum when a buyer asks; read back
/// from a queue or a store, anything an order could have had (up to `i32::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64")]
pub struct Quantity(u32);

impl TryFrom<i64> for Quantity {
    type Error = ParseError;
    fn try_from(n: i64) -> Result<Self, ParseError> {
        Self::parse(n, Self::MOST)
    }
}

impl Quantity {
    pub const ONE: Quantity = Quantity(1);
    /// The most units any order can carry, whatever the settings.
    pub const MOST: u32 = i32::MAX as u32;

    pub fn parse(raw: i64, max: u32) -> Result<Self, ParseError> {
        if raw >= 1 && raw <= i64::from(max) {
            Ok(Self(raw as u32))
        } else {
            Err(invalid(format!(
                "quantity must be an integer from 1 to {max}"
            )))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
    /// As the stores count units.
    pub fn units(self) -> i64 {
        i64::from(self.0)
    }
}

/// A normalised e-mail address (trimmed, lowercase), loosely checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim().to_ascii_lowercase();
        let valid = s.len() <= 254
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && s.matches('@').count() == 1;
        if valid {
            Ok(Self(s))
        } else {
            Err(invalid("email must be a valid e-mail address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as given at registration: 8 to 128 characters.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let n = raw.chars().count();
        if (8..=128).contains(&n) {
            Ok(Self(raw.to_string()))
        } else {
            Err(invalid("password must be 8 to 128 characters"))
        }
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(****)")
    }
}

/// A product name: 1 to 200 characters, trimmed.
#[derive(Debug, Clone)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 200 {
            Err(invalid("name must be 1 to 200 characters"))
        } else {
            Ok(Self(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Milliseconds since the Unix epoch, the one clock every backend stores.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text (UTC, milliseconds) of an epoch-millisecond instant.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses RFC 3339 text into epoch milliseconds.
pub fn parse_rfc3339(raw: &str) -> Result<i64, ParseError> {
    humantime::parse_rfc3339_weak(raw)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| invalid(format!("{raw:?} is not an RFC 3339 time")))
}

/// A flash sale as an operator defines it, with the terms its orders are accepted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleDefinition {
    pub stock: i64,
    pub per_user_limit: i64,
    /// Epoch milliseconds; `None` is unbounded.
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    /// How long a buyer has to pay; `None`: the sale has no payment step.
    pub payment_window: Option<PaymentWindow>,
    /// The product's price, which orders record as they are accepted.
    pub unit_price_cents: i64,
}

/// How long a buyer has to pay for a sold unit: 1 s to a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct PaymentWindow(u32);

impl TryFrom<i64> for PaymentWindow {
    type Error = ParseError;
    fn try_from(secs: i64) -> Result<Self, ParseError> {
        match secs {
            1..=Self::MOST_SECS => Ok(Self(secs as u32)),
            _ => Err(invalid(format!(
                "paymentWindowSecs must be an integer from 1 to {}",
                Self::MOST_SECS
            ))),
        }
    }
}

impl From<PaymentWindow> for i64 {
    fn from(w: PaymentWindow) -> i64 {
        i64::from(w.0)
    }
}

impl PaymentWindow {
    pub const MOST_SECS: i64 = 86_400;

    pub fn secs(self) -> i64 {
        i64::from(self.0)
    }
    pub fn millis(self) -> i64 {
        self.secs() * 1000
    }
    /// As a store keeps it: 0 for no window.
    pub fn from_stored(secs: i64) -> Option<Self> {
        Self::try_from(secs).ok()
    }
    pub fn stored(window: Option<Self>) -> i64 {
        window.map_or(0, Self::secs)
    }
}

/// What an order is accepted on: read from its sale in the same atomic step that
/// reserves its units, so a later repricing or a changed window does not touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub unit_price_cents: i64,
    pub payment_window: Option<PaymentWindow>,
}

/// Where an order is in its life: `pending` until its shard has it, then
/// `awaiting_payment` when its sale has a payment window (until it is paid and
/// `completed`, or lapses and is `expired`), else `completed`; a completed order may
/// be `cancelled` by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    AwaitingPayment,
    Completed,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    /// A stored status; anything else is corrupt data, never silently `pending`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "pending" => Ok(OrderStatus::Pending),
            "awaiting_payment" => Ok(OrderStatus::AwaitingPayment),
            "completed" => Ok(OrderStatus::Completed),
            "cancelled" => Ok(OrderStatus::Cancelled),
            "expired" => Ok(OrderStatus::Expired),
            other => Err(ParseError(format!("unknown order status {other:?}"))),
        }
    }

    /// Whether its units are back in the sale (or on their way there).
    pub fn returned(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Expired)
    }
}

/// An accepted order as the queue carries it and the shard stores it. Reading one
/// parses every field as the API does; a message that does not read is no order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderMessage {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub idempotency_key: IdempotencyKey,
    #[serde(deserialize_with = "positive_time")]
    pub created_at: i64,
    /// What it costs: its units at the price its sale had when it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<AmountCents>,
    /// How long its buyer has to pay once it is in its shard; none: no payment step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_window_secs: Option<PaymentWindow>,
    /// The W3C trace context of the request that accepted the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An amount of money in cents: never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct AmountCents(i64);

impl TryFrom<i64> for AmountCents {
    type Error = ParseError;
    fn try_from(n: i64) -> Result<Self, ParseError> {
        match n {
            0.. => Ok(Self(n)),
            _ => Err(invalid("amountCents must be a non-negative integer")),
        }
    }
}

impl From<AmountCents> for i64 {
    fn from(a: AmountCents) -> i64 {
        a.0
    }
}

impl AmountCents {
    /// `quantity` units at `unit_price_cents` each; `None` past what a count can hold.
    pub fn of(quantity: Quantity, unit_price_cents: i64) -> Option<Self> {
        unit_price_cents
            .checked_mul(quantity.units())
            .and_then(|n| Self::try_from(n).ok())
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

fn positive_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match i64::deserialize(d)? {
        ms @ 1.. => Ok(ms),
        _ => Err(serde::de::Error::custom(
            "createdAt must be a positive time (epoch ms)",
        )),
    }
}

/// A persisted order of a sale as a rebuild of the inventory counts it: sold, or
/// cancelled, whose units are back in the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoldOrder {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub quantity: Quantity,
    pub idempotency_key: IdempotencyKey,
    /// Cancelled or expired: counted as returned, never restocked again.
    pub cancelled: bool,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub status: OrderStatus,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<AmountCents>,
    /// When its payment is due (orders of a sale with a payment window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<String>,
}

impl OrderView {
    pub fn new(order: &OrderMessage, status: OrderStatus) -> Self {
        Self {
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            product_id: order.product_id,
            quantity: order.quantity,
            status,
            created_at: rfc3339(order.created_at),
            amount_cents: order.amount_cents,
            pay_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_ids_are_positive_integers() {
        assert_eq!(ProductId::parse("42").unwrap().get(), 42);
        for bad in ["0", "-1", "abc", "", "1.5", "+3", "99999999999999999999"] {
            assert!(ProductId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_128() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("naïve").is_err());
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(Quantity::parse(3, 10).unwrap().get(), 3);
        assert!(Quantity::parse(0, 10).is_err());
        assert!(Quantity::parse(11, 10).is_err());
        assert!(Quantity::parse(-2, 10).is_err());
    }

    #[test]
    fn queued_orders_read_through_the_same_parsing_as_requests() {
        let order = OrderMessage {
            order_id: OrderId::generate(),
            user_id: UserId::new_random(),
            product_id: ProductId::parse("7").unwrap(),
            quantity: Quantity::ONE,
            idempotency_key: IdempotencyKey::parse("k-1").unwrap(),
            created_at: 1_790_000_000_000,
            amount_cents: AmountCents::of(Quantity::ONE, 2_500),
            payment_window_secs: Some(PaymentWindow::try_from(300).unwrap()),
            traceparent: None,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["productId"], 7);
        assert_eq!(json["quantity"], 1);
        assert_eq!(
            serde_json::from_value::<OrderMessage>(json.clone()).unwrap(),
            order
        );
        let spoilt = [
            (
                "orderId",
                serde_json::json!("not-a-uuid"),
                "order id must be a UUID",
            ),
            ("userId", serde_json::json!("x"), "user id must be a UUID"),
            (
                "productId",
                serde_json::json!(0),
                "product id must be a positive integer",
            ),
            (
                "quantity",
                serde_json::json!(0),
                "quantity must be an integer from 1",
            ),
            (
                "idempotencyKey",
                serde_json::json!("has space"),
                "visible ASCII",
            ),
            ("createdAt", serde_json::json!(-5), "positive time"),
            ("amountCents", serde_json::json!(-1), "non-negative"),
            ("paymentWindowSecs", serde_json::json!(0), "from 1 to 86400"),
        ];
        for (field, value, why) in spoilt {
            let mut bad = json.clone();
            bad[field] = value;
            let e = serde_json::from_value::<OrderMessage>(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{field}: {e}");
        }
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "", "ann", "ann@", "@x.io", "a@b", "a b@c.io", "a@@c.io", "a@.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_have_bounds_and_never_print() {
        assert!(Password::parse("short").is_err());
        let p = Password::parse("long enough").unwrap();
        assert_eq!(format!("{p:?}"), "Password(****)");
    }

    #[test]
    fn ids_are_uuids() {
        assert!(UserId::parse("not-a-uuid").is_err());
        let o = OrderId::generate();
        assert_eq!(OrderId::parse(o.as_str()).unwrap(), o);
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_790_000_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)).unwrap(), ms);
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
