//! The inventory conformance suite: the same operations, in the same order, against an
//! inventory partition over the real Redis (the Lua scripts) and over the embedded
//! backend (in-process state made durable in SQLite). Each scenario runs once per
//! backend, as `name::redis` and `name::local`; every answer must be the one the
//! scripts give.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flashsale::actors::directory::InventorySlot;
use flashsale::actors::inventory::local::LocalInventoryConnect;
use flashsale::actors::inventory::redis::{HasSales, RedisConnect};
use flashsale::actors::inventory::{
    CacheDel, CacheGet, CacheSet, Claim, Claimed, Counters, InventoryMsg, ListSales, LoadSale,
    Lookup, MarkPublished, PartitionState, RateCheck, RebuildStopped, Recovery, Release,
    ReleaseStale, ReserveOutcome, ReserveRequest, Restock, Restocked, SaleCounters, SaleRefused,
    Step, StepDone, UnpublishedOrder,
};
use flashsale::actors::recovery;
use flashsale::domain::{
    now_ms, IdempotencyKey, OrderId, ProductId, Quantity, SaleDefinition, SoldOrder, UserId,
};
use flashsale::domain::{PaymentWindow, Terms};
use flashsale::supervisors::slot::{Slot, WorkerMsg};
use flashsale::supervisors::stats::{Kind, NodeStats};
use flashsale::supervisors::worker::{Backend as InventoryBackend, Connect, Worker};
use ractor::{Actor, ActorRef};

use crate::helpers::eventually;

/// Reservations older than this are stale.
const STALE_MS: u64 = 2_000;

pub enum Backend {
    Redis,
    Local,
}

/// One running partition and what it leaves behind.
pub struct Partition {
    slot: Arc<InventorySlot>,
    actor: ActorRef<WorkerMsg>,
    dir: Option<PathBuf>,
    /// What each order reserved here carries (user, quantity, when), as its queue
    /// message would: what a claim of it names.
    reserved: std::sync::Mutex<std::collections::HashMap<OrderId, (String, i64, i64)>>,
    /// The key prefix of a partition over Redis.
    prefix: Option<String>,
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.actor.stop(None);
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn spawn<C>(connect: C) -> (Arc<InventorySlot>, ActorRef<WorkerMsg>)
where
    C: Connect,
    C::Backend: InventoryBackend<Msg = InventoryMsg>,
{
    let name = format!("inventory-conformance-{}", uuid::Uuid::new_v4().simple());
    let stats = NodeStats::new("inventory-0", name, Kind::Actor);
    let slot = Slot::new(stats, 1_000, Duration::from_secs(10));
    let worker = Worker {
        connect: Arc::new(connect),
        slot: slot.clone(),
        max_batch: 64,
        tick: None,
    };
    let (actor, _) = Actor::spawn(None, worker, ())
        .await
        .expect("the partition starts");
    (slot, actor)
}

/// A partition of its own: nothing durable to rebuild from.
struct NoSales;

#[ractor::async_trait]
impl HasSales for NoSales {
    async fn has_sales(&self) -> Result<bool, ractor::ActorProcessingErr> {
        Ok(false)
    }
}

/// A fresh partition of `backend` whose idempotency keys live `ttl_secs`.
pub async fn partition(backend: Backend, ttl_secs: u64) -> Partition {
    let id = uuid::Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Redis => {
            let prefix = format!("conformance:{id}");
            let (slot, actor) = spawn(RedisConnect {
                url: "redis://127.0.0.1:6380/14".into(),
                prefix: prefix.clone(),
                stale_ms: STALE_MS,
                idempotency_ttl_secs: ttl_secs,
                has_sales: Arc::new(NoSales),
                last_write: Default::default(),
            })
            .await;
            Partition {
                slot,
                actor,
                dir: None,
                reserved: Default::default(),
                prefix: Some(prefix),
            }
        }
        Backend::Local => {
            let dir = std::env::temp_dir().join(format!("fs_test_inventory_{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (slot, actor) = spawn(LocalInventoryConnect {
                path: dir.join("inventory-0.db"),
                stale_ms: STALE_MS,
                idempotency_ttl_secs: ttl_secs,
            })
            .await;
            Partition {
                slot,
                actor,
                dir: Some(dir),
                reserved: Default::default(),
                prefix: None,
            }
        }
    }
}

/// Runs `async fn name(backend: Backend)` against both backends.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Backend::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name(super::Backend::Local).await
            }
        }
    };
}

fn product() -> ProductId {
    ProductId::from_db(rand::random::<u32>() as i64 + 1)
}

/// The terms of [`open_sale`]: its price, no payment window.
const TERMS: Terms = Terms {
    unit_price_cents: 2_500,
    payment_window: None,
};

fn open_sale(stock: i64, per_user_limit: i64) -> SaleDefinition {
    SaleDefinition {
        stock,
        per_user_limit,
        starts_at: None,
        ends_at: None,
        payment_window: None,
        unit_price_cents: 2_500,
    }
}

