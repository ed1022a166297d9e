//! The supervisor tree of one application: its slots (the directory callers use) and
//! the children of each subtree, built from settings over the mode's backends.
//!
//! ```text
//! root ── shards        catalog, shard-0 …
//!      ├─ inventory     inventory-0 …, reconciler¹, payment-sweeper¹
//!      ├─ consumers     order-publisher-0 …¹, order-consumer-0 …², notification-consumer-0 …²
//!      ├─ events²       relay-catalog, relay-shard-0 …, analytics/inventory/reporting-consumer
//!      └─ pod-registry
//! ```
//!
//! ¹ roles `api` and `all` only (they take orders); ² roles `worker` and `all` only
//! (they persist orders and publish events). Both keep the catalog and shard actors
//! (logins and reads on the api side, writes on the worker side) and the inventory
//! partitions (reservations on one side, claims on the other).

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::backends::Backends;
use super::StartError;
use crate::actors::directory::{Directory, Fleet};
use crate::actors::event_consumers::{
    Analytics, ConsumerConnect, EventHandler, InventoryCheck, ReportStore, Reporting,
};
use crate::actors::payment_sweeper::SweeperConnect;
use crate::actors::queue::{DeliveryHandler, QueueConsumer, QueueSource};
use crate::actors::reconciler::ReconcilerConnect;
use crate::actors::registry::{PodIdentity, RegistryConnect, RegistryMsg};
use crate::actors::relay::{RelayConnect, RelaySlot};
use crate::config::{Mode, Settings};
use crate::orders::persist::{NotificationHandler, OrderHandler, Webhook};
use crate::supervisors::slot::{Message, Nudge, Slot};
use crate::supervisors::stats::{Kind, NodeStats, Quiesce};
use crate::supervisors::{self, leaf, Child, Namer, Policy, Root};

/// Makes the slots of one application: named, bounded, with the call deadline.
struct Slots<'a> {
    namer: &'a Namer,
    capacity: usize,
    timeout: Duration,
}

impl Slots<'_> {
    fn make<M: Message>(&self, name: &str) -> Arc<Slot<M>> {
        Slot::new(
            self.namer.node(name, Kind::Actor),
            self.capacity,
            self.timeout,
        )
    }
}

/// A queue consumer child: subscribes on every (re)start, hands batches to `handler`.
fn consumer<H: DeliveryHandler>(
    stats: Arc<NodeStats>,
    settings: &Settings,
    queue: &str,
    source: Arc<dyn QueueSource>,
    handler: Arc<H>,
    policy: &Policy,
) -> Child {
    let queue = queue.to_string();
    let (prefetch, max_batch) = (settings.queue.prefetch, settings.queue.max_batch);
    let linger = Duration::from_millis(settings.queue.linger_ms);
    let node = stats.clone();
    leaf(stats, policy, move |cell, id| {
        let actor = QueueConsumer {
            stats: node.clone(),
            source: source.clone(),
            queue: queue.clone(),
            prefetch,
            max_batch,
            linger,
            handler: handler.clone(),
        };
        async move {
            let (r, _) = ractor_supervisor::Supervisor::spawn_linked(id, actor, (), cell).await?;
            Ok(r.get_cell())
        }
        .boxed()
    })
}

fn webhook(settings: &Settings) -> Option<Webhook> {
    let n = &settings.notifications;
    n.webhook_url.as_ref().map(|url| Webhook {
        client: reqwest::Client::builder()
            .timeout(Duration::from_millis(n.webhook_timeout_ms))
            .build()
            .expect("an HTTP client"),
        url: url.clone(),
    })
}

/// A spawned tree and what the rest of the application holds of it.
pub struct Built {
    /// Where callers find the actors.
    pub directory: Arc<Directory>,
    pub root: Root,
    pub registry: Arc<Slot<RegistryMsg>>,
    /// The order consumers' nodes (a worker is ready when one consumes).
    pub order_consumers: Vec<Arc<NodeStats>>,
    /// The tree's stop: rounds of pulled work under way.
    pub quiesce: Arc<Quiesce>,
}

