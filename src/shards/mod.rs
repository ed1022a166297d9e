//! Order shards and the catalog: the stable hash that places users, the PostgreSQL and
//! SQLite backends and the migrations of the catalog and every shard.

pub mod catalog;
pub mod hash;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