fn request(product: ProductId, user: &UserId, key: &str, qty: u32, at: i64) -> ReserveRequest {
    ReserveRequest {
        product,
        user: user.clone(),
        key: IdempotencyKey::parse(key).unwrap(),
        quantity: Quantity::parse(i64::from(qty), 10).unwrap(),
        order: OrderId::generate(),
        now_ms: at,
    }
}

impl Partition {
    async fn load(
        &self,
        product: ProductId,
        sale: SaleDefinition,
    ) -> Result<SaleCounters, SaleRefused> {
        self.slot.call(LoadSale { product, sale }).await.unwrap()
    }

    async fn reserve(
        &self,
        product: ProductId,
        user: &UserId,
        key: &str,
        qty: u32,
    ) -> ReserveOutcome {
        self.reserve_at(product, user, key, qty, now_ms()).await
    }

    async fn reserve_at(
        &self,
        product: ProductId,
        user: &UserId,
        key: &str,
        qty: u32,
        at: i64,
    ) -> ReserveOutcome {
        let outcome = self
            .slot
            .call(request(product, user, key, qty, at))
            .await
            .unwrap();
        if let ReserveOutcome::Created(order, _) = &outcome {
            let details = (user.to_string(), i64::from(qty), at);
            self.reserved.lock().unwrap().insert(order.clone(), details);
        }
        outcome
    }

    /// Reserves and expects a new order.
    async fn created(&self, product: ProductId, user: &UserId, key: &str, qty: u32) -> OrderId {
        match self.reserve(product, user, key, qty).await {
            ReserveOutcome::Created(order, _) => order,
            other => panic!("expected a new order, got {other:?}"),
        }
    }

    /// `owner`'s rebuild of the partition's loss (0 once it is whole).
    async fn rebuilder(&self, owner: &str) -> recovery::Rebuild<'_> {
        let since = match self.slot.call(Recovery).await.unwrap() {
            PartitionState::Rebuilding { since } => since,
            PartitionState::Ready => 0,
        };
        recovery::Rebuild {
            slot: &self.slot,
            owner: owner.to_string(),
            since,
        }
    }

    /// Takes a step of a rebuild for `owner`.
    async fn rebuild_step(&self, owner: &str, step: Step) -> Result<StepDone, RebuildStopped> {
        self.rebuilder(owner).await.step(step).await.unwrap()
    }

    /// Rebuilds a sale for `owner` (taking the rebuild first): the units sold.
    async fn rebuild(
        &self,
        owner: &str,
        product: ProductId,
        sale: SaleDefinition,
        orders: Vec<SoldOrder>,
    ) -> Result<i64, RebuildStopped> {
        let rebuild = self.rebuilder(owner).await;
        rebuild.step(Step::Own).await.unwrap()?;
        rebuild.sale(product, sale, orders).await.unwrap()
    }

    async fn counters(&self, product: ProductId) -> SaleCounters {
        self.slot
            .call(Counters { product })
            .await
            .unwrap()
            .expect("the sale exists")
    }

    /// (remaining, pending) of a product's sale.
    async fn units(&self, product: ProductId) -> (i64, i64) {
        let c = self.counters(product).await;
        (c.remaining, c.pending)
    }

    /// Claims an order reserved here, with the details its message carries: `true` to
    /// persist it, `false` when it was released (and is recorded cancelled).
    async fn claim(&self, product: ProductId, order: &OrderId) -> bool {
        let details = self.reserved.lock().unwrap().get(order).cloned();
        let (user, quantity, at) = details.expect("an order reserved here");
        match self.claim_as(product, order, &user, quantity, at).await {
            Claimed::Sold => true,
            Claimed::Released => false,
            Claimed::Unknown => panic!("the partition does not know its own order {order}"),
        }
    }

    /// Claims an order with the details a message names, whatever was reserved.
    async fn claim_as(
        &self,
        product: ProductId,
        order: &OrderId,
        user: &str,
        quantity: i64,
        created_at: i64,
    ) -> Claimed {
        let claim = Claim {
            product,
            order: order.clone(),
            user: UserId::parse(user).unwrap(),
            quantity: Quantity::try_from(quantity).unwrap(),
            key: IdempotencyKey::parse("k").unwrap(),
            created_at,
        };
        self.slot.call(claim).await.unwrap()
    }

    async fn publish(&self, product: ProductId, order: &OrderId) -> bool {
        let order = order.clone();
        self.slot
            .call(MarkPublished { product, order })
            .await
            .unwrap()
    }

    async fn release(&self, product: ProductId, order: &OrderId) {
        let order = order.clone();
        self.slot.call(Release { product, order }).await.unwrap()
    }

    /// Gives a cancelled order's units back: `true` when they came back now.
    async fn restock(
        &self,
        product: ProductId,
        order: &OrderId,
        user: &UserId,
        quantity: i64,
    ) -> bool {
        let restock = Restock {
            product,
            order: order.clone(),
            user: user.clone(),
            quantity: Quantity::try_from(quantity).unwrap(),
        };
        self.slot.call(restock).await.unwrap() == Restocked::Returned
    }
}

