//! The embedded default store, on sled 0.34: one data directory, one process.
//!
//! Layout: tree `tokens` maps the id (8 bytes, big-endian, so key order is id
//! order) to a protobuf-encoded [`Record`] (versioned: [`RECORD_FORMAT`]);
//! tree `by_hash` maps the 32-byte hash of each of a token's secrets (the
//! current one, and the previous one while a rotation keeps it) to the id;
//! tree `meta` keeps the token and event counts; tree `outbox` maps a
//! sequence number (8 bytes, big-endian: key order is the order events
//! happened) to an [`OutboxRecord`]; tree `signals` maps a token's id to the
//! expiry step last announced for its expiration. A change and its event
//! are one transaction, and every write is followed by a flush (fsync)
//! before it is acknowledged. The background flush timer is off: nothing is ever
//! written without a caller waiting on it.
//! Concurrent writers share flushes ([`GroupCommit`]).

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use prometheus_client::registry::Registry;
use prost::Message;
use sled::{
    Transactional,
    transaction::{
        ConflictableTransactionError, TransactionError, TransactionalTree,
        UnabortableTransactionError,
    },
};

use super::{
    Cause, Imported, KeepAdmin, Outcome, Store, StoreError, Use,
    group_commit::{FlushError, GroupCommit},
    offload::{DropWithin, Lane, Offload},
    reserve::Reserve,
    stale,
};
use crate::{
    events::{Draft, Event, Expiry, OutboxStats, Pending, Settle},
    model::{
        Change, Etag, ListFilter, NewToken, ServiceToken, StoredParts, StoredToken, TokenId,
        TokenSummary, takes_admin_away,
    },
    token::TokenHash,
};

/// Free space kept on the data directory's disk for deletes and disables
/// unless told otherwise, held in a ballast file (see [`super::reserve`]).
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

/// Memory sled may keep of the store's pages. Its own default (1 GiB) let
/// one pass over a million tokens (the token counts, every minute) hold
/// 400 MiB; past this the pages come from the operating system's cache.
/// Smaller costs more than it saves: at 16 MiB the pass over a million
/// tokens took three times as long (BENCHMARKS.md).
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 48 * 1024 * 1024;

/// Attempts at drawing an id that is not taken. With 2^53 ids a second
/// attempt is already vanishingly rare.
const ID_ATTEMPTS: usize = 8;

/// The record format this release writes. Records of the first release
/// carry no format (read as 0) and none of the fields from tag 7 on; a
/// record from a later release than this one is refused, not misread.
const RECORD_FORMAT: u32 = 2;

/// The on-disk form of one token. Tags are a storage format: never reuse one.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    expiration: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    created_at: Option<prost_types::Timestamp>,
    #[prost(bytes = "vec", tag = "6")]
    token_hash: Vec<u8>,
    #[prost(string, tag = "7")]
    description: String,
    #[prost(btree_map = "string, string", tag = "8")]
    labels: BTreeMap<String, String>,
    #[prost(bool, tag = "9")]
    disabled: bool,
    #[prost(message, optional, tag = "10")]
    last_used_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "11")]
    created_by: String,
    #[prost(message, optional, tag = "12")]
    updated_at: Option<prost_types::Timestamp>,
    #[prost(bytes = "vec", optional, tag = "13")]
    previous_hash: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    previous_expiration: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "15")]
    previous_last_used_at: Option<prost_types::Timestamp>,
    #[prost(uint32, tag = "16")]
    format: u32,
}

impl Record {
    fn of(stored: &StoredToken) -> Record {
        let token = &stored.token;
        let previous = token.previous_secret;
        Record {
            id: token.id.get(),
            name: token.name.as_str().to_owned(),
            roles: token.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            expiration: token.expiration.map(Into::into),
            created_at: Some(token.created_at.into()),
            token_hash: stored.hash.as_bytes().to_vec(),
            description: token.description.as_str().to_owned(),
            labels: token.labels.as_map().clone(),
            disabled: token.disabled,
            last_used_at: token.last_used_at.map(Into::into),
            created_by: token.created_by.clone(),
            updated_at: Some(token.updated_at.into()),
            previous_hash: stored.previous_hash.map(|h| h.as_bytes().to_vec()),
            previous_expiration: previous.map(|p| p.expiration.into()),
            previous_last_used_at: previous.and_then(|p| p.last_used_at).map(Into::into),
            format: RECORD_FORMAT,
        }
    }

