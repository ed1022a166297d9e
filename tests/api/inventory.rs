//! The reservation script's outcomes, against the real Redis of a partition.

use flashsale::actors::inventory::{
    BelowSold, Claim, Counters, LoadSale, Release, ReserveOutcome, ReserveRequest,
};
use flashsale::domain::{
    now_ms, IdempotencyKey, OrderId, ProductId, Quantity, SaleDefinition, UserId,
};

use crate::helpers::{spawn_app, Mode};

fn reserve(product: ProductId, user: &UserId, key: &str, qty: u32) -> (OrderId, ReserveRequest) {
    let order = OrderId::generate();
    let request = ReserveRequest {
        product,
        user: user.clone(),
        key: IdempotencyKey::parse(key).unwrap(),
        quantity: Quantity::parse(i64::from(qty), 10).unwrap(),
        order: order.clone(),
        now_ms: now_ms(),
    };
    (order, request)
}

in_both_modes!(the_reservation_script_covers_every_outcome);
async fn the_reservation_script_covers_every_outcome(mode: Mode) {
    let app = spawn_app(mode).await;
    let dir = &app.app_state.directory;
    let product = ProductId::from_db(987_654);
    let part = dir.product_partition(product);
    let call = |request: ReserveRequest| async move { part.call(request).await.unwrap() };
    let ann = UserId::new_random();
    let bob = UserId::new_random();

    assert_eq!(
        call(reserve(product, &ann, "k", 1).1).await,
        ReserveOutcome::NoSale
    );

    let sale = SaleDefinition {
        stock: 3,
        per_user_limit: 2,
        starts_at: None,
        ends_at: None,
    };
    let loaded = part.call(LoadSale { product, sale }).await.unwrap();
    assert!(matches!(loaded, Ok(c) if c.remaining == 3));

    let (first, op) = reserve(product, &ann, "k", 2);
    assert_eq!(call(op).await, ReserveOutcome::Created(first.clone()));
    assert_eq!(
        call(reserve(product, &ann, "k", 2).1).await,
        ReserveOutcome::Replay(first.clone())
    );
    assert_eq!(
        call(reserve(product, &ann, "k2", 1).1).await,
        ReserveOutcome::LimitReached
    );
    assert_eq!(
        call(reserve(product, &bob, "k", 2).1).await,
        ReserveOutcome::OutOfStock
    );
    let (bobs, op) = reserve(product, &bob, "k", 1);
    assert_eq!(call(op).await, ReserveOutcome::Created(bobs.clone()));
    assert_eq!(
        call(reserve(product, &bob, "k9", 1).1).await,
        ReserveOutcome::OutOfStock
    );

    // Lowering the stock below what is sold is refused.
    let lower = SaleDefinition { stock: 2, ..sale };
    assert_eq!(
        part.call(LoadSale {
            product,
            sale: lower
        })
        .await
        .unwrap(),
        Err(BelowSold { sold: 3 })
    );

    // Releasing gives the units back and frees the key; a claim then says "cancelled".
    part.call(Release {
        product,
        order: first.clone(),
    })
    .await
    .unwrap();
    let c = part.call(Counters { product }).await.unwrap().unwrap();
    assert_eq!((c.remaining, c.pending), (2, 1));
    assert_eq!(
        part.call(Claim {
            product,
            order: first.clone()
        })
        .await
        .unwrap(),
        false
    );
    assert_eq!(
        part.call(Claim {
            product,
            order: bobs.clone()
        })
        .await
        .unwrap(),
        true
    );
    assert_eq!(
        part.call(Claim {
            product,
            order: bobs
        })
        .await
        .unwrap(),
        true,
        "a redelivered claim still persists"
    );
    let (again, op) = reserve(product, &ann, "k", 1);
    assert_eq!(call(op).await, ReserveOutcome::Created(again));

    let future = SaleDefinition {
        stock: 9,
        per_user_limit: 1,
        starts_at: Some(now_ms() + 3_600_000),
        ends_at: None,
    };
    let later = ProductId::from_db(987_655);
    let part2 = dir.product_partition(later);
    part2
        .call(LoadSale {
            product: later,
            sale: future,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        part2.call(reserve(later, &ann, "k", 1).1).await.unwrap(),
        ReserveOutcome::NotActive
    );
    let past = SaleDefinition {
        starts_at: Some(now_ms() - 7_200_000),
        ends_at: Some(now_ms() - 3_600_000),
        ..future
    };
    part2
        .call(LoadSale {
            product: later,
            sale: past,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        part2.call(reserve(later, &ann, "k", 1).1).await.unwrap(),
        ReserveOutcome::NotActive
    );
    app.stop().await;
}