on_both_backends!(reservations_replay_limit_and_stock);
async fn reservations_replay_limit_and_stock(backend: Backend) {
    let p = partition(backend, 3600).await;
    let pid = product();
    let (ann, bob) = (UserId::new_random(), UserId::new_random());

    assert_eq!(p.reserve(pid, &ann, "k", 1).await, ReserveOutcome::NoSale);
    assert_eq!(p.slot.call(Counters { product: pid }).await.unwrap(), None);
    let loaded = p.load(pid, open_sale(3, 2)).await.unwrap();
    assert_eq!((loaded.stock, loaded.remaining, loaded.pending), (3, 3, 0));

    let first = p.created(pid, &ann, "k", 2).await;
    assert!(p.publish(pid, &first).await);
    // The same key replays its order, whatever the quantity asked.
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::Replay(first.clone())
    );
    assert_eq!(
        p.reserve(pid, &ann, "k2", 1).await,
        ReserveOutcome::LimitReached
    );
    assert_eq!(
        p.reserve(pid, &bob, "k", 2).await,
        ReserveOutcome::OutOfStock
    );
    let bobs = p.created(pid, &bob, "k", 1).await;
    assert_ne!(first, bobs);
    assert_eq!(
        p.reserve(pid, &bob, "k9", 1).await,
        ReserveOutcome::OutOfStock
    );
    assert_eq!(p.units(pid).await, (0, 3));

    // The stock can grow, never below what is sold; what is sold is kept.
    assert_eq!(
        p.load(pid, open_sale(2, 2)).await,
        Err(SaleRefused::BelowSold { sold: 3 })
    );
    let raised = p.load(pid, open_sale(5, 2)).await.unwrap();
    assert_eq!((raised.stock, raised.remaining), (5, 2));
    let sales = p.slot.call(ListSales).await.unwrap();
    let listed = sales
        .iter()
        .find(|s| s.product == pid.get())
        .expect("listed");
    assert_eq!((listed.stock, listed.remaining), (5, 2));
}

on_both_backends!(a_sale_sells_only_inside_its_window);
async fn a_sale_sells_only_inside_its_window(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann) = (product(), UserId::new_random());
    let now = now_ms();
    let upcoming = SaleDefinition {
        starts_at: Some(now + 3_600_000),
        ..open_sale(5, 1)
    };
    p.load(pid, upcoming).await.unwrap();
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::NotActive
    );
    let ended = SaleDefinition {
        starts_at: Some(now - 7_200_000),
        ends_at: Some(now - 3_600_000),
        ..open_sale(5, 1)
    };
    p.load(pid, ended).await.unwrap();
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::NotActive
    );
    let open = SaleDefinition {
        starts_at: Some(now - 1_000),
        ends_at: Some(now + 3_600_000),
        ..open_sale(5, 1)
    };
    p.load(pid, open).await.unwrap();
    p.created(pid, &ann, "k", 1).await;
    // A rejected request left nothing reserved.
    assert_eq!(p.units(pid).await, (4, 1));
}

on_both_backends!(an_order_is_accepted_on_the_terms_its_sale_has_when_it_is_reserved);
async fn an_order_is_accepted_on_the_terms_its_sale_has_when_it_is_reserved(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann, bob) = (product(), UserId::new_random(), UserId::new_random());
    let window = PaymentWindow::try_from(300).unwrap();
    let sale = SaleDefinition {
        payment_window: Some(window),
        unit_price_cents: 1_500,
        ..open_sale(5, 5)
    };
    let counters = p.load(pid, sale).await.unwrap();
    assert_eq!(counters.payment_window, Some(window));
    let first = Terms {
        unit_price_cents: 1_500,
        payment_window: Some(window),
    };
    match p.reserve(pid, &ann, "a", 2).await {
        ReserveOutcome::Created(_, terms) => assert_eq!(terms, first),
        other => panic!("{other:?}"),
    }
    // Repriced, and the window dropped: later orders take the new terms; an order
    // whose publish is still under way is published on the terms of now.
    let repriced = SaleDefinition {
        payment_window: None,
        unit_price_cents: 1_800,
        ..open_sale(5, 5)
    };
    p.load(pid, repriced).await.unwrap();
    let now = Terms {
        unit_price_cents: 1_800,
        payment_window: None,
    };
    match p.reserve(pid, &bob, "b", 1).await {
        ReserveOutcome::Created(_, terms) => assert_eq!(terms, now),
        other => panic!("{other:?}"),
    }
    match p.reserve(pid, &ann, "a", 2).await {
        ReserveOutcome::Unpublished(u) => assert_eq!(u.terms, now),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.counters(pid).await.payment_window, None);
}

