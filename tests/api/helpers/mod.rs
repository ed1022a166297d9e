//! What the scenarios share, split by concern: starting test apps (`app`) and
//! removing what they made (`cleanup`), talking to them over HTTP (`client`), reaching
//! their stores directly (`stores`), waiting with a deadline (`wait`), a TCP proxy to
//! make outages (`proxy`), orders held in the queue (`held_orders`), a receiver of the
//! notification webhook (`webhook`) and a headless browser (`browser`). The names are re-exported here, so a scenario imports them
//! from `helpers` alone.
//!
//! Other test binaries include this module with `#[path = "api/helpers/mod.rs"]`; the
//! modules below resolve next to this file.

mod app;
mod browser;
mod cleanup;
mod client;
mod held_orders;
mod proxy;
mod stores;
mod wait;
mod webhook;

pub use app::{spawn_app, spawn_app_with, Options, TestApp};
pub use browser::chromium;
pub use cleanup::delete_redis_keys;
pub use client::{find, Reply};
pub use flashsale::config::Mode;
pub use proxy::Proxy;
pub use wait::eventually;
pub use webhook::Webhook;
// What `spawn_peer` and `hold_orders` return: no scenario names these types yet, but
// one that keeps a peer or a hold in a variable of its own can.
#[allow(unused_imports)]
pub use {app::Peer, held_orders::HeldOrders};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789-0123456789";
/// The inventory partitions of every test: each on a Redis server of its own
/// (scripts/services.sh starts them), in databases the test script clears.
pub const REDIS_DBS: [&str; 2] = ["redis://127.0.0.1:6380/14", "redis://127.0.0.1:6381/15"];

/// Runs a scenario `async fn name(mode: Mode)` once per mode, as `name::cluster` and
/// `name::embedded`.
#[macro_export]
macro_rules! in_both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name($crate::helpers::Mode::Cluster).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::helpers::Mode::Embedded).await
            }
        }
    };
}