    fn decode_checked(bytes: &[u8]) -> Result<Record, StoreError> {
        let record = Record::decode(bytes)
            .map_err(|e| StoreError::corrupt("a token record is undecodable", e))?;
        if record.format > RECORD_FORMAT {
            return Err(StoreError::Corrupt {
                context: format!(
                    "token {}: its record has format {}, written by a later release (this one reads formats up to {RECORD_FORMAT})",
                    record.id, record.format
                ),
                source: None,
            });
        }
        Ok(record)
    }

    /// Re-parses everything, so a damaged record is reported, never served.
    fn decode_stored(bytes: &[u8]) -> Result<StoredToken, StoreError> {
        let record = Record::decode_checked(bytes)?;
        let corrupt = |e: Cause| StoreError::corrupt(format!("token {}", record.id), e);
        let time =
            |ts: prost_types::Timestamp| SystemTime::try_from(ts).map_err(|e| corrupt(e.into()));
        let created_at = record
            .created_at
            .ok_or_else(|| corrupt("the record has no created_at".into()))?;
        StoredToken::from_parts(StoredParts {
            id: record.id,
            hash: &record.token_hash,
            name: &record.name,
            roles: &record.roles,
            expiration: record.expiration.map(time).transpose()?,
            created_at: time(created_at)?,
            description: &record.description,
            labels: &record.labels,
            disabled: record.disabled,
            last_used_at: record.last_used_at.map(time).transpose()?,
            created_by: &record.created_by,
            updated_at: record.updated_at.map(time).transpose()?,
            previous_hash: record.previous_hash.as_deref(),
            previous_expiration: record.previous_expiration.map(time).transpose()?,
            previous_last_used_at: record.previous_last_used_at.map(time).transpose()?,
        })
        .map_err(|e| corrupt(e.into()))
    }
}

/// One event in the outbox. Tags are a storage format: never reuse one.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    kind: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    occurred_at: Option<prost_types::Timestamp>,
    /// The webhooks (`WebhookUrl::key`) that have it.
    #[prost(string, repeated, tag = "5")]
    delivered_to: Vec<String>,
}

impl OutboxRecord {
    fn of(event: &Event) -> OutboxRecord {
        OutboxRecord {
            id: event.id.clone(),
            kind: event.kind.clone(),
            body: event.body.clone(),
            occurred_at: Some(event.occurred_at.into()),
            delivered_to: Vec::new(),
        }
    }