on_both_backends!(a_release_gives_the_units_back_and_forgets_the_key);
async fn a_release_gives_the_units_back_and_forgets_the_key(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann) = (product(), UserId::new_random());
    p.load(pid, open_sale(2, 2)).await.unwrap();
    let first = p.created(pid, &ann, "k", 2).await;
    assert!(p
        .slot
        .call(Lookup {
            order: first.clone()
        })
        .await
        .unwrap()
        .is_some());
    p.release(pid, &first).await;
    assert_eq!(p.units(pid).await, (2, 0));
    assert_eq!(
        p.slot
            .call(Lookup {
                order: first.clone()
            })
            .await
            .unwrap(),
        None
    );
    // A message of the released order that reached the queue after all is cancelled,
    // and its units are never given back twice.
    assert!(!p.claim(pid, &first).await);
    assert!(!p.restock(pid, &first, &ann, 2).await);
    assert_eq!(p.units(pid).await, (2, 0));
    // The key is free again; the per-user count went back with the units.
    let second = p.created(pid, &ann, "k", 2).await;
    assert_ne!(first, second);
    // Releasing what is not reserved changes nothing.
    p.release(pid, &first).await;
    assert_eq!(p.units(pid).await, (0, 2));
}

on_both_backends!(a_pile_of_stale_reservations_is_released_oldest_first_in_bounded_sweeps);
async fn a_pile_of_stale_reservations_is_released_oldest_first_in_bounded_sweeps(backend: Backend) {
    let p = partition(backend, 3600).await;
    let pid = product();
    let most = flashsale::actors::inventory::MOST_RELEASED;
    let pile = most + 200;
    p.load(pid, open_sale(pile + 100, 1)).await.unwrap();
    // Published reservations waiting for their consumers (a worker outage) stay.
    let long_ago = now_ms() - STALE_MS as i64 - 60_000;
    let mut published = Vec::new();
    for i in 0..100 {
        match p
            .reserve_at(pid, &UserId::new_random(), &format!("p{i}"), 1, long_ago)
            .await
        {
            ReserveOutcome::Created(o, _) => published.push(o),
            other => panic!("{other:?}"),
        }
        assert!(p.publish(pid, published.last().unwrap()).await);
    }
    // More unpublished ones than a sweep releases, the newest last.
    let mut lost = Vec::new();
    for i in 0..pile {
        let at = long_ago + i;
        match p
            .reserve_at(pid, &UserId::new_random(), &format!("l{i}"), 1, at)
            .await
        {
            ReserveOutcome::Created(o, _) => lost.push(o),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.units(pid).await, (0, pile + 100));
    let sweep = || p.slot.call(ReleaseStale { now_ms: now_ms() });
    assert_eq!(
        sweep().await.unwrap(),
        most,
        "one sweep releases at most {most}"
    );
    // The oldest went first: the newest is still held, the oldest is not.
    assert!(!p.claim(pid, &lost[0]).await, "the oldest was released");
    assert!(
        p.claim(pid, lost.last().unwrap()).await,
        "the newest was not"
    );
    assert_eq!(sweep().await.unwrap(), pile - most - 1, "the rest");
    assert_eq!(sweep().await.unwrap(), 0);
    // Every published reservation is still there for its consumer.
    for o in &published {
        assert!(p.claim(pid, o).await);
    }
    assert_eq!(p.units(pid).await, (pile - 1, 0));
}

on_both_backends!(stale_unpublished_reservations_are_released_published_ones_kept);
async fn stale_unpublished_reservations_are_released_published_ones_kept(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann, bob, cat) = (
        product(),
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    p.load(pid, open_sale(5, 5)).await.unwrap();
    let long_ago = now_ms() - STALE_MS as i64 - 1_000;
    let lost = match p.reserve_at(pid, &ann, "lost", 1, long_ago).await {
        ReserveOutcome::Created(o, _) => o,
        other => panic!("{other:?}"),
    };
    let published = match p.reserve_at(pid, &bob, "sent", 1, long_ago).await {
        ReserveOutcome::Created(o, _) => o,
        other => panic!("{other:?}"),
    };
    assert!(p.publish(pid, &published).await);
    let fresh = p.created(pid, &cat, "fresh", 1).await;
    assert_eq!(p.units(pid).await, (2, 3));

    let released = p
        .slot
        .call(ReleaseStale { now_ms: now_ms() })
        .await
        .unwrap();
    assert_eq!(released, 1, "only the stale, unpublished reservation");
    assert_eq!(p.units(pid).await, (3, 2));
    assert!(
        !p.claim(pid, &lost).await,
        "the released order is recorded cancelled"
    );
    assert!(p.claim(pid, &published).await);
    assert!(p.claim(pid, &fresh).await);
    assert_eq!(p.units(pid).await, (3, 0));

    // A retry whose earlier reservation went stale unpublished gets a new order.
    let stale = match p.reserve_at(pid, &ann, "retry", 1, long_ago).await {
        ReserveOutcome::Created(o, _) => o,
        other => panic!("{other:?}"),
    };
    let retried = p.created(pid, &ann, "retry", 1).await;
    assert_ne!(stale, retried);
    assert!(!p.claim(pid, &stale).await);
    assert_eq!(p.units(pid).await, (2, 1));
}

on_both_backends!(claims_of_what_was_never_reserved_sell_nothing);
async fn claims_of_what_was_never_reserved_sell_nothing(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann, eve) = (product(), UserId::new_random(), UserId::new_random());
    p.load(pid, open_sale(3, 1)).await.unwrap();
    let order = p.created(pid, &ann, "k", 1).await;
    let at = p.reserved.lock().unwrap()[&order].2;
    let (ann_id, eve_id) = (ann.to_string(), eve.to_string());
    // A reservation named with other details (more units, another user) stays
    // reserved for its own message.
    for (user, quantity) in [(&ann_id, 2), (&eve_id, 1)] {
        let claimed = p.claim_as(pid, &order, user, quantity, at).await;
        assert_eq!(claimed, Claimed::Unknown, "{user} {quantity}");
    }
    assert_eq!(p.units(pid).await, (2, 1));
    assert!(p.claim(pid, &order).await);
    // Once claimed, its redelivery persists; altered copies and an order never seen
    // sell nothing.
    assert!(p.claim(pid, &order).await);
    for (user, quantity) in [(&ann_id, 2), (&eve_id, 1)] {
        let claimed = p.claim_as(pid, &order, user, quantity, at).await;
        assert_eq!(claimed, Claimed::Unknown, "{user} {quantity}");
    }
    let never = OrderId::generate();
    assert_eq!(
        p.claim_as(pid, &never, &ann_id, 1, now_ms()).await,
        Claimed::Unknown
    );
    // Nor does one dated before any loss, on a partition that never lost its state.
    assert_eq!(
        p.claim_as(pid, &never, &ann_id, 1, -1).await,
        Claimed::Unknown
    );
    assert_eq!(p.units(pid).await, (2, 0));
}

