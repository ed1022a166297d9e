//! RabbitMQ's queues: quorum queues by default (replicated, what RabbitMQ recommends
//! for data that must not be lost), an existing classic queue kept as it is, and the
//! move of what a queue holds into another without losing a message.

use std::sync::OnceLock;

use flashsale::actors::queue::amqp::{move_queue, queue_arguments, Moved};
use flashsale::config::QueueKind;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::helpers::{spawn_app, spawn_app_with, Mode, Options, TestApp};

async fn channel(app: &TestApp) -> (Connection, Channel) {
    let url = app.settings.queue.url.expose();
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// The type of the existing queue `name`, as the broker sees it: a declare with the
/// other type's arguments is refused.
async fn queue_type(app: &TestApp, name: &str) -> QueueKind {
    let (conn, ch) = channel(app).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), passive, Default::default())
        .await
        .unwrap_or_else(|e| panic!("queue {name} exists: {e}"));
    let quorum = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            queue_arguments(QueueKind::Quorum),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    match quorum {
        Ok(_) => QueueKind::Quorum,
        Err(_) => QueueKind::Classic,
    }
}

/// Declares `name` as a classic queue holding `messages`.
async fn declare_classic(url: &str, name: &str, messages: &[&[u8]]) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::durable(),
        queue_arguments(QueueKind::Classic),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for m in messages {
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = ch
            .basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                m,
                props,
            )
            .await
            .unwrap();
        confirm.await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
}

/// The payloads in `name`, taken out (acknowledged).
async fn drain(app: &TestApp, name: &str) -> Vec<Vec<u8>> {
    let (conn, ch) = channel(app).await;
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            name.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        out.push(m.delivery.data);
    }
    conn.close(200, "bye".into()).await.unwrap();
    out
}

async fn exists(app: &TestApp, name: &str) -> bool {
    let (conn, ch) = channel(app).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let found = ch
        .queue_declare(name.into(), passive, Default::default())
        .await
        .is_ok();
    let _ = conn.close(200, "bye".into()).await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_and_notification_queues_are_quorum_queues() {
    let app = spawn_app(Mode::Cluster).await;
    let q = app.settings.queue.clone();
    for name in [&q.orders_queue, &q.notifications_queue] {
        assert_eq!(queue_type(&app, name).await, QueueKind::Quorum, "{name}");
    }
    // And orders flow through them.
    let product = app.sale(5, 1).await;
    let accepted = app.buy_as_new_buyers(product, 5).await;
    app.assert_completed_once(&accepted).await;
    app.stop().await;
}

/// A queue name known before the app starts (a `configure` cannot capture).
static EXISTING: OnceLock<String> = OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_classic_order_queue_is_used_as_it_is() {
    let name = format!("fstest.{}.classic-orders", uuid::Uuid::new_v4().simple());
    EXISTING.set(name.clone()).unwrap();
    let app = spawn_app_with(Options {
        configure: Some(|s| s.queue.orders_queue = EXISTING.get().unwrap().clone()),
        ..Options::default()
    })
    .await;
    // The app declared it a quorum queue, and deleted it when it stopped: an older
    // release left a classic queue of that name instead.
    let url = app.settings.queue.url.expose().to_string();
    app.stop().await;
    declare_classic(&url, &name, &[]).await;
    let app = spawn_app_with(Options {
        configure: Some(|s| s.queue.orders_queue = EXISTING.get().unwrap().clone()),
        ..Options::default()
    })
    .await;
    assert_eq!(queue_type(&app, &name).await, QueueKind::Classic);
    let product = app.sale(5, 1).await;
    let accepted = app.buy_as_new_buyers(product, 5).await;
    app.assert_completed_once(&accepted).await;
    let quorum = |queue: &str| format!("queue=\"{queue}\"");
    assert_eq!(
        app.metric_sum("flashsale_queue_quorum", &quorum(&name))
            .await,
        0.0
    );
    let notifications = app.settings.queue.notifications_queue.clone();
    let labels = quorum(&notifications);
    assert_eq!(app.metric_sum("flashsale_queue_quorum", &labels).await, 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_queue_keeps_every_message_and_deletes_the_emptied_one() {
    let app = spawn_app(Mode::Cluster).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (from, to) = (format!("fstest.{id}.old"), format!("fstest.{id}.new"));
    // More than one round of the move.
    let messages: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let url = app.settings.queue.url.expose().to_string();
    declare_classic(&url, &from, &refs).await;
    let mut seen = Vec::new();
    let moved = move_queue(&url, &from, &to, QueueKind::Quorum, |m, held| {
        seen.push((m, held))
    })
    .await
    .unwrap();
    assert_eq!(
        moved,
        Moved {
            messages: 600,
            deleted: true
        }
    );
    assert_eq!(seen.first(), Some(&(0, 600)));
    assert_eq!(seen.last(), Some(&(600, 600)));
    assert!(!exists(&app, &from).await, "the emptied queue is deleted");
    assert_eq!(queue_type(&app, &to).await, QueueKind::Quorum);
    assert_eq!(drain(&app, &to).await, messages, "every message, in order");

    // A queue that a consumer still reads is emptied but kept; one that does not exist
    // is an error, not an empty move.
    declare_classic(&url, &from, &refs[..3]).await;
    let (conn, ch) = channel(&app).await;
    let _reader = ch
        .basic_consume(
            from.as_str().into(),
            "fs-test-reader".into(),
            lapin::options::BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let moved = move_queue(&url, &from, &to, QueueKind::Quorum, |_, _| {})
        .await
        .unwrap();
    assert!(!moved.deleted, "{moved:?}");
    assert!(exists(&app, &from).await);
    conn.close(200, "bye".into()).await.unwrap();
    let missing = format!("fstest.{id}.missing");
    let err = move_queue(&url, &missing, &to, QueueKind::Quorum, |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");

    let (conn, ch) = channel(&app).await;
    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    app.stop().await;
}
