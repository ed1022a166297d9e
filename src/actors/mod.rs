//! Leaf actors and what they serve. Each owns its backend connection and is the only
//! code that talks to that backend; a backend failure fails the actor, and its
//! supervisor restarts it. The [`directory`] is where callers find them.

pub mod directory;
pub mod event_consumers;
pub mod inflight;
pub mod inventory;
pub mod payment_sweeper;
pub mod queue;
pub mod reconciler;
pub mod recovery;
pub mod registry;
pub mod relay;