/// A shard order as a rebuild reads it.
fn shard_order(order: &OrderId, user: &UserId, quantity: i64, cancelled: bool) -> SoldOrder {
    SoldOrder {
        order_id: order.clone(),
        user_id: user.clone(),
        quantity: Quantity::try_from(quantity).unwrap(),
        idempotency_key: IdempotencyKey::parse("k").unwrap(),
        cancelled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_keeps_what_is_still_reserved_and_what_was_cancelled() {
    let p = partition(Backend::Redis, 3600).await;
    let (pid, ann, bob, cat) = (
        product(),
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    p.load(pid, open_sale(10, 5)).await.unwrap();
    // What a partial loss leaves: Ann's two units still reserved, Bob's order claimed
    // and in its shard while its reservation came back, Cat's order in its shard.
    p.created(pid, &ann, "a", 2).await;
    let bobs = p.created(pid, &bob, "b", 1).await;
    let cats = OrderId::generate();
    lose_state(&p).await;
    // One look at the shards reads Cat's order cancelled; an older one read it sold.
    let fresh = vec![
        shard_order(&bobs, &bob, 1, false),
        shard_order(&cats, &cat, 3, true),
    ];
    let sale = open_sale(10, 5);
    assert_eq!(p.rebuild("one", pid, sale, fresh).await, Ok(1));
    let stale = vec![
        shard_order(&bobs, &bob, 1, false),
        shard_order(&cats, &cat, 3, false),
    ];
    assert_eq!(
        p.rebuild("one", pid, sale, stale).await,
        Ok(1),
        "a cancelled order is never sold again"
    );
    // Bob's unit is sold, Ann's two are held: seven left, two pending.
    assert_eq!(p.units(pid).await, (7, 2));
    // The rebuilt sale takes orders on the terms of its definition.
    assert_eq!(
        p.rebuild_step("one", Step::Finish).await,
        Ok(StepDone::Finished)
    );
    match p.reserve(pid, &cat, "c", 1).await {
        ReserveOutcome::Created(_, terms) => assert_eq!(terms, TERMS),
        other => panic!("{other:?}"),
    }
    // Cat's cancelled units never come back twice.
    assert!(!p.restock(pid, &cats, &cat, 3).await);
}

/// A reservation kept by a partial loss and claimed while the partition rebuilds: its
/// order may reach its shard only after the rebuild read the shards, so the claim
/// itself counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_claimed_during_a_rebuild_is_counted_sold() {
    let p = partition(Backend::Redis, 3600).await;
    let (pid, ann) = (product(), UserId::new_random());
    p.load(pid, open_sale(10, 5)).await.unwrap();
    let anns = p.created(pid, &ann, "a", 2).await;
    lose_state(&p).await;
    let (user, quantity, at) = p.reserved.lock().unwrap()[&anns].clone();
    assert_eq!(
        p.claim_as(pid, &anns, &user, quantity, at).await,
        Claimed::Sold
    );
    // The shards do not have Ann's order yet.
    let rebuilt = p.rebuild("one", pid, open_sale(10, 5), Vec::new()).await;
    assert_eq!(rebuilt, Ok(2), "Ann's units are sold");
    assert_eq!(
        p.rebuild_step("one", Step::Finish).await,
        Ok(StepDone::Finished)
    );
    assert_eq!(p.units(pid).await, (8, 0));
    assert_eq!(
        p.reserve(pid, &ann, "b", 4).await,
        ReserveOutcome::LimitReached,
        "and count in her limit"
    );
}

/// Marks a partition's state lost, as a restart that kept part of it would; answers
/// the moment of the loss.
async fn lose_state(p: &Partition) -> i64 {
    let prefix = p.prefix.clone().unwrap();
    let client = redis::Client::open("redis://127.0.0.1:6380/14").unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let since = now_ms();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:epoch"))
        .arg("state")
        .arg("rebuilding")
        .arg("since")
        .arg(since)
        .query_async(&mut con)
        .await
        .unwrap();
    since
}

/// A sale of thousands of orders is rebuilt a chunk at a time, each step one short
/// script; an order claimed between two chunks counts once, one claimed after its sale
/// was rebuilt counts on it, and a second reconciler's steps are refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sale_is_rebuilt_in_chunks_around_the_claims_meanwhile() {
    let p = partition(Backend::Redis, 3600).await;
    let pid = product();
    let sale = open_sale(5_000, 2);
    p.load(pid, sale).await.unwrap();
    // Ann's reservation outlives the loss; the shards hold two units each of 1,250
    // buyers.
    let ann = UserId::new_random();
    p.created(pid, &ann, "a", 2).await;
    let since = lose_state(&p).await;
    let buyers: Vec<UserId> = (0..1_250).map(|_| UserId::new_random()).collect();
    let orders: Vec<SoldOrder> = (buyers.iter())
        .flat_map(|u| ["x", "y"].map(|key| (u, key)))
        .map(|(u, key)| SoldOrder {
            order_id: OrderId::generate(),
            user_id: u.clone(),
            quantity: Quantity::ONE,
            idempotency_key: IdempotencyKey::parse(key).unwrap(),
            cancelled: false,
        })
        .collect();
    assert!(orders.len() > 2 * recovery::REBUILD_CHUNK);

    assert_eq!(p.rebuild_step("one", Step::Own).await, Ok(StepDone::Owned));
    assert_eq!(
        p.rebuild_step("two", Step::Own).await,
        Err(RebuildStopped::Taken),
        "one reconciler rebuilds at a time"
    );
    let (first, rest) = orders.split_at(recovery::REBUILD_CHUNK);
    let chunk = |orders: &[SoldOrder]| Step::Orders {
        product: pid,
        sale,
        orders: orders.to_vec(),
    };
    assert_eq!(
        p.rebuild_step("one", chunk(first)).await,
        Ok(StepDone::Returned(Vec::new()))
    );
    // Bob's order, accepted before the loss, is claimed between two chunks.
    let bob = UserId::new_random();
    let bobs = OrderId::generate();
    let claimed = p.claim_as(pid, &bobs, bob.as_str(), 1, since - 1_000).await;
    assert_eq!(claimed, Claimed::Sold);
    for part in rest.chunks(recovery::REBUILD_CHUNK) {
        p.rebuild_step("one", chunk(part)).await.unwrap();
    }
    let buyers: Vec<(String, i64)> = buyers.iter().map(|u| (u.to_string(), 2)).collect();
    for part in buyers.chunks(recovery::REBUILD_CHUNK) {
        let step = Step::Buyers {
            product: pid,
            sale,
            buyers: part.to_vec(),
        };
        p.rebuild_step("one", step).await.unwrap();
    }
    let step = Step::Sale {
        product: pid,
        sale,
        sold: 2_500,
    };
    assert_eq!(p.rebuild_step("one", step).await, Ok(StepDone::Sold(2_501)));
    // Cat's order is claimed once its sale is rebuilt, before the partition reopens.
    let cat = UserId::new_random();
    let claimed = p
        .claim_as(pid, &OrderId::generate(), cat.as_str(), 2, since - 1_000)
        .await;
    assert_eq!(claimed, Claimed::Sold);
    assert_eq!(
        p.rebuild_step("one", Step::Finish).await,
        Ok(StepDone::Finished)
    );

    // 2,500 + Bob's + Cat's two sold, Ann's two held.
    assert_eq!(p.units(pid).await, (5_000 - 2_503 - 2, 2));
    for (who, key) in [(&bob, "b2"), (&cat, "c2"), (&ann, "a2")] {
        assert_eq!(
            p.reserve(pid, who, key, 2).await,
            ReserveOutcome::LimitReached,
            "{who}'s units count in their limit"
        );
    }
    let shard_buyer = UserId::parse(&buyers[7].0).unwrap();
    assert_eq!(
        p.reserve(pid, &shard_buyer, "z", 1).await,
        ReserveOutcome::LimitReached
    );
    // A redelivery of Bob's order is recognised: nothing more is sold.
    assert_eq!(
        p.claim_as(pid, &bobs, bob.as_str(), 1, since - 1_000).await,
        Claimed::Sold
    );
    assert_eq!(p.units(pid).await, (2_495, 2));
}

on_both_backends!(claims_and_restocks_happen_once_per_order);
async fn claims_and_restocks_happen_once_per_order(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann) = (product(), UserId::new_random());
    p.load(pid, open_sale(3, 1)).await.unwrap();
    let order = p.created(pid, &ann, "k", 1).await;
    assert!(p.publish(pid, &order).await);
    assert!(p.claim(pid, &order).await);
    assert!(
        p.claim(pid, &order).await,
        "a redelivered claim still persists"
    );
    assert_eq!(p.units(pid).await, (2, 0));
    assert_eq!(
        p.reserve(pid, &ann, "k2", 1).await,
        ReserveOutcome::LimitReached
    );

    assert!(p.restock(pid, &order, &ann, 1).await);
    assert!(!p.restock(pid, &order, &ann, 1).await, "once per order");
    assert_eq!(p.units(pid).await, (3, 0));
    // The buyer's unit went back too: they may buy again.
    p.created(pid, &ann, "k2", 1).await;
}