    fn occurred_at(&self) -> SystemTime {
        self.occurred_at
            .and_then(|ts| SystemTime::try_from(ts).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Appends `event` to the outbox under `seq`, counting it, inside a
/// transaction.
fn push_event(
    outbox: &TransactionalTree,
    meta: &TransactionalTree,
    seq: u64,
    event: &Event,
) -> Result<(), UnabortableTransactionError> {
    outbox.insert(&seq.to_be_bytes(), OutboxRecord::of(event).encode_to_vec())?;
    let count = decode_count(meta.get(OUTBOX_COUNT_KEY)?) + 1;
    meta.insert(OUTBOX_COUNT_KEY, &count.to_be_bytes())?;
    Ok(())
}

/// What `signals` keeps per token: the expiration (microseconds since the
/// epoch) the step was announced for, then the step.
fn signal_value(expiration: SystemTime, step: Expiry) -> [u8; 9] {
    let mut value = [0; 9];
    value[..8].copy_from_slice(&epoch_micros(expiration).to_be_bytes());
    value[8] = step.as_u8();
    value
}

/// The step announced for `expiration`, from a `signals` value.
fn announced(value: Option<&[u8]>, expiration: SystemTime) -> Option<Expiry> {
    let value = value?;
    let (at, step) = (value.get(..8)?, value.get(8)?);
    let at = i64::from_be_bytes(at.try_into().ok()?);
    (at == epoch_micros(expiration))
        .then(|| Expiry::from_u8(*step))
        .flatten()
}

fn epoch_micros(at: SystemTime) -> i64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// The later of two optional times, as a record keeps it.
fn latest(kept: Option<prost_types::Timestamp>, at: SystemTime) -> Option<prost_types::Timestamp> {
    let kept_time = kept.and_then(|ts| SystemTime::try_from(ts).ok());
    match kept_time {
        Some(kept_time) if kept_time >= at => kept,
        _ => Some(at.into()),
    }
}

/// Why an insert transaction gave up.
enum InsertAbort {
    IdTaken,
    HashTaken,
}

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
    meta: sled::Tree,
    outbox: sled::Tree,
    signals: sled::Tree,
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
        let meta = db.open_tree("meta").map_err(unavailable)?;
        let outbox = db.open_tree("outbox").map_err(unavailable)?;
        let signals = db.open_tree("signals").map_err(unavailable)?;
        if meta.get(COUNT_KEY).map_err(unavailable)?.is_none() {
            // A store written before the count was kept: count once.
            let count = tokens.len() as u64;
            meta.insert(COUNT_KEY, &count.to_be_bytes())
                .map_err(unavailable)?;
            db.flush().map_err(unavailable)?;
        }
        let trees = Trees {
            changes: Mutex::new(()),
            flusher: start_flusher(db.clone(), dir)?,
            not_before: Mutex::default(),
            db,
            tokens,
            by_hash,
            meta,
            outbox,
            signals,
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

impl Trees {
    /// Before a write that grows the store (see [`Reserve`]).
    fn check_space(&self) -> Result<(), StoreError> {
        self.reserve.check_growth()
    }

    /// Before a write the reserve is kept for: gives the reserve back if
    /// the disk is nearly out of space. The write goes ahead whatever this
    /// finds (a free-space reading that failed included).
    fn tend_reserve(&self) {
        if let Err(e) = self.reserve.tend() {
            tracing::warn!(error = %super::with_causes(&e), "could not tend the disk reserve");
        }
    }

    /// A sequence number for an event, when there is one to write.
    fn event_seq(&self, event: Option<&Draft>) -> Result<Option<u64>, StoreError> {
        event
            .map(|_| self.db.generate_id().map_err(unavailable))
            .transpose()
    }

    fn insert_unsynced(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        draft: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError> {
        let seq = self.event_seq(draft)?;
        for _ in 0..ID_ATTEMPTS {
            let stored = StoredToken {
                token: ServiceToken::new(TokenId::random(), new, created_at),
                hash,
                previous_hash: None,
            };
            let record = Record::of(&stored);
            let event = draft.map(|d| d.event(&stored.token, &stored.token));
            let key = stored.token.id.get().to_be_bytes();
            let trees = (&self.tokens, &self.by_hash, &self.meta, &self.outbox);
            let outcome = trees.transaction(|(tokens, by_hash, meta, outbox)| {
                if tokens.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(InsertAbort::IdTaken));
                }
                if by_hash.get(hash.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(InsertAbort::HashTaken));
                }
                tokens.insert(&key, record.encode_to_vec())?;
                by_hash.insert(hash.as_bytes(), &key)?;
                let count = decode_count(meta.get(COUNT_KEY)?) + 1;
                meta.insert(COUNT_KEY, &count.to_be_bytes())?;
                if let (Some(seq), Some(event)) = (seq, &event) {
                    push_event(outbox, meta, seq, event)?;
                }
                Ok(())
            });
            match outcome {
                Ok(()) => return Ok(stored.token),
                Err(TransactionError::Abort(InsertAbort::IdTaken)) => continue,
                Err(TransactionError::Abort(InsertAbort::HashTaken)) => {
                    return Err(StoreError::duplicate_hash());
                }
                Err(TransactionError::Storage(e)) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::IdExhausted)
    }

    fn import_unsynced(&self, stored: &StoredToken) -> Result<Imported, StoreError> {
        let token = &stored.token;
        let key = token.id.get().to_be_bytes();
        let record = Record::of(stored).encode_to_vec();
        let hash = stored.hash.as_bytes();
        let trees = (&self.tokens, &self.by_hash, &self.meta);
        let outcome = trees.transaction(|(tokens, by_hash, meta)| {
            if let Some(existing) = tokens.get(key)? {
                let same = Record::decode(&*existing).is_ok_and(|r| r.token_hash == hash);
                return Ok(if same {
                    Imported::AlreadyThere
                } else {
                    Imported::Conflict(format!("id {} holds another token", token.id))
                });
            }
            for hash in stored.hashes() {
                if by_hash.get(hash.as_bytes())?.is_some() {
                    return Ok(Imported::Conflict(format!(
                        "a hash of token {} belongs to another id",
                        token.id
                    )));
                }
            }
            tokens.insert(&key, record.clone())?;
            for hash in stored.hashes() {
                by_hash.insert(hash.as_bytes(), &key)?;
            }
            let count = decode_count(meta.get(COUNT_KEY)?) + 1;
            meta.insert(COUNT_KEY, &count.to_be_bytes())?;
            Ok(Imported::Added)
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("import", e))
    }

    /// Whether a token other than `id` lets anyone manage tokens through
    /// `keep.horizon()`. A scan, paid only by changes that would take that away
    /// from `id`.
    fn another_admin(&self, id: TokenId, keep: &KeepAdmin) -> Result<bool, StoreError> {
        for entry in self.tokens.iter() {
            let (_, bytes) = entry.map_err(unavailable)?;
            let Ok(stored) = Record::decode_stored(&bytes) else {
                continue;
            };
            if stored.token.id != id && stored.token.is_admin_at(&keep.role, keep.horizon()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The lockout rule for changing `before` into `after` (`None`: deleting
    /// it): what the change would do, when nothing else keeps admin access.
    fn lockout(
        &self,
        before: &ServiceToken,
        after: Option<&ServiceToken>,
        keep: &KeepAdmin,
    ) -> Result<Option<&'static str>, StoreError> {
        if keep.waived {
            return Ok(None);
        }
        match takes_admin_away(before, after, &keep.role, keep.now, keep.horizon()) {
            Some(what) if !self.another_admin(before.id, keep)? => Ok(Some(what)),
            _ => Ok(None),
        }
    }

    fn change_unsynced(
        &self,
        id: TokenId,
        change: &Change,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        draft: Option<&Draft>,
    ) -> Result<Outcome<(ServiceToken, ServiceToken)>, StoreError> {
        let _serial = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let key = id.get().to_be_bytes();
        let Some(bytes) = self.tokens.get(key).map_err(unavailable)? else {
            return Ok(Outcome::NotFound);
        };
        let before = Record::decode_stored(&bytes)?;
        // Under `_serial`: nothing an etag covers changes until the end.
        if let Some(stale) = stale(expected, &before.token) {
            return Ok(stale);
        }
        let after = change.apply(&before, keep.now);
        // Changes are serialized by `_serial`: what `before` says holds.
        if let Err(invalid) = change.check(&after.token) {
            return Ok(Outcome::Invalid(invalid));
        }
        if change.changes_nothing(&before.token, &after.token) {
            return Ok(Outcome::Done((before.token.clone(), before.token)));
        }
        if let Some(what) = self.lockout(&before.token, Some(&after.token), keep)? {
            return Ok(Outcome::Lockout(what));
        }
        // Applied again to the record as the transaction reads it: a last
        // use recorded since is kept (only uses change a record outside
        // `changes`, and they touch nothing the check above looked at).
        let seq = self.event_seq(draft)?;
        let trees = (&self.tokens, &self.by_hash, &self.meta, &self.outbox);
        let outcome = trees.transaction(|(tokens, by_hash, meta, outbox)| {
            let Some(bytes) = tokens.get(key)? else {
                return Ok(None);
            };
            let current =
                Record::decode_stored(&bytes).map_err(ConflictableTransactionError::Abort)?;
            let after = change.apply(&current, keep.now);
            for gone in current
                .hashes()
                .filter(|h| !after.hashes().any(|a| a == *h))
            {
                by_hash.remove(gone.as_bytes())?;
            }
            for added in after.hashes() {
                by_hash.insert(added.as_bytes(), &key)?;
            }
            tokens.insert(&key, Record::of(&after).encode_to_vec())?;
            if let (Some(seq), Some(draft)) = (seq, draft) {
                push_event(
                    outbox,
                    meta,
                    seq,
                    &draft.event(&current.token, &after.token),
                )?;
            }
            Ok(Some((current.token, after.token)))
        });
        match outcome {
            Ok(Some(changed)) => Ok(Outcome::Done(changed)),
            Ok(None) => Ok(Outcome::NotFound),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(unavailable(e)),
        }
    }

    fn delete_unsynced(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        draft: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError> {
        let _serial = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let key = id.get().to_be_bytes();
        let Some(bytes) = self.tokens.get(key).map_err(unavailable)? else {
            return Ok(Outcome::NotFound);
        };
        if expected.is_some() {
            // A record that cannot be read has no etag anyone was given.
            let before = Record::decode_stored(&bytes)?;
            if let Some(stale) = stale(expected, &before.token) {
                return Ok(stale);
            }
        }
        // An undecodable record can hold no admin access anyone uses: it
        // may always go.
        if let Ok(before) = Record::decode_stored(&bytes)
            && let Some(what) = self.lockout(&before.token, None, keep)?
        {
            return Ok(Outcome::Lockout(what));
        }
        let seq = self.event_seq(draft)?;
        let trees = (
            &self.tokens,
            &self.by_hash,
            &self.meta,
            &self.outbox,
            &self.signals,
        );
        let outcome = trees.transaction(|(tokens, by_hash, meta, outbox, signals)| {
            let Some(bytes) = tokens.remove(&key)? else {
                return Ok(false);
            };
            signals.remove(&key)?;
            // An undecodable record has no description to announce.
            if let (Some(seq), Some(draft), Ok(gone)) = (seq, draft, Record::decode_stored(&bytes))
            {
                push_event(outbox, meta, seq, &draft.event(&gone.token, &gone.token))?;
            }
            let count = decode_count(meta.get(COUNT_KEY)?).saturating_sub(1);
            meta.insert(COUNT_KEY, &count.to_be_bytes())?;
            // The hashes are needed to drop the index entries; an
            // undecodable record is still removed, its entries then point
            // nowhere (harmless).
            if let Ok(record) = Record::decode(&*bytes) {
                by_hash.remove(record.token_hash)?;
                if let Some(previous) = record.previous_hash {
                    by_hash.remove(previous)?;
                }
            }
            Ok(true)
        });
        let deleted = outcome.map_err(|e: TransactionError<()>| transaction_failed("delete", e))?;
        Ok(if deleted {
            Outcome::Done(())
        } else {
            Outcome::NotFound
        })
    }

    /// Announces `step` of the token stored under `key`, found by a scan
    /// expiring at `expiration`, unless the transaction finds it changed
    /// or the step announced since; whether it did.
    fn signal_expiry(
        &self,
        key: &[u8],
        expiration: SystemTime,
        step: Expiry,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let seq = self.db.generate_id().map_err(unavailable)?;
        let trees = (&self.tokens, &self.signals, &self.meta, &self.outbox);
        let outcome = trees.transaction(|(tokens, signals, meta, outbox)| {
            // As the transaction sees it: still there, still this expiration,
            // still not announced.
            let Some(bytes) = tokens.get(key)? else {
                return Ok(false);
            };
            let Ok(current) = Record::decode_stored(&bytes) else {
                return Ok(false);
            };
            let current = current.token;
            if current.expiration != Some(expiration) || current.disabled {
                return Ok(false);
            }
            let done = signals.get(key)?;
            if announced(done.as_deref(), expiration).is_some_and(|done| done >= step) {
                return Ok(false);
            }
            signals.insert(key, &signal_value(expiration, step))?;
            push_event(outbox, meta, seq, &step.event(&current, now))?;
            Ok(true)
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("expiry signal", e))
    }

    fn settle_event(&self, settle: &Settle) -> Result<(), StoreError> {
        let trees = (&self.outbox, &self.meta);
        let outcome = trees.transaction(|(outbox, meta)| {
            match settle {
                Settle::Delivered { seq } => {
                    if outbox.remove(&seq.to_be_bytes())?.is_some() {
                        let count = decode_count(meta.get(OUTBOX_COUNT_KEY)?).saturating_sub(1);
                        meta.insert(OUTBOX_COUNT_KEY, &count.to_be_bytes())?;
                    }
                }
                Settle::Pending {
                    seq, delivered_to, ..
                } => {
                    let key = seq.to_be_bytes();
                    let Some(bytes) = outbox.get(key)? else {
                        return Ok(());
                    };
                    let Ok(mut record) = OutboxRecord::decode(&*bytes) else {
                        return Ok(());
                    };
                    record.delivered_to = delivered_to.clone();
                    outbox.insert(&key, record.encode_to_vec())?;
                }
            }
            Ok(())
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("outbox", e))?;
        let mut not_before = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        match settle {
            Settle::Delivered { seq } => not_before.remove(seq),
            Settle::Pending { seq, retry_at, .. } => not_before.insert(*seq, *retry_at),
        };
        Ok(())
    }

    fn record_use(&self, used: &Use) -> Result<(), StoreError> {
        let key = used.id.get().to_be_bytes();
        let outcome = self.tokens.transaction(|tokens| {
            let Some(bytes) = tokens.get(key)? else {
                return Ok(());
            };
            // A record this release cannot read is left as it is.
            let Ok(mut record) = Record::decode_checked(&bytes) else {
                return Ok(());
            };
            record.last_used_at = latest(record.last_used_at, used.at);
            if let Some(at) = used.previous_at
                && record.previous_hash.is_some()
            {
                record.previous_last_used_at = latest(record.previous_last_used_at, at);
            }
            tokens.insert(&key, record.encode_to_vec())?;
            Ok(())
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("last-used", e))
    }
}

impl Trees {
    fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        let Some(key) = self.by_hash.get(hash.as_bytes()).map_err(unavailable)? else {
            return Ok(None);
        };
        let Some(bytes) = self.tokens.get(&key).map_err(unavailable)? else {
            // A delete removes both entries in one transaction, so this is an
            // index pointing nowhere: treat the token as gone.
            tracing::warn!("hash index entry without a token record; treating as not found");
            return Ok(None);
        };
        let stored = Record::decode_stored(&bytes)?;
        let id = stored.token.id;
        stored
            .verified(hash)
            .map(Some)
            .ok_or_else(|| StoreError::misindexed(id))
    }

    fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError> {
        let key = id.get().to_be_bytes();
        match self.tokens.get(key).map_err(unavailable)? {
            Some(bytes) => Ok(Some(Record::decode_stored(&bytes)?)),
            None => Ok(None),
        }
    }

    fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let start = after.map_or(0, |id| id.get() + 1).to_be_bytes();
        let mut page = Vec::with_capacity(limit.min(1024));
        for entry in self.tokens.range(start..) {
            if page.len() == limit {
                break;
            }
            let (key, bytes) = entry.map_err(unavailable)?;
            match Record::decode_stored(&bytes) {
                Ok(stored) if filter.matches(&stored.token) => page.push(stored),
                Ok(_) => {}
                // One damaged record must not hide every other token.
                Err(e) => {
                    let key = <[u8; 8]>::try_from(&*key).map(u64::from_be_bytes);
                    tracing::error!(error = %e, key = ?key, "skipping a corrupt token record");
                }
            }
        }
        Ok(page)
    }

    fn claim_events(&self, limit: usize, lease: Duration) -> Result<Vec<Pending>, StoreError> {
        let now = SystemTime::now();
        let mut not_before = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        let mut claimed = Vec::new();
        for entry in self.outbox.iter() {
            if claimed.len() == limit {
                break;
            }
            let (key, bytes) = entry.map_err(unavailable)?;
            let seq = <[u8; 8]>::try_from(&*key)
                .map(u64::from_be_bytes)
                .map_err(|e| StoreError::corrupt("an outbox key is not a sequence number", e))?;
            if not_before.get(&seq).is_some_and(|at| *at > now) {
                continue;
            }
            let record = OutboxRecord::decode(&*bytes)
                .map_err(|e| StoreError::corrupt(format!("outbox event {seq}"), e))?;
            not_before.insert(seq, now + lease);
            claimed.push(Pending {
                seq,
                event: Event {
                    occurred_at: record.occurred_at(),
                    id: record.id,
                    kind: record.kind,
                    body: record.body,
                },
                delivered_to: record.delivered_to,
            });
        }
        Ok(claimed)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let pending = decode_count(self.meta.get(OUTBOX_COUNT_KEY).map_err(unavailable)?);
        let oldest = match self.outbox.first().map_err(unavailable)? {
            Some((_, bytes)) => OutboxRecord::decode(&*bytes).ok().map(|r| r.occurred_at()),
            None => None,
        };
        Ok(OutboxStats { pending, oldest })
    }

    fn count(&self) -> Result<u64, StoreError> {
        Ok(decode_count(self.meta.get(COUNT_KEY).map_err(unavailable)?))
    }

    /// The expiry steps due at `now` and not yet announced: a pass over
    /// every record.
    fn expiries_due(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(sled::IVec, SystemTime, Expiry)>, StoreError> {
        let mut due = Vec::new();
        for entry in self.tokens.iter() {
            let (key, bytes) = entry.map_err(unavailable)?;
            let Ok(stored) = Record::decode_stored(&bytes) else {
                continue;
            };
            let token = stored.token;
            let Some(expiration) = token.expiration.filter(|_| !token.disabled) else {
                continue;
            };
            let Some(step) = Expiry::at(expiration, now) else {
                continue;
            };
            let done = self.signals.get(&key).map_err(unavailable)?;
            if announced(done.as_deref(), expiration).is_none_or(|done| done < step) {
                due.push((key, expiration, step));
            }
        }
        Ok(due)
    }

    fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError> {
        let mut summary = TokenSummary::default();
        for entry in self.tokens.iter() {
            let (_, bytes) = entry.map_err(unavailable)?;
            if let Ok(stored) = Record::decode_stored(&bytes) {
                summary.add(&stored.token, now);
            }
        }
        Ok(summary)
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

    async fn record_uses(&self, uses: &[Use]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.write(move |trees| {
            // Last-used times wait for space like any write that grows the store.
            trees.check_space()?;
            uses.iter().try_for_each(|used| trees.record_use(used))
        })
        .await?;
        self.sync().await
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

/// For the fuzz target: a stored record's bytes decoded as every read
/// decodes them; an error, never a panic, for any bytes.
#[doc(hidden)]
pub fn decode_record(bytes: &[u8]) -> Result<StoredToken, StoreError> {
    Record::decode_stored(bytes)
}

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

/// The data directory holds token hashes and metadata: keep it to its owner.
/// Only the last component is created: a missing parent more likely means a
/// volume that is not mounted than a tree to make, and tokens written to the
/// wrong disk would vanish with it.
/// Refuses `dir` if it, or anything in it, belongs to another user or is
/// writable by group or others, saying how to fix it.
#[cfg(unix)]
fn refuse_exposed(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).map_err(|e| {
            StoreError::unavailable(format!("cannot inspect {}", path.display()), e)
        })?;
        let exposed = |problem: String| StoreError::Exposed {
            path: path.clone(),
            problem,
        };
        if metadata.uid() != me {
            return Err(exposed(format!(
                "owned by uid {}, not by the user running sts-server (uid {me}): another user could replace the token store; run sts-server as that user, or `chown -R {me} {}`",
                metadata.uid(),
                dir.display()
            )));
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            let who = if mode & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            };
            return Err(exposed(format!(
                "writable by {who} (mode {mode:04o}): they could replace the token store; run `chmod -R go-w {}` (sts-server creates it 0700)",
                dir.display()
            )));
        }
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| {
                StoreError::unavailable(format!("cannot list {}", path.display()), e)
            })? {
                let entry = entry.map_err(|e| {
                    StoreError::unavailable(format!("cannot list {}", path.display()), e)
                })?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_exposed(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Every file under `dir` readable and writable by its owner alone.
#[cfg(unix)]
fn make_files_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let fail =
            |e| StoreError::unavailable(format!("cannot make {} private", path.display()), e);
        for entry in fs::read_dir(&path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let kind = entry.file_type().map_err(fail)?;
            let mode = if kind.is_dir() {
                pending.push(entry.path());
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                continue;
            };
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode)).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_files_private(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let fail = |why: String, e: std::io::Error| {
        StoreError::unavailable(
            format!("cannot create the data directory {}{why}", dir.display()),
            e,
        )
    };
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Err(fail(
                format!(
                    ": its parent {} does not exist (is the volume mounted?)",
                    parent.display()
                ),
                e,
            ))
        }
        Err(e) => Err(fail(String::new(), e)),
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
