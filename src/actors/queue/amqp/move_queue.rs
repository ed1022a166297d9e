//! Moving a queue's messages into another (`flashsale queue move`), for a change of
//! queue type: nothing leaves the old queue before the new one has confirmed it.

use super::*;

/// What [`move_queue`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Moved {
    pub messages: u64,
    /// Whether the emptied queue was deleted: it is kept while a consumer still
    /// reads it or a message arrived after the last one moved.
    pub deleted: bool,
}

/// Messages moved per round: published together, confirmed together, then
/// acknowledged together in the queue they came from.
const MOVE_BATCH: usize = 256;

/// Moves every message of the queue `from` into the queue `to` (declared durable, of
/// type `kind`, if missing), then deletes `from` once it is empty and unused. A message
/// leaves `from` only after `to` has confirmed it, so a failure at any point loses
/// nothing: what was not acknowledged goes back to `from`, and a message both
/// confirmed and given back is delivered twice, which claims tell apart (a redelivery).
/// `progress` hears the messages moved so far and how many `from` held at the start.
pub async fn move_queue(
    url: &str,
    from: &str,
    to: &str,
    kind: QueueKind,
    mut progress: impl FnMut(u64, u64),
) -> Result<Moved, ActorProcessingErr> {
    use lapin::options::{BasicGetOptions, QueueDeleteOptions};

    if from == to {
        return Err("a queue cannot be moved into itself".into());
    }
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let source = conn.create_channel().await?;
    let held = match queue_depth(&source, from).await {
        Ok(n) => n,
        Err(e) => return Err(format!("no queue {from} to move: {e}").into()),
    };
    let mut sink = conn.create_channel().await?;
    declare_queue(&conn, &mut sink, to, kind).await?;
    sink.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut moved = 0;
    progress(moved, held);
    loop {
        let mut batch = Vec::with_capacity(MOVE_BATCH);
        while batch.len() < MOVE_BATCH {
            match source
                .basic_get(from.into(), BasicGetOptions { no_ack: false })
                .await?
            {
                Some(m) => batch.push(m.delivery),
                None => break,
            }
        }
        let Some(last) = batch.last() else { break };
        let mut confirms = Vec::with_capacity(batch.len());
        for d in &batch {
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let publish =
                sink.basic_publish("".into(), to.into(), options, &d.data, d.properties.clone());
            confirms.push(publish.await?);
        }
        for c in confirms {
            if !matches!(c.await?, Confirmation::Ack(None)) {
                return Err(format!("{to} did not take a message; nothing was lost").into());
            }
        }
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        moved += batch.len() as u64;
        progress(moved, held);
    }
    let options = QueueDeleteOptions {
        if_unused: true,
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    let deleted = match source.queue_delete(from.into(), options).await {
        Ok(_) => true,
        Err(e) if precondition_failed(&e) => false,
        Err(e) => return Err(e.into()),
    };
    Ok(Moved {
        messages: moved,
        deleted,
    })
}
