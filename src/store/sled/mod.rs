//! The embedded default store, on sled 0.34: one data directory, one process.
//!
//! Layout: tree `tokens` maps the id (8 bytes, big-endian, so key order is id
//! order) to a protobuf-encoded [`Record`] (versioned: [`RECORD_FORMAT`]);
//! tree `by_hash` maps the 32-byte hash of each of a token's secrets (the
//! current one, and the previous one while a rotation keeps it) to the id;
//! tree `meta` keeps the token and event counts; tree `outbox` maps a
//! sequence number (8 bytes, big-endian: key order is the order events
//! happened) to an [`OutboxRecord`]; tree `signals` maps a token's id to the
//! expiry step last announced for its expiration; tree `order` indexes
//! the list orders (`order.rs`), tree `sessions` the console's sessions
//! (`sessions.rs`). A change and its event
//! are one transaction, and every write is followed by a flush (fsync)
//! before it is acknowledged. The background flush timer is off: nothing is ever
//! written without a caller waiting on it.
//! Concurrent writers share flushes ([`GroupCommit`]).

mod order;
mod outbox;
mod reads;
mod record;
mod sessions;
mod usage;
mod writes;

use std::{
    fs,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use sled::transaction::TransactionError;

use super::{
    Announce, EventOutbox, Imported, KeepAdmin, Outcome, Store, StoreError, Use, UseRecords,
    group_commit::{FlushError, GroupCommit},
    offload::{DropWithin, Lane, Offload},
    reserve::Reserve,
};
use crate::{
    events::{Draft, OutboxStats, Pending, Settle},
    model::{
        Change, Counts, Day, DayUsage, Etag, ListFilter, ListOrder, NewToken, Position,
        ServiceToken, StoredToken, TokenId, TokenSummary,
    },
    token::TokenHash,
};

pub use record::decode_record;

use super::data_dir::{create_private_dir, make_files_private, refuse_exposed};

/// Free space kept on the data directory's disk for deletes and disables
/// unless told otherwise, held in a ballast file (see [`super::reserve`]).
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

/// Memory sled may keep of the store's pages. Its own default (1 GiB) let
/// one pass over a million tokens (the token counts, every minute) hold
/// 400 MiB; past this the pages come from the operating system's cache.
/// Smaller costs more than it saves: at 16 MiB the pass over a million
/// tokens took three times as long (BENCHMARKS.md).
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 48 * 1024 * 1024;

/// Key in the `meta` tree of the number of tokens, kept in the same
/// transactions that add and remove them (sled's own `len` is a full scan).
const COUNT_KEY: &[u8] = b"token_count";
/// Key in `meta` of the number of events in the outbox.
const OUTBOX_COUNT_KEY: &[u8] = b"outbox_count";

/// The file in the data directory that holds sled's log.
const SLED_LOG_FILE: &str = "db";

/// The sled store: its trees, called on the blocking pool.
pub struct SledStore {
    trees: DropWithin<Arc<Trees>>,
    offload: Offload,
}

/// sled's handles and what every call on them needs; shared with the
/// calls running on the blocking pool.
struct Trees {
    /// Held by every change and delete, so the lockout rule's check (a
    /// scan) and the change it allows are one step.
    changes: Mutex<()>,
    tokens: sled::Tree,
    by_hash: sled::Tree,
    /// Each retired secret's hash, to its token's key: looked in only when
    /// `by_hash` knows a hash not.
    retired: sled::Tree,
    meta: sled::Tree,
    outbox: sled::Tree,
    signals: sled::Tree,
    /// Each token's checks per UTC day (`usage.rs`).
    usage: sled::Tree,
    /// The list orders' index (`order.rs`).
    order: sled::Tree,
    /// Console sessions (`sessions.rs`).
    sessions: sled::Tree,
    /// Outbox events not to be offered before a time (claimed, or waiting
    /// out a retry's backoff). In memory: only this process delivers from
    /// this data directory, and after a restart everything is due.
    not_before: Mutex<std::collections::HashMap<u64, SystemTime>>,
    /// Hands out the outbox's sequence numbers (sled's `generate_id`:
    /// increasing, also across restarts).
    db: sled::Db,
    flusher: GroupCommit,
    reserve: Reserve,
}

fn decode_count(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(&*b).ok())
        .map_or(0, u64::from_be_bytes)
}