/// Builds and spawns the tree of this process's role.
pub async fn spawn(
    settings: &Settings,
    backends: &Backends,
    policy: &Policy,
    pod: PodIdentity,
) -> Result<Built, StartError> {
    let role = settings.role;
    let namer = Namer::new();
    let slots = Slots {
        namer: &namer,
        capacity: settings.limits.inbox_capacity,
        timeout: Duration::from_millis(settings.limits.call_timeout_ms),
    };
    let q = &settings.queue;
    let catalog = slots.make("catalog");
    let shards: Vec<_> = (0..settings.shard_count())
        .map(|i| slots.make(&format!("shard-{i}")))
        .collect();
    let inventory: Vec<_> = (0..settings.partition_count())
        .map(|i| slots.make(&format!("inventory-{i}")))
        .collect();
    let publisher_count = if role.takes_orders() { q.publishers } else { 0 };
    let publishers: Vec<_> = (0..publisher_count)
        .map(|i| slots.make(&format!("order-publisher-{i}")))
        .collect();
    // One outbox relay per database: the catalog's first, then each shard's.
    let databases: Vec<String> = std::iter::once("catalog".to_string())
        .chain((0..settings.shard_count()).map(|i| format!("shard-{i}")))
        .collect();
    let relays: Vec<Arc<RelaySlot>> = databases
        .iter()
        .filter(|_| role.persists())
        .map(|db| slots.make(&format!("relay-{db}")))
        .collect();
    let registry = slots.make("pod-registry");
    let p = &settings.pod;
    let timing = settings.in_flight_timing();
    let fleet = Fleet {
        registry: registry.clone(),
        clock_skew_ms: crate::config::CLOCK_SKEW_MS,
        released_after_ms: timing.released_after_ms,
    };
    let directory = Arc::new(
        Directory::new(
            catalog.clone(),
            shards.clone(),
            inventory.clone(),
            publishers.clone(),
            q.orders_queue.clone(),
            q.notifications_queue.clone(),
        )
        .with_fleet(fleet),
    );
    // Relays run where events are published; elsewhere a commit wakes nobody (the
    // relays of the worker pods find the rows on their next round).
    let nudge = |i: usize| relays.get(i).cloned().map_or_else(Nudge::none, Nudge::new);

    // shards: the catalog and one actor per order shard
    let mut shard_children = vec![backends.catalog(settings, catalog.clone(), nudge(0), policy)];
    for (i, slot) in shards.into_iter().enumerate() {
        shard_children.push(backends.shard(settings, i, slot, nudge(i + 1), policy));
    }

    // inventory: one actor per partition, and the reconciler
    let mut inventory_children: Vec<Child> = inventory
        .into_iter()
        .enumerate()
        .map(|(i, slot)| backends.inventory(settings, i, slot, &catalog, policy))
        .collect();
    if role.takes_orders() {
        // Safe on every api pod at once: each round's releases and rebuilds are
        // single scripts in the partition, which decide on what they find there.
        let reconcile = Duration::from_millis(settings.inventory.reconcile_every_ms);
        inventory_children.push(supervisors::worker(
            slots.make("reconciler"),
            Arc::new(ReconcilerConnect {
                directory: directory.clone(),
            }),
            1,
            Some(reconcile),
            policy,
        ));
        let sweep = Duration::from_millis(settings.payments.sweep_every_ms);
        inventory_children.push(supervisors::worker(
            slots.make("payment-sweeper"),
            Arc::new(SweeperConnect {
                directory: directory.clone(),
            }),
            1,
            Some(sweep),
            policy,
        ));
    }

    // consumers: order publishers, order consumers, notification consumers
    let mut consumer_children: Vec<Child> = publishers
        .into_iter()
        .map(|slot| backends.publisher(settings, slot, policy))
        .collect();
    let source = backends.source(settings);
    let orders = Arc::new(OrderHandler {
        directory: directory.clone(),
        give_back: timing.give_back,
        unheard_after_ms: timing.unheard_after_ms,
    });
    let (order_consumers, notification_consumers) = if role.persists() {
        (q.order_consumers, q.notification_consumers)
    } else {
        (0, 0)
    };
    let mut order_nodes = Vec::new();
    for i in 0..order_consumers {
        let stats = namer.node(&format!("order-consumer-{i}"), Kind::Actor);
        order_nodes.push(stats.clone());
        let handler = orders.clone();
        let child = consumer(
            stats,
            settings,
            &q.orders_queue,
            source.clone(),
            handler,
            policy,
        );
        consumer_children.push(child);
    }
    let notifications = Arc::new(NotificationHandler {
        directory: directory.clone(),
        webhook: webhook(settings),
    });
    for i in 0..notification_consumers {
        let stats = namer.node(&format!("notification-consumer-{i}"), Kind::Actor);
        let (queue, handler) = (&q.notifications_queue, notifications.clone());
        consumer_children.push(consumer(
            stats,
            settings,
            queue,
            source.clone(),
            handler,
            policy,
        ));
    }

    // events: one outbox relay per database, then the event consumers
    let event_children = if role.persists() {
        events(
            settings, backends, &directory, databases, &relays, &slots, policy,
        )?
    } else {
        Vec::new()
    };

    let mut subtrees: Vec<Child> = [
        ("shards", shard_children),
        ("inventory", inventory_children),
        ("consumers", consumer_children),
        ("events", event_children),
    ]
    .into_iter()
    .filter(|(_, children)| !children.is_empty())
    .map(|(name, children)| {
        supervisors::supervisor(namer.node(name, Kind::Supervisor), policy, children)
    })
    .collect();

    // The pod's row in the fleet registry, heartbeated with what it holds.
    let connect = RegistryConnect {
        url: backends.catalog_url(settings),
        pod,
        forget_after_ms: (p.forget_after_secs * 1000) as i64,
        ahead_ms: (p.gone_after_secs * 1000) as i64,
        in_flight: directory.in_flight.clone(),
    };
    let every = Duration::from_secs(p.heartbeat_secs);
    subtrees.push(supervisors::worker(
        registry.clone(),
        Arc::new(connect),
        64,
        Some(every),
        policy,
    ));

    let root_stats = namer.node("root", Kind::Supervisor);
    let root = supervisors::spawn_root(root_stats, policy, subtrees).await?;
    Ok(Built {
        directory,
        root,
        registry,
        order_consumers: order_nodes,
        quiesce: namer.quiesce.clone(),
    })
}

