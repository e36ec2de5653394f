//! End-to-end acknowledgement, carried with the data.
//!
//! A gateway that must tell its sender when data is durable creates a
//! [`BatchAck`] for one incoming message, attaches an [`Ack`] to every record
//! made from it and awaits the batch's [`AckStatus`]. Sinks never see the
//! gateway: they mark each record's [`Ack`] delivered once it is durable (or
//! let it drop, which counts as a failure). When the last [`Ack`] of a batch
//! is gone, the gateway's receiver resolves with the worst status of all.
//!
//! A record that is lost on the way (a task dies, a queue is dropped at
//! shutdown) drops its [`Ack`] unmarked, so the sender hears `Failed` and
//! keeps its data: the default is "not delivered", never "delivered".

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// Outcome of a batch (or of one record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum AckStatus {
    /// Every record is durable in every sink that had to hold it.
    Delivered = 0,
    /// At least one record was not made durable; the sender should retry.
    Failed = 1,
}

impl AckStatus {
    const fn from_u8(v: u8) -> Self {
        if v == 0 {
            AckStatus::Delivered
        } else {
            AckStatus::Failed
        }
    }
}

/// State shared by every [`Ack`] of one batch; reports when the last drops.
#[derive(Debug)]
struct Shared {
    status: AtomicU8,
    notify: Option<oneshot::Sender<AckStatus>>,
    /// Budget the batch holds while any of its records is in the pipeline
    /// (bytes in flight); given back when the last record settles.
    _budget: Option<OwnedSemaphorePermit>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(tx) = self.notify.take() {
            // The receiver may be gone (sender disconnected); nothing to tell then.
            let _ = tx.send(AckStatus::from_u8(self.status.load(Ordering::Acquire)));
        }
    }
}

/// The gateway's side of one batch: hands out [`Ack`]s, then is dropped or
/// turned into the receiver of the batch's outcome.
#[derive(Debug)]
pub struct BatchAck {
    shared: Arc<Shared>,
    rx: oneshot::Receiver<AckStatus>,
}

impl BatchAck {
    /// A new, empty batch.
    pub fn new() -> Self {
        Self::holding(None)
    }

    /// A new batch that keeps `budget` until its last record has settled,
    /// whether or not anyone waits for the outcome.
    pub fn holding(budget: Option<OwnedSemaphorePermit>) -> Self {
        let (tx, rx) = oneshot::channel();
        Self {
            shared: Arc::new(Shared {
                status: AtomicU8::new(AckStatus::Delivered as u8),
                notify: Some(tx),
                _budget: budget,
            }),
            rx,
        }
    }

    /// An acknowledgement handle for one more record of this batch.
    pub fn ack(&self) -> Ack {
        Ack {
            shared: Some(Arc::clone(&self.shared)),
            status: AckStatus::Failed,
        }
    }

    /// Stops handing out acks and waits until every record is settled.
    ///
    /// A batch with no records resolves at once as `Delivered`.
    pub async fn wait(self) -> AckStatus {
        let BatchAck { shared, rx } = self;
        drop(shared);
        // The sender lives in `Shared`, which always sends on drop.
        rx.await.unwrap_or(AckStatus::Failed)
    }
}

impl Default for BatchAck {
    fn default() -> Self {
        Self::new()
    }
}

/// One record's acknowledgement handle. Mark it with [`Ack::delivered`]
/// once the record is durable; dropping it unmarked reports a failure.
#[derive(Debug)]
pub struct Ack {
    shared: Option<Arc<Shared>>,
    status: AckStatus,
}

impl Ack {
    /// A handle nobody waits for (e.g. the embedded broker, which already
    /// sent its PUBACK). Marking or dropping it does nothing.
    pub const fn none() -> Self {
        Ack {
            shared: None,
            status: AckStatus::Failed,
        }
    }

    /// Whether a sender waits on this handle.
    pub fn is_tracked(&self) -> bool {
        self.shared.is_some()
    }

    /// The record is durable.
    pub fn delivered(mut self) {
        self.status = AckStatus::Delivered;
    }

    /// The record could not be made durable.
    pub fn failed(self) {}

    /// Another handle for the same batch, e.g. when one record fans out to
    /// two sinks: the batch completes only when both are settled.
    pub fn split(&self) -> Ack {
        Ack {
            shared: self.shared.clone(),
            status: AckStatus::Failed,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.status.fetch_max(self.status as u8, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    }

    #[test]
    fn all_delivered_is_delivered() {
        let batch = BatchAck::new();
        let acks: Vec<Ack> = (0..3).map(|_| batch.ack()).collect();
        for ack in acks {
            ack.delivered();
        }
        assert_eq!(run(batch.wait()), AckStatus::Delivered);
    }

    #[test]
    fn one_dropped_unmarked_fails_the_batch() {
        let batch = BatchAck::new();
        let a = batch.ack();
        let b = batch.ack();
        a.delivered();
        drop(b);
        assert_eq!(run(batch.wait()), AckStatus::Failed);
    }

    #[test]
    fn split_handles_must_all_be_delivered() {
        let batch = BatchAck::new();
        let a = batch.ack();
        let a2 = a.split();
        a.delivered();
        a2.failed();
        assert_eq!(run(batch.wait()), AckStatus::Failed);
    }

    #[test]
    fn waits_for_the_last_ack() {
        run(async {
            let batch = BatchAck::new();
            let a = batch.ack();
            let waiter = tokio::spawn(batch.wait());
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            a.delivered();
            assert_eq!(waiter.await.ok(), Some(AckStatus::Delivered));
        });
    }

    #[test]
    fn empty_batch_is_delivered() {
        assert_eq!(run(BatchAck::new().wait()), AckStatus::Delivered);
    }

    #[test]
    fn the_budget_is_held_until_the_last_record_settles() {
        let budget = Arc::new(tokio::sync::Semaphore::new(10));
        let permit = Arc::clone(&budget).try_acquire_many_owned(4).ok();
        let batch = BatchAck::holding(permit);
        let a = batch.ack();
        drop(batch); // nobody waits for the outcome
        assert_eq!(budget.available_permits(), 6, "still in the pipeline");
        a.delivered();
        assert_eq!(budget.available_permits(), 10, "given back when settled");
    }

    #[test]
    fn untracked_ack_is_inert() {
        let ack = Ack::none();
        assert!(!ack.is_tracked());
        ack.delivered();
    }
}
