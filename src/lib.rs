//! flashsale: an actor-based, reactive flash-sale order engine.
//!
//! Layout, each layer depending only on the ones above it:
//! - [`config`], [`domain`]: layered, validated settings; request newtypes built only
//!   through fallible parsing, and the order and sale records;
//! - [`supervisors`]: the machinery every actor runs on (slots with typed protocols,
//!   the batching worker, child specs, backoff, live stats); it knows no actor;
//! - [`db`]: every database pool, write transactions, which errors break an actor;
//! - [`events`]: the domain event model and its buses (Kafka, the local log);
//! - [`shards`]: the shard and catalog protocols and their backends, the stable hash,
//!   migrations;
//! - [`actors`]: the inventory partitions, queue publishers and consumers, reconciler,
//!   outbox relays, event consumers, and the directory;
//! - [`orders`]: the order saga: intake, lookup, cancellation and the consumers'
//!   persistence, as domain outcomes;
//! - [`http`]: the public and admin APIs, which parse, call and map;
//! - [`app`]: assembles all of it from settings; [`cli`]: the command line.

pub mod actors;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod http;
pub mod orders;
pub mod shards;
pub mod supervisors;
pub mod telemetry;
pub mod tree;
