//! HTTP integration scenarios against the real services.

#[macro_use]
mod helpers;

mod admin;
mod countdown;
mod errors;
mod events;
mod inventory;
mod orders;
mod payments;
mod promises;
mod queues;
mod reshard;
mod resilience;
