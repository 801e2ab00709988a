//! The storage interface the service is written against, and its backends.
//!
//! Every backend keeps the same promises: only [`TokenHash`]es at rest, never
//! a token; a write returns only once it is durable; ids are unique; `list`
//! walks ids in ascending order so a cursor stays valid while tokens come and
//! go between pages; times are given to the microsecond (the service
//! truncates every time it hands a store, see [`crate::clock::to_micros`])
//! and kept exactly, so a token reads the same from every backend.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use async_trait::async_trait;

use crate::{
    cache::ValidationCache,
    events::{Draft, OutboxStats, Pending, Settle},
    model::{
        Change, Counts, Day, DayUsage, Etag, ListFilter, ListOrder, NewToken, Position,
        RecentSources, ServiceToken, Session, SessionKey, StoredToken, TokenId, TokenSummary,
    },
    token::TokenHash,
};

mod data_dir;
mod group_commit;
mod offload;
pub mod postgres;
pub mod reserve;
mod rules;
pub mod sled;

pub(crate) use self::rules::{Planned, expiry_due, found_by, fresh_ids, planned, readable, stale};
pub use self::{
    postgres::PostgresStore,
    rules::{KeepAdmin, new_source},
    sled::SledStore,
};

/// What [`Store::import`] did with one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Added,
    AlreadyThere,
    /// Its id or hash belongs to a different token here; nothing changed.
    Conflict(String),
}

impl Imported {
    /// The conflict of an id that holds another token: one text for every
    /// store.
    pub fn id_taken(id: TokenId) -> Imported {
        Imported::Conflict(format!("id {id} holds another token"))
    }

    /// The conflict of a secret's hash that finds another token.
    pub fn hash_taken(id: TokenId) -> Imported {
        Imported::Conflict(format!("a hash of token {id} belongs to another id"))
    }
}

/// What a change or delete of one token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    NotFound,
    /// Refused: the token is the last one that lets anyone manage tokens,
    /// and the change would take that away. Says what the change would
    /// have done ("disabling", ...).
    Lockout(&'static str),
    /// Refused: what the change would make breaks a rule that depends on
    /// what the token had (a label merge past the most labels).
    Invalid(crate::model::FieldError),
    /// Refused: the caller's etag is not the token's any more (someone
    /// changed it since the caller read it). Carries the token's etag now.
    Stale(Etag),
    /// Refused: a rotation made only while the token's secret is a given
    /// one, and another rotation replaced that secret first.
    Replaced,
}

/// A token was used (checked successfully): last at `at`, through its
/// previous secret (in its grace period) last at `previous_at`, and from
/// `sources` (merged into the token's recent sources, as replicas merge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub id: TokenId,
    pub at: SystemTime,
    pub previous_at: Option<SystemTime>,
    pub sources: RecentSources,
}

