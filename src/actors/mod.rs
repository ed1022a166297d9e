//! Leaf actors. Each owns its backend connection and is the only code that talks to
//! that backend; a backend failure fails the actor, and its supervisor restarts it.

pub mod catalog;
pub mod inventory;
pub mod orders;
pub mod queue;
pub mod reconciler;
pub mod shard;
pub mod worker;
