//! flashsale: an actor-based, reactive flash-sale order engine.
//!
//! Layout:
//! - [`config`]: layered, validated settings;
//! - [`domain`]: request newtypes built only through fallible parsing;
//! - [`supervisors`]: the supervisor tree, the directory of current actors, live stats;
//! - [`actors`]: the leaf actors (inventory partitions, shards, catalog, queue
//!   publishers and consumers, reconciler) and the generic batching worker;
//! - [`shards`]: stable hashing, PostgreSQL backends and migrations;
//! - [`http`]: the public and admin APIs;
//! - [`app`]: assembles all of it from settings.

pub mod actors;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod http;
pub mod shards;
pub mod supervisors;
pub mod telemetry;
pub mod tree;