/// The outbox relays (one per database) and the event consumers.
fn events(
    settings: &Settings,
    backends: &Backends,
    directory: &Arc<Directory>,
    databases: Vec<String>,
    relays: &[Arc<RelaySlot>],
    slots: &Slots<'_>,
    policy: &Policy,
) -> Result<Vec<Child>, StartError> {
    let ev = &settings.events;
    let bus = backends.event_bus(settings)?;
    let urls = std::iter::once(backends.catalog_url(settings))
        .chain((0..settings.shard_count()).map(|i| backends.shard_url(settings, i)));
    let mut event_children = Vec::new();
    for ((database, url), relay) in databases.into_iter().zip(urls).zip(relays.iter()) {
        let connect = RelayConnect {
            database,
            url,
            bus: bus.clone(),
            batch: ev.relay_batch,
            retention: Duration::from_secs(ev.outbox_retention_secs),
            exclusive: settings.mode == Mode::Cluster,
            linger: Duration::from_millis(ev.linger_ms),
        };
        let every = Duration::from_millis(ev.relay_every_ms);
        let child =
            supervisors::worker(relay.clone(), Arc::new(connect), 1024, Some(every), policy);
        event_children.push(child);
    }
    let reports = || ReportStore::new(backends.catalog_url(settings));
    let handlers: [Arc<dyn EventHandler>; 3] = [
        Arc::new(Analytics { store: reports() }),
        Arc::new(InventoryCheck::new(
            directory.clone(),
            Duration::from_secs(1),
        )),
        Arc::new(Reporting { store: reports() }),
    ];
    for handler in handlers {
        let slot = slots.make(&format!("{}-consumer", handler.name()));
        let connect = ConsumerConnect {
            bus: bus.clone(),
            handler,
            batch: ev.consumer_batch,
            linger: Duration::from_millis(ev.linger_ms),
        };
        // Consumers poll continuously (each poll waits for events itself).
        let every = Duration::from_millis(10);
        let child = supervisors::worker(slot, Arc::new(connect), 1, Some(every), policy);
        event_children.push(child);
    }
    Ok(event_children)
}