/// The error a backend's failure came with: a driver's, the operating
/// system's, a decoder's. Kept as the source of a [`StoreError`], so the log
/// shows the whole chain while clients see none of it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An error and its chain of causes on one line, each cause once.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {} is in use by another process (is sts-server already running on it?)",
        path.display()
    )]
    Locked { path: PathBuf },
    /// Like ssh with a loose key file: a data directory (or a file in it)
    /// that someone else could write is refused, since whoever can write
    /// it can plant a token hash of their own.
    #[error("{}: {problem}", path.display())]
    Exposed { path: PathBuf, problem: String },
    /// Not now (a database away, a write that failed): trying again may work.
    #[error("the store is unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// Writes that may grow the store are paused (creates, changes other
    /// than a disable, rotations, last-used times): the data directory's
    /// disk has less free space than they need beside the reserve kept so
    /// that deletes and disables always have room (see [`reserve`]).
    #[error(
        "the data directory's disk is nearly full: {free_kib} KiB free, below the {needed_kib} KiB that writes which grow the store need (the {reserve_kib} KiB reserve is kept for deletes and disables)"
    )]
    DiskReserve {
        free_kib: u64,
        needed_kib: u64,
        reserve_kib: u64,
    },
    #[error("the store holds a corrupt record: {context}")]
    Corrupt {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("could not allocate a unique token id; try again")]
    IdExhausted,
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>, source: impl Into<Cause>) -> StoreError {
        StoreError::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn corrupt(context: impl Into<String>, source: impl Into<Cause>) -> StoreError {
        StoreError::Corrupt {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A lookup by hash landed on another token's record.
    pub fn misindexed(id: TokenId) -> StoreError {
        StoreError::Corrupt {
            context: format!("token {id}: the hash index points at another token's record"),
            source: None,
        }
    }

    /// Two 256-bit secrets colliding means the generator is broken; refuse
    /// rather than let one token stand for two.
    pub fn duplicate_hash() -> StoreError {
        StoreError::Corrupt {
            context: "a token with this hash already exists".into(),
            source: None,
        }
    }
}

/// A store of tokens: what the service reads and changes them through. Its
/// event outbox and its use records are traits of their own, since each
/// has rules of its own (leases; merges that only move forward), and every
/// store keeps all three in the same place, so that an event is written in
/// the same transaction as its change.
#[async_trait]
pub trait Store: EventOutbox + UseRecords + Sessions + Send + Sync + 'static {
    /// Stores a new token under a fresh unique id and returns it once
    /// durable, with `event`'s event in the outbox in the same transaction.
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        event: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError>;

    /// The token whose secret hashes to `hash`, if any. A lookup, not a scan.
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError>;

    /// The token with this id, if any.
    async fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError>;

    /// Up to `limit` tokens with ids greater than `after` that `filter`
    /// matches, in ascending id order, with their hashes (for export).
    async fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError>;

    /// Up to `limit` tokens `filter` matches, in `order` (its key, then
    /// the id), after `after`, a position in that order: from an index on
    /// every store, so each page costs the same wherever it starts.
    async fn list_ordered(
        &self,
        order: ListOrder,
        after: Option<&Position>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError>;

    /// Applies `change` to a token at `keep.now` unless that would break
    /// `keep`, or the token's etag is not `expected` (checked under the
    /// same lock as the change, so of two changes sent with one etag, one
    /// lands); returns the token before and after. Durable once it returns,
    /// and, like a delete, seen by every replica's cache within its bound.
    /// `event`'s event is written in the same transaction.
    async fn change(
        &self,
        id: TokenId,
        change: &Change,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<(ServiceToken, ServiceToken)>, StoreError>;

    /// Adds exported tokens under their own ids and hashes; durable once it
    /// returns. A token already there (same id, same hash) is left as is, so
    /// importing twice changes nothing.
    async fn import(&self, tokens: &[StoredToken]) -> Result<Vec<Imported>, StoreError>;

    /// Removes a token unless that would break `keep`, or its etag is not
    /// `expected` (as [`Store::change`]). Durable once it returns;
    /// `event`'s event (of the token as it was) is written in the same
    /// transaction.
    async fn delete(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError>;

    /// Writes the expiry events due at `now`: for every enabled token with
    /// an expiration, one event per [`crate::events::Expiry`] step it has
    /// reached and not yet announced for this expiration, written in one
    /// transaction with the record that it was announced (so with several
    /// replicas scanning, each step is announced once). Returns how many.
    async fn signal_expiries(&self, now: SystemTime) -> Result<u64, StoreError>;

    /// The token counts at `now` (see [`TokenSummary`]): a pass over the
    /// store, or where the store can count (PostgreSQL), one query.
    async fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError>;

    /// How many tokens are stored; cheap enough for every metrics scrape.
    async fn count(&self) -> Result<u64, StoreError>;

    /// What kind of store this is (`sled`, `postgresql`), as the console
    /// shows it.
    fn kind(&self) -> &'static str;

    /// Whether replicas may share this store, so that counting rate limits
    /// apart lets each replica allow a token's limits in full.
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether any token has rate limits (asked once, at start-up, of a
    /// shared store).
    async fn any_rate_limited(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Writes anything still buffered to stable storage (used at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Whether the store can serve now (a database reachable); readiness
    /// probes follow it.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The Validate cache to use over this store. A store only this process
    /// writes can trust a local cache; one others write too returns a cache
    /// it keeps informed of their deletes (and starts doing so now).
    fn validation_cache(&self) -> Arc<ValidationCache> {
        Arc::new(ValidationCache::local())
    }

    /// How the feed of other replicas' changes is doing (`live`, `silent`),
    /// for readiness detail; `None` for a store no one else writes.
    fn change_feed(&self) -> Option<&'static str> {
        None
    }

    /// Adds the backend's own metrics (how its writes reach the disk) to the
    /// service's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// The event outbox: events written with their changes (see [`Store`]),
/// claimed by whichever replica delivers them, and settled.
#[async_trait]
pub trait EventOutbox: Send + Sync {
    /// Up to `limit` outbox events, oldest first, that no one else is
    /// delivering and whose retry is due; they are this caller's for
    /// `lease` (another replica may take them after).
    async fn claim_events(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<Pending>, StoreError>;

    /// Records what delivery did with claimed events (and ends their lease).
    /// Not synced on its own: an event delivered but not yet forgotten when
    /// the process dies is delivered again (at least once).
    async fn settle_events(&self, settled: &[Settle]) -> Result<(), StoreError>;

    /// How many events wait in the outbox, and since when.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;
}

/// Records of how tokens are used, written in batches apart from the
/// changes managers make: they merge (the latest time wins) rather than
/// replace, and never invalidate a cache.
#[async_trait]
pub trait UseRecords: Send + Sync {
    /// Records when tokens were last used: each time only moves forward
    /// (the latest wins, whichever replica wrote it), and a token gone in
    /// the meantime is skipped. One flush for the batch; never a cache
    /// invalidation (a use changes nothing a validation depends on).
    ///
    /// With `announce`, a token used from a source outside its recent
    /// ones gets a `token.new_source` event in the same transaction (see
    /// [`new_source`]); returns how many such events it wrote.
    async fn record_uses(
        &self,
        uses: &[Use],
        announce: Option<Announce>,
    ) -> Result<u64, StoreError>;

    /// Adds a batch's checks of each token on `day` (UTC) to what is
    /// kept: every replica's batches add up, a token gone meanwhile is
    /// skipped. One flush for the batch.
    async fn record_usage(&self, day: Day, counts: &[(TokenId, Counts)]) -> Result<(), StoreError>;

    /// The days from `from` to `to` (inclusive) with checks of token `id`,
    /// oldest first.
    async fn usage(&self, id: TokenId, from: Day, to: Day) -> Result<Vec<DayUsage>, StoreError>;

    /// Forgets every day before `before`; how many records went.
    async fn purge_usage(&self, before: Day) -> Result<u64, StoreError>;
}

/// Console sessions: kept in the store so that any replica serves them and
/// a restart signs nobody out; never exported (a session is a sign-in, not
/// a token).
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Keeps a new session; durable once it returns.
    async fn open_session(&self, session: &Session) -> Result<(), StoreError>;

    /// The session kept under `key`, if any.
    async fn session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError>;

    /// Moves sessions' last-seen times forward (never back), in one batch;
    /// a session gone meanwhile is skipped. Not synced on its own: a crash
    /// loses at most one batch of idle time.
    async fn touch_sessions(&self, seen: &[(SessionKey, SystemTime)]) -> Result<(), StoreError>;

    /// Ends a session (sign-out, or found ended); durable once it returns.
    async fn end_session(&self, key: &SessionKey) -> Result<(), StoreError>;

    /// Ends every session last seen before `seen_before` or begun before
    /// `begun_before`; how many.
    async fn end_stale_sessions(
        &self,
        seen_before: SystemTime,
        begun_before: SystemTime,
    ) -> Result<u64, StoreError>;
}

/// Whether and when a batch of uses announces new sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// The batch's time: an announcement is dated by it.
    pub at: SystemTime,
    /// At most one announcement per token per this long, whichever
    /// replica makes it (the time of the last is kept with the sources).
    pub every: std::time::Duration,
}