on_both_backends!(the_rate_window_counts_and_resets);
async fn the_rate_window_counts_and_resets(backend: Backend) {
    let p = partition(backend, 3600).await;
    let user = UserId::new_random();
    let check = || {
        p.slot.call(RateCheck {
            key: user.to_string(),
            window_ms: 400,
        })
    };
    for n in 1..=3 {
        let w = check().await.unwrap();
        assert_eq!(w.count, n);
        assert!(w.reset_ms > 0 && w.reset_ms <= 400, "{w:?}");
    }
    let other = p
        .slot
        .call(RateCheck {
            key: UserId::new_random().to_string(),
            window_ms: 400,
        })
        .await
        .unwrap();
    assert_eq!(other.count, 1, "windows are per key");
    // Each check inside the old window counts on; the first past its end counts one.
    eventually(
        Duration::from_secs(5),
        "a new window starts from zero",
        || async {
            let w = check().await.unwrap();
            match w.count {
                1 => Ok(()),
                n => Err(format!("{n} in the window; {w:?}")),
            }
        },
    )
    .await;
}

on_both_backends!(keys_and_lookups_expire_after_their_lifetime);
async fn keys_and_lookups_expire_after_their_lifetime(backend: Backend) {
    let p = partition(backend, 1).await;
    let (pid, ann) = (product(), UserId::new_random());
    p.load(pid, open_sale(5, 5)).await.unwrap();
    let first = p.created(pid, &ann, "k", 1).await;
    assert!(p.publish(pid, &first).await);
    let pending = p
        .slot
        .call(Lookup {
            order: first.clone(),
        })
        .await
        .unwrap();
    let pending = pending.expect("an accepted order is found until its shard has it");
    assert_eq!(
        (&pending.user, pending.product, pending.quantity),
        (&ann, pid, Quantity::ONE)
    );
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::Replay(first.clone())
    );
    assert!(p.claim(pid, &first).await);
    // Past the key's lifetime the same key is a new order, and the old one's lookup
    // entry is gone.
    eventually(
        Duration::from_secs(5),
        "the lookup entry expires with the key",
        || async {
            let found = p
                .slot
                .call(Lookup {
                    order: first.clone(),
                })
                .await
                .unwrap();
            match found {
                None => Ok(()),
                Some(_) => Err("the entry is still found"),
            }
        },
    )
    .await;
    match p.reserve(pid, &ann, "k", 1).await {
        ReserveOutcome::Created(second, _) => assert_ne!(second, first),
        other => panic!("an expired key must make a new order, got {other:?}"),
    }
}

