//! The local event log of embedded mode: an append-only SQLite table with one
//! sequence for every topic, and a committed position per consumer group. The same
//! envelopes as on Kafka; a consumer that restarts resumes from its commit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::{parse_envelope, Delivered, EventSink, EventSource, OutboxEvent};
use crate::db::sqlite_pool;
use crate::domain::now_ms;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL, event_id TEXT NOT NULL, payload TEXT NOT NULL, traceparent TEXT, appended_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (group_id TEXT PRIMARY KEY, position INTEGER NOT NULL);
";

pub struct EventLog {
    pool: SqlitePool,
}

impl EventLog {
    pub async fn open(path: &Path) -> Result<Arc<Self>, sqlx::Error> {
        let pool = sqlite_pool(path, 4).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Arc::new(Self { pool }))
    }

    pub async fn source(&self, group: &str, topics: &[&str]) -> Result<LogSource, sqlx::Error> {
        let position = sqlx::query("SELECT position FROM offsets WHERE group_id = ?")
            .bind(group)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<i64, _>(0))
            .unwrap_or(0);
        Ok(LogSource {
            pool: self.pool.clone(),
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            position,
            committed: position,
        })
    }
}

#[ractor::async_trait]
impl EventSink for Arc<EventLog> {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for e in events {
            sqlx::query("INSERT INTO events (topic, key, event_id, payload, traceparent, appended_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(e.topic)
                .bind(&e.key)
                .bind(&e.event_id)
                .bind(&e.payload)
                .bind(&e.traceparent)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

pub struct LogSource {
    pool: SqlitePool,
    group: String,
    topics: Vec<String>,
    /// The last sequence number polled, and the last one committed.
    position: i64,
    committed: i64,
}

#[ractor::async_trait]
impl EventSource for LogSource {
    async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, ActorProcessingErr> {
        let rows = sqlx::query(
            "SELECT seq, topic, payload, traceparent FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(self.position)
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
            return Ok(vec![]);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            self.position = row.get("seq");
            let topic: String = row.get("topic");
            if !self.topics.contains(&topic) {
                continue;
            }
            let payload: String = row.get("payload");
            if let Some(envelope) = parse_envelope(&topic, payload.as_bytes()) {
                out.push(Delivered {
                    topic,
                    envelope,
                    traceparent: row.get("traceparent"),
                });
            }
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<(), ActorProcessingErr> {
        if self.position == self.committed {
            return Ok(());
        }
        sqlx::query("INSERT INTO offsets (group_id, position) VALUES (?, ?) ON CONFLICT (group_id) DO UPDATE SET position = excluded.position")
            .bind(&self.group)
            .bind(self.position)
            .execute(&self.pool)
            .await?;
        self.committed = self.position;
        Ok(())
    }
}