impl SledStore {
    /// Opens (creating if needed, with mode 0700) the data directory. Fails
    /// with [`StoreError::Locked`] while another process has it open.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_reserve(dir, DEFAULT_DISK_RESERVE)
    }

    /// As [`SledStore::open`], with a disk reserve of `reserve` bytes (0:
    /// none; see [`super::reserve`]). The reserve is what keeps deletes and
    /// disables possible on a filling disk (revoking must never depend on
    /// free space someone else took), and reads too: sled may write while
    /// reading, to consolidate pages.
    pub fn open_with_reserve(dir: &Path, reserve: u64) -> Result<SledStore, StoreError> {
        create_private_dir(dir)?;
        refuse_exposed(dir)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(DEFAULT_SLED_CACHE_BYTES)
            .flush_every_ms(None);
        // A disk that filled while the server was down: giving the reserve
        // back first is what lets sled open (and the server serve checks,
        // deletes, disables). Not after a failed open: sled's failed writes
        // there can leave files it then reads as corrupt.
        Reserve::give_back_to_open(dir, reserve)?;
        let db = config.open().map_err(|e| open_error(dir, e))?;
        let reserve = Reserve::open(dir, reserve)?;
        // The files sled just made got the process's umask: made private
        // here whatever it was (the server also sets umask 077 itself).
        make_files_private(dir)?;
        let tokens = db.open_tree("tokens").map_err(unavailable)?;
        let by_hash = db.open_tree("by_hash").map_err(unavailable)?;
        let retired = db.open_tree("retired").map_err(unavailable)?;
        let meta = db.open_tree("meta").map_err(unavailable)?;
        let outbox = db.open_tree("outbox").map_err(unavailable)?;
        let signals = db.open_tree("signals").map_err(unavailable)?;
        let usage = db.open_tree("usage").map_err(unavailable)?;
        let order = db.open_tree("order").map_err(unavailable)?;
        let sessions = db.open_tree("sessions").map_err(unavailable)?;
        if meta.get(COUNT_KEY).map_err(unavailable)?.is_none() {
            // A store written before the count was kept: count once.
            let count = tokens.len() as u64;
            meta.insert(COUNT_KEY, &count.to_be_bytes())
                .map_err(unavailable)?;
            db.flush().map_err(unavailable)?;
        }
        order::build_if_missing(&db, &tokens, &order, &meta)?;
        let trees = Trees {
            changes: Mutex::new(()),
            flusher: start_flusher(db.clone(), dir)?,
            not_before: Mutex::default(),
            db,
            tokens,
            by_hash,
            retired,
            meta,
            outbox,
            signals,
            usage,
            order,
            sessions,
            reserve,
        };
        Ok(SledStore {
            trees: DropWithin::new(Arc::new(trees)),
            offload: Offload::default(),
        })
    }

    /// Inserts many tokens, syncing once per thousand: for bulk loads
    /// (benchmark pre-fill), where nothing is acknowledged until all is
    /// durable.
    pub async fn insert_many(
        &self,
        tokens: impl IntoIterator<Item = (TokenHash, NewToken)>,
        created_at: SystemTime,
    ) -> Result<u64, StoreError> {
        // In batches, each one call on the write lane and one flush, each
        // within its deadline.
        const BATCH: usize = 1000;
        let mut tokens = tokens.into_iter().peekable();
        let mut count = 0;
        while tokens.peek().is_some() {
            let batch: Vec<_> = tokens.by_ref().take(BATCH).collect();
            count += self
                .write(move |trees| {
                    trees.check_space()?;
                    for (hash, new) in &batch {
                        trees.insert_unsynced(*hash, new, created_at, None)?;
                    }
                    Ok(batch.len() as u64)
                })
                .await?;
            self.sync().await?;
        }
        Ok(count)
    }

    /// Runs `call` on the trees in the read lane (see [`Offload`]).
    async fn read<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let trees = Arc::clone(&self.trees);
        self.offload.run(Lane::Read, move || call(&trees)).await
    }

    /// Runs `call` on the trees in the write lane (see [`Offload`]).
    async fn write<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let trees = Arc::clone(&self.trees);
        self.offload.run(Lane::Write, move || call(&trees)).await
    }

    /// Makes every write so far durable; concurrent callers share one flush.
    async fn sync(&self) -> Result<(), StoreError> {
        self.trees.flusher.sync().await
    }
}