on_both_backends!(the_product_cache_keeps_values_for_their_ttl);
async fn the_product_cache_keeps_values_for_their_ttl(backend: Backend) {
    let p = partition(backend, 3600).await;
    let key = format!("product:{}", product());
    let get = || p.slot.call(CacheGet { key: key.clone() });
    assert_eq!(get().await.unwrap(), None);
    let set = |ttl_secs| CacheSet {
        key: key.clone(),
        value: "{\"id\":1}".into(),
        ttl_secs,
    };
    p.slot.call(set(3600)).await.unwrap();
    assert_eq!(get().await.unwrap().as_deref(), Some("{\"id\":1}"));
    p.slot.call(CacheDel { key: key.clone() }).await.unwrap();
    assert_eq!(get().await.unwrap(), None);
    p.slot.call(set(1)).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the value expires after its TTL",
        || async {
            match get().await.unwrap() {
                None => Ok(()),
                Some(v) => Err(format!("still cached: {v}")),
            }
        },
    )
    .await;
}

on_both_backends!(a_key_replays_its_order_only_once_it_is_published);
async fn a_key_replays_its_order_only_once_it_is_published(backend: Backend) {
    let p = partition(backend, 3600).await;
    let (pid, ann, bob, cat) = (
        product(),
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    p.load(pid, open_sale(5, 5)).await.unwrap();
    let at = now_ms();
    let order = match p.reserve_at(pid, &ann, "k", 2, at).await {
        ReserveOutcome::Created(o, _) => o,
        other => panic!("{other:?}"),
    };
    // Not yet known to be in the queue: whoever asks again must publish it first.
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::Unpublished(UnpublishedOrder {
            order: order.clone(),
            quantity: Quantity::try_from(2).unwrap(),
            created_at: at,
            terms: TERMS,
        })
    );
    assert!(p.publish(pid, &order).await);
    assert!(p.publish(pid, &order).await, "marking twice is harmless");
    assert_eq!(
        p.reserve(pid, &ann, "k", 1).await,
        ReserveOutcome::Replay(order.clone())
    );
    // A failed publish of a twin comes too late to release a published order.
    p.release(pid, &order).await;
    assert_eq!(p.units(pid).await, (3, 2));

    // Released first: the mark says so (its message will be claimed as cancelled).
    let lost = p.created(pid, &bob, "k", 1).await;
    p.release(pid, &lost).await;
    assert!(!p.publish(pid, &lost).await);
    assert!(!p.claim(pid, &lost).await);

    // Claimed before the mark arrived (a fast consumer): still accepted.
    let quick = p.created(pid, &cat, "k", 1).await;
    assert!(p.claim(pid, &quick).await);
    assert!(p.publish(pid, &quick).await);
    assert_eq!(
        p.reserve(pid, &cat, "k", 1).await,
        ReserveOutcome::Replay(quick.clone())
    );
    assert_eq!(p.units(pid).await, (2, 2));
}

