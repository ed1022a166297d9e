//! The payment sweeper: every `payments.sweep_every_ms` it expires the orders whose
//! payment window lapsed and gives their units back to their sales
//! ([`crate::orders::payment::sweep`]). It runs on every pod that takes orders; each
//! order expires in one shard transaction and its units return once, whoever sweeps.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use super::directory::Directory;
use crate::orders::payment::{sweep, Swept};
use crate::supervisors::slot::Wake;
use crate::supervisors::worker::{Backend, Batch, Connect, Tick};

pub struct SweeperConnect {
    pub directory: Arc<Directory>,
}

pub struct Sweeper {
    directory: Arc<Directory>,
}

#[ractor::async_trait]
impl Connect for SweeperConnect {
    type Backend = Sweeper;

    async fn connect(&self) -> Result<Sweeper, ActorProcessingErr> {
        Ok(Sweeper {
            directory: self.directory.clone(),
        })
    }
}

#[ractor::async_trait]
impl Backend for Sweeper {
    type Msg = Wake;

    async fn process(&mut self, _wakes: Batch<Self>) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        let Swept {
            expired,
            returned,
            told: _,
        } = sweep(&self.directory).await;
        if expired > 0 || returned > 0 {
            tracing::info!(
                expired,
                returned,
                "orders unpaid at their payBy expired; their units are back on sale"
            );
        }
        Ok(Tick::idle())
    }
}