#[async_trait]
impl Store for SledStore {
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        event: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError> {
        let (new, event) = (new.clone(), event.cloned());
        let created = self
            .write(move |trees| {
                trees.check_space()?;
                trees.insert_unsynced(hash, &new, created_at, event.as_ref())
            })
            .await?;
        self.sync().await?;
        Ok(created)
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        let hash = *hash;
        self.read(move |trees| trees.find_by_hash(&hash)).await
    }

    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError> {
        self.read(move |trees| trees.get(id)).await
    }

    async fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let filter = filter.clone();
        self.read(move |trees| trees.list_matching(after, limit, &filter))
            .await
    }

    async fn list_ordered(
        &self,
        order: ListOrder,
        after: Option<&Position>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let filter = filter.clone();
        let after = after.cloned();
        self.read(move |trees| trees.list_ordered(order, after.as_ref(), limit, &filter))
            .await
    }

    async fn import(&self, tokens: &[StoredToken]) -> Result<Vec<Imported>, StoreError> {
        let tokens = tokens.to_vec();
        let outcomes = self
            .write(move |trees| {
                trees.check_space()?;
                tokens
                    .iter()
                    .map(|stored| trees.import_unsynced(stored))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        if outcomes.contains(&Imported::Added) {
            self.sync().await?;
        }
        Ok(outcomes)
    }

    async fn change(
        &self,
        id: TokenId,
        change: &Change,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<(ServiceToken, ServiceToken)>, StoreError> {
        let (change, keep, event) = (change.clone(), keep.clone(), event.cloned());
        let expected = expected.cloned();
        let outcome = self
            .write(move |trees| {
                if change.may_use_the_reserve() {
                    trees.tend_reserve();
                } else {
                    trees.check_space()?;
                }
                trees.change_unsynced(id, &change, &keep, expected.as_ref(), event.as_ref())
            })
            .await?;
        if let Outcome::Done(_) = outcome {
            self.sync().await?;
        }
        Ok(outcome)
    }

    async fn delete(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError> {
        let (keep, expected, event) = (keep.clone(), expected.cloned(), event.cloned());
        let outcome = self
            .write(move |trees| {
                trees.tend_reserve();
                trees.delete_unsynced(id, &keep, expected.as_ref(), event.as_ref())
            })
            .await?;
        if let Outcome::Done(()) = outcome {
            self.sync().await?;
        }
        Ok(outcome)
    }

    async fn signal_expiries(&self, now: SystemTime) -> Result<u64, StoreError> {
        // The scan as a pass of its own, the few announcements as writes.
        let trees = Arc::clone(&self.trees);
        let due = pass(move || trees.expiries_due(now)).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let signalled = self
            .write(move |trees| {
                let mut signalled = 0;
                for (key, expiration, step) in due {
                    if trees.signal_expiry(&key, expiration, step, now)? {
                        signalled += 1;
                    }
                }
                Ok(signalled)
            })
            .await?;
        if signalled > 0 {
            self.sync().await?;
        }
        Ok(signalled)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.read(|trees| trees.count()).await
    }

    /// A pass over every record, on a thread of its own: at a million
    /// tokens it takes seconds, which must not hold a slot of the read
    /// lane, nor stall the requests sharing the runtime.
    async fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError> {
        let trees = Arc::clone(&self.trees);
        pass(move || trees.summary(now)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.sync().await
    }

    /// Not ready while a flush is stalled or the last one failed (trying
    /// one again then, so a disk that came back is seen), or while the
    /// read lane cannot answer a read of one key.
    async fn ready(&self) -> Result<(), StoreError> {
        self.trees.flusher.stalled()?;
        if self.trees.flusher.failing() {
            // Ready again once a flush succeeds, without waiting for a
            // write to try one.
            self.sync().await?;
        }
        self.read(|trees| {
            trees.reserve.tend()?;
            trees.count()
        })
        .await
        .map(drop)
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.trees.flusher.register_metrics(registry);
    }
}

#[async_trait]
impl EventOutbox for SledStore {
    async fn claim_events(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Pending>, StoreError> {
        self.read(move |trees| trees.claim_events(limit, lease))
            .await
    }

    async fn settle_events(&self, settled: &[Settle]) -> Result<(), StoreError> {
        let settled = settled.to_vec();
        self.write(move |trees| settled.iter().try_for_each(|s| trees.settle_event(s)))
            .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.read(|trees| trees.outbox_stats()).await
    }
}

#[async_trait]
impl UseRecords for SledStore {
    async fn record_uses(
        &self,
        uses: &[Use],
        announce: Option<Announce>,
    ) -> Result<u64, StoreError> {
        if uses.is_empty() {
            return Ok(0);
        }
        let uses = uses.to_vec();
        let announced = self
            .write(move |trees| {
                // Last-used times wait for space like any write that grows the store.
                trees.check_space()?;
                let mut announced = 0;
                for used in &uses {
                    announced += u64::from(trees.record_use(used, announce.as_ref())?);
                }
                Ok(announced)
            })
            .await?;
        self.sync().await?;
        Ok(announced)
    }

    async fn record_usage(&self, day: Day, counts: &[(TokenId, Counts)]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let counts = counts.to_vec();
        self.write(move |trees| {
            trees.check_space()?;
            trees.record_usage(day, &counts)
        })
        .await?;
        self.sync().await
    }

    async fn usage(&self, id: TokenId, from: Day, to: Day) -> Result<Vec<DayUsage>, StoreError> {
        self.read(move |trees| trees.usage(id, from, to)).await
    }

    async fn purge_usage(&self, before: Day) -> Result<u64, StoreError> {
        let removed = self.write(move |trees| trees.purge_usage(before)).await?;
        if removed > 0 {
            self.sync().await?;
        }
        Ok(removed)
    }
}

/// The group-commit flusher of `db`. sled 0.34's own `flush_async` deadlocks
/// under concurrent calls (sled issues #1241 and #1308), so its blocking
/// `flush` runs on the flusher's thread.
fn start_flusher(db: sled::Db, dir: &Path) -> Result<GroupCommit, StoreError> {
    // sled 0.34 makes its log stable with `sync_file_range` on Linux, which
    // neither flushes the drive's write cache nor records the file's growth,
    // so a power cut could lose an acknowledged write. An `fdatasync` of the
    // same file after each flush closes that gap.
    let log = fs::File::open(dir.join(SLED_LOG_FILE))
        .map_err(|e| StoreError::unavailable("cannot open the store log for syncing", e))?;
    GroupCommit::start(move || {
        db.flush().map_err(|e| -> FlushError { Arc::new(e) })?;
        log.sync_data().map_err(|e| -> FlushError { Arc::new(e) })
    })
}

/// The nice value of a pass over the store: the lowest CPU priority.
const PASS_NICENESS: i32 = 19;

/// Runs a long pass over the store on a thread of its own at the lowest CPU
/// priority: at a million tokens a pass costs seconds of CPU, which should
/// come from idle time, not from the requests sharing the cores (a pass on
/// tokio's blocking pool took half of a busy core). Where the system
/// refuses the priority, the pass runs all the same.
async fn pass<T: Send + 'static>(
    pass: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sts-store-pass".to_owned())
        .spawn(move || {
            let _ =
                rustix::process::setpriority_process(Some(rustix::thread::gettid()), PASS_NICENESS);
            let _ = done.send(pass());
        })
        .map_err(|e| StoreError::unavailable("cannot start a pass over the store", e))?;
    result.await.map_err(|_| StoreError::Unavailable {
        context: "a pass over the store failed".to_owned(),
        source: None,
    })?
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::unavailable("sled failed", e)
}

fn transaction_failed(what: &str, e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Abort(()) => StoreError::Unavailable {
            context: format!("the {what} transaction was aborted"),
            source: None,
        },
        TransactionError::Storage(e) => unavailable(e),
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    // sled reports a held lock only as text.
    match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: dir.to_owned(),
            }
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            StoreError::unavailable(
                format!(
                    "cannot open the data directory {}: permission denied (it must be readable and writable by this user)",
                    dir.display()
                ),
                e,
            )
        }
        _ => StoreError::unavailable(format!("cannot open {}", dir.display()), e),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_over_the_store_run_at_the_lowest_cpu_priority() {
        let niceness = super::pass(|| {
            Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(niceness, super::PASS_NICENESS);
    }

    #[tokio::test]
    async fn a_pass_that_panics_is_an_error_not_a_hang() {
        let failed = super::pass::<()>(|| panic!("the pass broke")).await;
        assert!(failed.is_err());
    }
}