on_both_backends!(a_rebuild_that_comes_after_the_partition_is_whole_changes_nothing);
/// The reconcilers of several api pods may race to rebuild a partition; one that comes
/// once another has finished (the sale open and selling again) must not overwrite what
/// was sold since with its older snapshot of the shards.
async fn a_rebuild_that_comes_after_the_partition_is_whole_changes_nothing(backend: Backend) {
    let p = partition(backend, 3600).await;
    let pid = product();
    p.load(pid, open_sale(10, 5)).await.unwrap();
    let buyer = UserId::new_random();
    p.created(pid, &buyer, "a", 2).await;
    p.created(pid, &buyer, "b", 1).await;
    assert_eq!(p.units(pid).await, (7, 3));

    let late = p.rebuild("late", pid, open_sale(10, 5), Vec::new()).await;
    assert_eq!(late, Err(RebuildStopped::Whole));
    assert_eq!(
        p.units(pid).await,
        (7, 3),
        "the sale's counts are untouched"
    );
    assert_eq!(
        p.reserve(pid, &buyer, "c", 3).await,
        ReserveOutcome::LimitReached,
        "the buyer's units are untouched"
    );
}

/// Calls of `command` the Redis server on 6380 has run, scripts' calls included.
async fn redis_calls(command: &str) -> u64 {
    let client = redis::Client::open("redis://127.0.0.1:6380/14").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The counters (read by the admin API, the drift check and every load test's
/// progress) cost the same whatever the sale's size: no scan over its reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_counters_are_read_without_scanning_its_reservations() {
    let p = partition(Backend::Redis, 3600).await;
    let pid = product();
    p.load(pid, open_sale(500, 5)).await.unwrap();
    let mut orders = Vec::new();
    for i in 0..300 {
        orders.push(
            p.created(pid, &UserId::new_random(), &format!("k{i}"), 1)
                .await,
        );
    }
    let scans = redis_calls("hvals").await;
    for _ in 0..20 {
        assert_eq!(p.units(pid).await, (200, 300));
    }
    for o in &orders[..100] {
        assert!(p.claim(pid, o).await);
    }
    p.release(pid, &orders[100]).await;
    assert_eq!(p.units(pid).await, (201, 199));
    assert_eq!(
        redis_calls("hvals").await,
        scans,
        "reading counters scanned the reservations"
    );
}

/// A server that restarted, or one Sentinel promoted, has none of the scripts: the
/// partition sends them and its requests are answered, each run once, without failing
/// the actor (whose callers would be told `503` meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_scripts_is_sent_them_and_answers_every_request() {
    let p = partition(Backend::Redis, 3600).await;
    let (pid, ann) = (product(), UserId::new_random());
    p.load(pid, open_sale(3, 3)).await.unwrap();
    let first = p.created(pid, &ann, "a", 1).await;
    let client = redis::Client::open("redis://127.0.0.1:6380/14").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let loads = redis_calls("script|load").await;
    let second = p.created(pid, &ann, "b", 1).await;
    assert_ne!(first, second);
    let again = p.reserve(pid, &ann, "b", 1).await;
    assert!(
        matches!(&again, ReserveOutcome::Unpublished(u) if u.order == second),
        "{again:?}"
    );
    assert_eq!(p.units(pid).await, (1, 2), "each reservation counted once");
    assert!(
        redis_calls("script|load").await > loads,
        "the scripts were sent"
    );
    assert!(p.actor.get_status() == ractor::ActorStatus::Running);
}
