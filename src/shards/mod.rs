//! Order shards: the stable hash that places users, the PostgreSQL backends and the
//! migrations of the catalog and every shard.

pub mod hash;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
