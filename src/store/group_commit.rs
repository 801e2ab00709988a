//! Group commit: one flusher thread makes the writes of every writer waiting
//! at that moment durable with one flush, instead of one flush each.
//!
//! A writer commits its change in memory, then calls [`GroupCommit::sync`].
//! The flusher takes the first waiter and every other already queued, runs
//! the flush once, and answers them all with its result. Every write queued
//! before a flush began is covered by it, because a writer queues only after
//! its change is committed; writers that queue during a flush wait for the
//! next one. So concurrent writers share flushes, and each is still durable
//! when it is acknowledged.
//!
//! A writer waits at most [`FLUSH_DEADLINE`]; a flush that runs longer than
//! [`FLUSH_STALL_LIMIT`], or that failed, makes [`GroupCommit::health`] an
//! error (readiness turns off) until a flush succeeds again.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::oneshot;

use super::StoreError;

/// How many times the flusher yields its CPU, when writers come together,
/// before it starts a flush: those already running get to finish their
/// change and join it. A lone writer never waits.
const JOIN_YIELDS: usize = 4;

/// How long a writer waits for the flush that makes its write durable. Past
/// it the write is answered as failed (it may still reach the disk later,
/// as after any timeout).
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// A flush running longer than this is a stalled disk, not a slow one: the
/// store reports itself not ready until it ends.
pub const FLUSH_STALL_LIMIT: Duration = Duration::from_secs(5);

/// Why a flush failed: shared by every writer waiting on that flush.
pub type FlushError = Arc<dyn std::error::Error + Send + Sync>;

/// What one flush tells each writer waiting on it.
type FlushResult = Result<(), FlushError>;

/// How writes share flushes: writes per flush is the batch size.
#[derive(Clone, Default)]
struct Stats {
    flushes: Counter,
    writes: Counter,
}

/// What the flusher is doing: since when its current flush runs, and how
/// the last one ended.
#[derive(Default)]
struct State {
    flushing_since: Option<Instant>,
    failed: Option<FlushError>,
}

pub struct GroupCommit {
    stats: Stats,
    state: Arc<Mutex<State>>,
    waiters: Option<mpsc::Sender<oneshot::Sender<FlushResult>>>,
    thread: Option<JoinHandle<()>>,
    deadline: Duration,
    stall_limit: Duration,
}

