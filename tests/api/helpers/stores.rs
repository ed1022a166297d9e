//! Behind the application's back: its shards' rows, an inventory partition and the
//! event bus, reached directly, to set up a state no request makes or to check what
//! was stored.

use std::time::Duration;

use flashsale::domain::{IdempotencyKey, OrderId, ProductId, Quantity, UserId};
use flashsale::events::log::EventLog;
use flashsale::events::{Delivered, EventBus};

use super::{Mode, TestApp};

impl TestApp {
    /// Where the application's events go, opened the way its consumers open it.
    pub async fn event_bus(&self) -> EventBus {
        match self.mode {
            Mode::Cluster => EventBus::kafka(&self.settings.events).expect("valid Kafka settings"),
            Mode::Embedded => {
                let path = self.settings.embedded.data_dir.join("events.db");
                EventBus::Log(EventLog::open(&path).await.expect("the event log opens"))
            }
        }
    }

    /// Reads `topic` from the beginning in a consumer group of its own until `done`
    /// holds for what was read, or `within` has passed; then reads on for `settle` to
    /// catch anything more that would arrive.
    pub async fn read_events(
        &self,
        topic: &'static str,
        done: impl Fn(&[Delivered]) -> bool,
        within: Duration,
        settle: Duration,
    ) -> Vec<Delivered> {
        let bus = self.event_bus().await;
        let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
        let mut source = bus.source(&group, &[topic]).await.expect("a consumer");
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline && !done(&seen) {
            let batch = source
                .poll(1000, Duration::from_millis(200))
                .await
                .expect("poll");
            seen.extend(batch);
        }
        let deadline = std::time::Instant::now() + settle;
        while std::time::Instant::now() < deadline {
            let batch = source
                .poll(1000, Duration::from_millis(200))
                .await
                .expect("poll");
            seen.extend(batch);
        }
        seen
    }

    /// Reserves one unit for `user` under `key` straight in the product's partition,
    /// as a request that died before publishing would leave it; answers its order.
    pub async fn reserve_unpublished(&self, product: i64, user: &UserId, key: &str) -> OrderId {
        use flashsale::actors::inventory::{ReserveOutcome, ReserveRequest};
        let product = ProductId::from_db(product);
        let order = OrderId::generate();
        let reserve = ReserveRequest {
            product,
            user: user.clone(),
            key: IdempotencyKey::parse(key).unwrap(),
            quantity: Quantity::ONE,
            order: order.clone(),
            now_ms: flashsale::domain::now_ms(),
        };
        let partition = self.app_state.directory.product_partition(product);
        let r = partition.call(reserve).await.unwrap();
        assert!(
            matches!(r, ReserveOutcome::Created(ref o, _) if *o == order),
            "{r:?}"
        );
        order
    }

    /// Every (token, order id) accepted ends `completed`, stored exactly once.
    pub async fn assert_completed_once(&self, accepted: &[(String, String)]) {
        for (token, id) in accepted {
            assert_eq!(
                self.wait_settled(token, id).await["status"],
                "completed",
                "order {id}"
            );
        }
        let rows = self.all_shard_orders().await;
        for (_, id) in accepted {
            let stored = rows.iter().filter(|r| &r.1 == id).count();
            assert_eq!(stored, 1, "order {id} stored exactly once");
        }
    }

    /// Every order row of every shard: (shard index, order id, user id, status).
    pub async fn all_shard_orders(&self) -> Vec<(usize, String, String, String)> {
        let mut all = Vec::new();
        for i in 0..self.settings.shard_count() {
            let pool = self.shard_pool(i).await;
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT order_id, user_id, status FROM orders")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            all.extend(rows.into_iter().map(|(o, u, s)| (i, o, u, s)));
        }
        all
    }

    /// The orders whose cancelled units no inventory partition has confirmed back yet,
    /// in every shard (the shards' `restocks` rows).
    pub async fn pending_restocks(&self) -> Vec<String> {
        let mut all = Vec::new();
        for i in 0..self.settings.shard_count() {
            let pool = self.shard_pool(i).await;
            let orders: Vec<String> = sqlx::query_scalar("SELECT order_id FROM restocks")
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            all.extend(orders);
        }
        all
    }

    /// A connection to shard `i` that bypasses the application (PostgreSQL directly, or
    /// the SQLite file).
    async fn shard_pool(&self, i: usize) -> sqlx::AnyPool {
        let url = match self.mode {
            Mode::Cluster => self.shard_urls[i].clone(),
            Mode::Embedded => {
                let dir = &self.settings.embedded.data_dir;
                format!("sqlite://{}", dir.join(format!("shard-{i}.db")).display())
            }
        };
        flashsale::db::any_pool(&url, 1).await.unwrap()
    }

    /// Runs statements on shard `i` (one connection), behind the application's back;
    /// returns the rows they changed.
    pub async fn exec_on_shard(&self, i: usize, sql: &str) -> u64 {
        let pool = self.shard_pool(i).await;
        let n = sqlx::raw_sql(sql)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        pool.close().await;
        n
    }
}
