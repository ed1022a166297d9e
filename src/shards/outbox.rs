//! The transactional outbox: event rows written in the same transaction as the change
//! they describe, once for both dialects. The relays publish them.

use sqlx::AnyConnection;

use crate::db;
use crate::events::OutboxEvent;

/// Appends events to the outbox within the caller's transaction, in order.
pub async fn append(
    tx: &mut AnyConnection,
    events: &[OutboxEvent],
    now: i64,
) -> Result<(), sqlx::Error> {
    for e in events {
        db::query(
            "INSERT INTO outbox (event_id, topic, key, payload, traceparent, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.event_id.as_str())
        .bind(e.topic)
        .bind(e.key.as_str())
        .bind(e.payload.as_str())
        .bind(e.traceparent.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