impl GroupCommit {
    /// Starts the flusher thread; `flush` makes every write so far durable.
    pub fn start(
        mut flush: impl FnMut() -> FlushResult + Send + 'static,
    ) -> Result<GroupCommit, StoreError> {
        let (waiters, queue) = mpsc::channel::<oneshot::Sender<FlushResult>>();
        let stats = Stats::default();
        let counted = stats.clone();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let thread = thread::Builder::new()
            .name("sts-flusher".into())
            .spawn(move || {
                let mut concurrent = false;
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    batch.extend(queue.try_iter());
                    if concurrent || batch.len() > 1 {
                        for _ in 0..JOIN_YIELDS {
                            thread::yield_now();
                            batch.extend(queue.try_iter());
                        }
                    }
                    concurrent = batch.len() > 1;
                    lock(&shared).flushing_since = Some(Instant::now());
                    let result = flush();
                    {
                        let mut state = lock(&shared);
                        state.flushing_since = None;
                        state.failed = result.as_ref().err().cloned();
                    }
                    counted.flushes.inc();
                    counted.writes.inc_by(batch.len() as u64);
                    for waiter in batch {
                        // A writer that stopped waiting (cancelled) needs no answer.
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::unavailable("cannot start the flusher thread", e))?;
        Ok(GroupCommit {
            stats,
            state,
            waiters: Some(waiters),
            thread: Some(thread),
            deadline: FLUSH_DEADLINE,
            stall_limit: FLUSH_STALL_LIMIT,
        })
    }

    /// With other bounds than [`FLUSH_DEADLINE`] and [`FLUSH_STALL_LIMIT`].
    #[cfg(test)]
    fn bounded(mut self, deadline: Duration, stall_limit: Duration) -> GroupCommit {
        self.deadline = deadline;
        self.stall_limit = stall_limit;
        self
    }

    /// Returns once every write committed before the call is durable, or
    /// fails when that has not happened within the deadline.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let answer = self.enqueue()?;
        match tokio::time::timeout(self.deadline, answer).await {
            Ok(answer) => answer
                .map_err(|_| closing())?
                .map_err(|e| StoreError::unavailable("cannot make the write durable", e)),
            Err(_) => Err(StoreError::Unavailable {
                context: format!(
                    "the write was not confirmed durable within {:?} (the data directory's disk is not answering; the write may still take effect)",
                    self.deadline
                ),
                source: None,
            }),
        }
    }

    /// An error while a flush has run longer than [`FLUSH_STALL_LIMIT`]:
    /// the disk is not answering, and another flush would only queue.
    pub fn stalled(&self) -> Result<(), StoreError> {
        let state = lock(&self.state);
        match state.flushing_since.map(|since| since.elapsed()) {
            Some(running) if running > self.stall_limit => Err(StoreError::Unavailable {
                context: format!(
                    "a flush of the store has not finished for {}s: the data directory's disk is not answering",
                    running.as_secs()
                ),
                source: None,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the last flush failed (and none has succeeded since): a
    /// flush tried again tells whether the disk came back.
    pub fn failing(&self) -> bool {
        lock(&self.state).failed.is_some()
    }

    /// Joins the queue for the next flush (the synchronous half of `sync`).
    fn enqueue(&self) -> Result<oneshot::Receiver<FlushResult>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.waiters
            .as_ref()
            .ok_or_else(closing)?
            .send(reply)
            .map_err(|_| closing())?;
        Ok(answer)
    }

    /// Registers `sts_store_flushes_total` and `sts_store_flushed_writes_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "store_flushes",
            "Flushes of the store to stable storage, each shared by every write waiting on it",
            self.stats.flushes.clone(),
        );
        registry.register(
            "store_flushed_writes",
            "Writes made durable by those flushes (over sts_store_flushes_total: the group-commit batch size)",
            self.stats.writes.clone(),
        );
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn closing() -> StoreError {
    StoreError::Unavailable {
        context: "the store is closing".into(),
        source: None,
    }
}

impl Drop for GroupCommit {
    /// Closes the queue and waits for the thread, so whatever the flush
    /// closure owns (the database, its lock on the data directory) is
    /// released when the store is. (A flush stuck on a dead disk holds this
    /// forever: the sled store drops it off the caller's thread, with a
    /// deadline; see `offload::DropWithin`.)
    fn drop(&mut self) {
        self.waiters.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A flush that counts its calls; the first one reports that it started
    /// and finishes only when let go.
    fn gated_flush(
        result: FlushResult,
    ) -> (
        impl FnMut() -> FlushResult + Send + 'static,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
        Arc<Mutex<usize>>,
    ) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let calls = Arc::new(Mutex::new(0));
        let counted = calls.clone();
        let flush = move || {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            if *calls == 1 {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
            }
            result.clone()
        };
        (flush, started, release, calls)
    }

    #[tokio::test]
    async fn writers_queued_during_a_flush_share_the_next_one() {
        let (flush, started, release, calls) = gated_flush(Ok(()));
        let commit = GroupCommit::start(flush).unwrap();

        let first = commit.enqueue().unwrap();
        started.recv().unwrap();
        // The first flush is running: these ten wait for the next one.
        let rest: Vec<_> = (0..10).map(|_| commit.enqueue().unwrap()).collect();
        release.send(()).unwrap();
        assert!(first.await.unwrap().is_ok());
        for answer in rest {
            assert!(answer.await.unwrap().is_ok());
        }
        assert_eq!(*calls.lock().unwrap(), 2, "eleven writes, two flushes");
        assert_eq!(commit.stats.flushes.get(), 2);
        assert_eq!(commit.stats.writes.get(), 11);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_write_waiting_on_it() {
        let failure: FlushError = Arc::new(std::io::Error::other("disk on fire"));
        let (flush, started, release, _) = gated_flush(Err(failure));
        let commit = GroupCommit::start(flush).unwrap();
        let first = commit.enqueue().unwrap();
        started.recv().unwrap();
        let second = commit.enqueue().unwrap();
        release.send(()).unwrap();
        for answer in [first, second] {
            let error = answer.await.unwrap().unwrap_err();
            assert_eq!(error.to_string(), "disk on fire");
        }
    }

    #[tokio::test]
    async fn a_stalled_flush_fails_its_writers_at_the_deadline_and_says_it_is_stalled() {
        let (flush, started, release, _) = gated_flush(Ok(()));
        let limit = Duration::from_millis(20);
        let commit = GroupCommit::start(flush).unwrap().bounded(limit, limit);
        let late = commit.sync().await.unwrap_err();
        assert!(
            late.to_string().contains("not confirmed durable within"),
            "{late}"
        );
        started.recv().unwrap();
        // Past the stall limit (a wait for time to pass, not for an event).
        std::thread::sleep(limit * 2);
        assert!(
            commit
                .stalled()
                .unwrap_err()
                .to_string()
                .contains("has not finished for")
        );
        release.send(()).unwrap();
        commit.sync().await.unwrap();
        commit.stalled().unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_is_failing_until_one_succeeds_and_is_no_stall() {
        let failures = Arc::new(Mutex::new(1));
        let left = failures.clone();
        let commit = GroupCommit::start(move || {
            let mut left = left.lock().unwrap();
            if *left == 0 {
                return Ok(());
            }
            *left -= 1;
            Err(Arc::new(std::io::Error::other("no space left")) as FlushError)
        })
        .unwrap();
        commit.sync().await.unwrap_err();
        assert!(commit.failing());
        // Failed, not stalled: a flush may be tried again at once.
        commit.stalled().unwrap();
        commit.sync().await.unwrap();
        assert!(!commit.failing());
    }

    #[tokio::test]
    async fn sync_returns_after_the_flush_and_drop_stops_the_thread() {
        let flushed = Arc::new(Mutex::new(0));
        let counted = flushed.clone();
        let commit = GroupCommit::start(move || {
            *counted.lock().unwrap() += 1;
            Ok(())
        })
        .unwrap();
        commit.sync().await.unwrap();
        assert_eq!(*flushed.lock().unwrap(), 1);
        drop(commit);
        // The thread has ended, so the closure (and its clone of the count) is gone.
        assert_eq!(Arc::strong_count(&flushed), 1);
    }
}
