//! HTTP integration scenarios against the real services.

mod admin;
mod errors;
mod helpers;
mod inventory;
mod orders;
mod resilience;
