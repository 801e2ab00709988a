//! How the sled store's calls leave the runtime's worker threads: each runs
//! on tokio's blocking pool, a bounded number at a time per lane, and its
//! caller waits with a deadline.
//!
//! sled blocks the thread that calls it: on a page read from disk, on its
//! log's buffers while a flush is stuck, on a transaction's locks. On a
//! stalled or full disk that is forever, and a worker thread stuck there
//! takes every connection it serves with it (health probes, cached checks,
//! the shutdown signal). Here a stuck call holds only a blocking thread and
//! a slot of its lane; its caller gets [`StoreError::Unavailable`] when the
//! deadline passes, and once every slot of a lane is held by stuck calls,
//! new calls of that lane are answered the same way without starting.
//! Reads and writes have lanes of their own, so writes stuck on a dead
//! disk leave reads (which sled mostly serves from memory) their slots.
//! Closing the store ([`DropWithin`]) is bounded the same way: sled flushes
//! when its last handle goes.

use std::sync::Arc;
use std::{ops::Deref, sync::mpsc, time::Duration};

use tokio::sync::Semaphore;

use super::StoreError;

/// Store reads that may run at once, per core this process may run on: a
/// Validate that misses the cache reads once. More threads than this only
/// take turns on the cores (and cost a switch each); fewer leave a core
/// idle while another read waits on the disk.
pub const READ_SLOTS_PER_CORE: usize = 2;

/// The read lane's slots: [`READ_SLOTS_PER_CORE`] for each core, within
/// 2 and 64 (far below tokio's blocking pool, 512 threads).
fn read_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * READ_SLOTS_PER_CORE).clamp(2, 64)
}

/// Store writes that may run at once. sled serializes changes and deletes
/// itself (the lockout rule's scan), so more would only queue inside it.
pub const WRITE_SLOTS: usize = 16;

/// How long a caller waits for one store call (a slot, then the call). A
/// read that takes this long is not a slow disk but a stuck one.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Read,
    Write,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Read => "read",
            Lane::Write => "write",
        }
    }
}

/// The two lanes' slots.
pub struct Offload {
    reads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    deadline: Duration,
}

impl Default for Offload {
    fn default() -> Self {
        Offload::new(read_slots(), WRITE_SLOTS, CALL_DEADLINE)
    }
}

impl Offload {
    pub fn new(reads: usize, writes: usize, deadline: Duration) -> Offload {
        Offload {
            reads: Arc::new(Semaphore::new(reads)),
            writes: Arc::new(Semaphore::new(writes)),
            deadline,
        }
    }

    /// Runs `call` on the blocking pool in `lane` and waits for it until
    /// the deadline. A call still running then goes on (sled cannot be
    /// interrupted) and keeps its slot until it returns.
    pub async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slots = match lane {
            Lane::Read => &self.reads,
            Lane::Write => &self.writes,
        };
        let deadline = tokio::time::Instant::now() + self.deadline;
        let slot = match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            // The semaphore is never closed; a timeout is a full lane.
            Ok(Err(_)) | Err(_) => return Err(self.lane_full(lane)),
        };
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            call()
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable {
                context: format!("a store {} failed (the call panicked)", lane.name()),
                source: None,
            }),
            Err(_) => Err(StoreError::Unavailable {
                context: format!(
                    "a store {} did not finish within {:?} (is the data directory's disk stalled?)",
                    lane.name(),
                    self.deadline
                ),
                source: None,
            }),
        }
    }

    fn lane_full(&self, lane: Lane) -> StoreError {
        StoreError::Unavailable {
            context: format!(
                "every store {} slot is taken by a call waiting on the disk for over {:?}",
                lane.name(),
                self.deadline
            ),
            source: None,
        }
    }
}

/// How long dropping the store waits for sled to close (it flushes): a
/// process must be able to stop whatever its disk does.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Owns a value whose drop may block on the disk (sled's handles flush, a
/// flusher thread is joined): dropped on a thread of its own, waited for
/// until [`CLOSE_DEADLINE`], then left behind with an error in the log.
pub struct DropWithin<T: Send + 'static> {
    inner: Option<T>,
}

impl<T: Send + 'static> DropWithin<T> {
    pub fn new(inner: T) -> DropWithin<T> {
        DropWithin { inner: Some(inner) }
    }
}

impl<T: Send + 'static> Deref for DropWithin<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Taken only by `drop`.
        self.inner.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for DropWithin<T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (closed, wait) = mpsc::channel::<()>();
        let closer = std::thread::Builder::new()
            .name("sts-store-close".into())
            .spawn(move || {
                drop(inner);
                let _ = closed.send(());
            });
        if closer.is_err() {
            tracing::error!("cannot start a thread to close the store; leaving it open");
            return;
        }
        if wait.recv_timeout(CLOSE_DEADLINE).is_err() {
            tracing::error!(
                deadline = ?CLOSE_DEADLINE,
                "the store did not close in time (its disk is not answering): going on without it; writes not yet flushed may be lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_stuck_call_times_out_and_keeps_its_slot_until_it_returns() {
        let offload = Offload::new(1, 1, Duration::from_millis(50));
        let (release, held) = mpsc::channel::<()>();
        let stuck = offload
            .run(Lane::Write, move || {
                held.recv().ok();
                Ok(())
            })
            .await;
        assert!(
            stuck
                .unwrap_err()
                .to_string()
                .contains("did not finish within")
        );
        // The lane's one slot is still held: the next write is refused
        // without starting, while reads go on.
        let refused = offload.run(Lane::Write, || Ok(())).await.unwrap_err();
        assert!(refused.to_string().contains("every store write slot"));
        assert_eq!(offload.run(Lane::Read, || Ok(7)).await.unwrap(), 7);
        release.send(()).unwrap();
        // Once the stuck call returns, its slot is free again.
        // (Each attempt waits up to the deadline for the slot.)
        let mut again = offload.run(Lane::Write, || Ok(1)).await;
        for _ in 0..100 {
            if again.is_ok() {
                break;
            }
            again = offload.run(Lane::Write, || Ok(1)).await;
        }
        assert_eq!(again.unwrap(), 1);
    }

    #[test]
    fn a_drop_that_blocks_is_left_behind_at_the_deadline() {
        struct Stuck(mpsc::Receiver<()>);
        impl Drop for Stuck {
            fn drop(&mut self) {
                let _ = self.0.recv();
            }
        }
        let (_never, stuck) = mpsc::channel();
        let start = std::time::Instant::now();
        drop(DropWithin::new(Stuck(stuck)));
        assert!(start.elapsed() < CLOSE_DEADLINE * 2);
    }

    #[tokio::test]
    async fn a_call_that_panics_is_an_error() {
        let offload = Offload::default();
        let failed = offload
            .run::<()>(Lane::Read, || panic!("boom"))
            .await
            .unwrap_err();
        assert!(failed.to_string().contains("panicked"), "{failed}");
    }
}
