//! Orders held in the order queue, out of the application's consumers' reach, as
//! stalled consumers would leave them.

use std::time::Duration;

use serde_json::Value;

use super::{eventually, Mode, TestApp};

/// Orders held in the order queue where the application's consumers cannot take
/// them, as stalled consumers would leave them: accepted and durable, in no shard.
pub enum HeldOrders {
    /// A consumer of the order queue that outranks the application's (RabbitMQ
    /// consumer priority: the broker delivers to it alone while it can take more) and
    /// acknowledges nothing.
    Amqp {
        conn: Box<lapin::Connection>,
        deliveries: Box<lapin::Consumer>,
        held: Vec<String>,
    },
    /// A trigger on the embedded journal that moves each order message into a queue
    /// nobody consumes, in the transaction that publishes it.
    Journal {
        pool: sqlx::SqlitePool,
        queue: String,
    },
}

const HOLD_TRIGGER: &str = "fs_test_hold_orders";

impl HeldOrders {
    fn aside(queue: &str) -> String {
        format!("{queue}.held")
    }

    /// Waits until `order` is among the held messages, and panics if it never is.
    pub async fn wait_for(&mut self, order: &str) {
        let what = format!("order {order} is held in the queue");
        match self {
            HeldOrders::Amqp {
                deliveries, held, ..
            } => {
                use futures_util::StreamExt;
                let within = Duration::from_secs(10);
                let found = tokio::time::timeout(within, async {
                    while !held.iter().any(|o| o == order) {
                        let d = deliveries.next().await.expect("the hold consumes")?;
                        held.extend(order_ids(&d.data));
                    }
                    Ok::<_, lapin::Error>(())
                })
                .await;
                match found {
                    Ok(r) => r.expect("the held deliveries"),
                    Err(_) => panic!("{what}: not within {within:?}; held: {held:?}"),
                }
            }
            HeldOrders::Journal { pool, queue } => {
                let aside = Self::aside(queue);
                eventually(Duration::from_secs(10), &what, || async {
                    let payloads: Vec<Vec<u8>> =
                        sqlx::query_scalar("SELECT payload FROM messages WHERE queue = ?")
                            .bind(&aside)
                            .fetch_all(&*pool)
                            .await
                            .map_err(|e| e.to_string())?;
                    let held: Vec<String> = payloads.iter().flat_map(|p| order_ids(p)).collect();
                    if held.iter().any(|o| o == order) {
                        Ok(())
                    } else {
                        Err(format!("{held:?}"))
                    }
                })
                .await
            }
        }
    }

    /// Gives the held orders back to the application's consumers.
    pub async fn release(self) {
        match self {
            HeldOrders::Amqp { conn, .. } => {
                // A consumer that goes away returns what it did not acknowledge.
                conn.close(200, "released".into())
                    .await
                    .expect("the hold closes");
            }
            HeldOrders::Journal { pool, queue } => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(&format!("DROP TRIGGER {HOLD_TRIGGER}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE messages SET queue = ? WHERE queue = ?")
                    .bind(&queue)
                    .bind(Self::aside(&queue))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                pool.close().await;
            }
        }
    }
}

/// The order ids a queue message carries (one order, or several in an array).
fn order_ids(payload: &[u8]) -> Vec<String> {
    let orders = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Array(many)) => many,
        Ok(one) => vec![one],
        Err(_) => Vec::new(),
    };
    orders
        .iter()
        .filter_map(|o| o["orderId"].as_str().map(String::from))
        .collect()
}

impl TestApp {
    /// From now on, orders stay in the queue until `release`: see [`HeldOrders`].
    pub async fn hold_orders(&self) -> HeldOrders {
        let queue = self.settings.queue.orders_queue.clone();
        match self.mode {
            Mode::Cluster => {
                use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
                use lapin::types::{AMQPValue, FieldTable};
                let conn = lapin::Connection::connect(
                    self.settings.queue.url.expose(),
                    lapin::ConnectionProperties::default(),
                )
                .await
                .expect("RabbitMQ");
                let ch = conn.create_channel().await.unwrap();
                // Declared as the app declares it, in case its consumers have not yet.
                let kind = self.settings.queue.kind;
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    flashsale::actors::queue::amqp::queue_arguments(kind),
                )
                .await
                .unwrap();
                let mut priority = FieldTable::default();
                priority.insert("x-priority".into(), AMQPValue::LongInt(100));
                let deliveries = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "fs-test-hold".into(),
                        BasicConsumeOptions::default(),
                        priority,
                    )
                    .await
                    .expect("the hold consumes the order queue");
                HeldOrders::Amqp {
                    conn: Box::new(conn),
                    deliveries: Box::new(deliveries),
                    held: Vec::new(),
                }
            }
            Mode::Embedded => {
                let path = self.settings.embedded.data_dir.join("queue.db");
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(10));
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
                sqlx::query(&format!(
                    "CREATE TRIGGER {HOLD_TRIGGER} AFTER INSERT ON messages WHEN NEW.queue = {} \
                     BEGIN UPDATE messages SET queue = {} WHERE id = NEW.id; END",
                    quote(&queue),
                    quote(&HeldOrders::aside(&queue)),
                ))
                .execute(&pool)
                .await
                .expect("the hold trigger");
                HeldOrders::Journal { pool, queue }
            }
        }
    }
}
