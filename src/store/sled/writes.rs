//! sled's writes: insert, import, change and delete under the lockout
//! rule, last-used times and recent sources (with a new source's event),
//! and the disk reserve they are held to. Each runs
//! on the write lane; the caller syncs.

use std::time::SystemTime;

use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use crate::store::{
    Announce, Imported, KeepAdmin, Outcome, Planned, StoreError, Use, fresh_ids, new_source,
    planned, readable, stale,
};
use crate::{
    events::{self, Draft},
    model::{Change, Etag, NewToken, ServiceToken, StoredToken, TokenId},
    token::TokenHash,
};

use super::{
    COUNT_KEY, Trees, decode_count,
    order::{reindex, reindex_last_used},
    outbox::push_event,
    record::{Record, key_id, latest},
    transaction_failed, unavailable,
};

/// Why an insert transaction gave up.
enum InsertAbort {
    IdTaken,
    HashTaken,
}

impl Trees {
    /// Before a write that grows the store (see [`Reserve`]).
    pub(super) fn check_space(&self) -> Result<(), StoreError> {
        self.reserve.check_growth()
    }

    /// Before a write the reserve is kept for: gives the reserve back if
    /// the disk is nearly out of space. The write goes ahead whatever this
    /// finds (a free-space reading that failed included).
    pub(super) fn tend_reserve(&self) {
        if let Err(e) = self.reserve.tend() {
            tracing::warn!(error = %crate::store::with_causes(&e), "could not tend the disk reserve");
        }
    }

    pub(super) fn insert_unsynced(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        draft: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError> {
        let seq = self.event_seq(draft)?;
        for id in fresh_ids() {
            let stored = StoredToken {
                retired: Vec::new(),
                token: ServiceToken::new(id, new, created_at),
                hash,
                previous_hash: None,
            };
            let record = Record::of(&stored);
            let event = draft.map(|d| d.event(&stored.token, &stored.token));
            let key = stored.token.id.get().to_be_bytes();
            let trees = (
                &self.tokens,
                &self.by_hash,
                &self.meta,
                &self.outbox,
                &self.order,
            );
            let outcome = trees.transaction(|(tokens, by_hash, meta, outbox, order)| {
                if tokens.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(InsertAbort::IdTaken));
                }
                if by_hash.get(hash.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(InsertAbort::HashTaken));
                }
                tokens.insert(&key, record.encode_to_vec())?;
                by_hash.insert(hash.as_bytes(), &key)?;
                reindex(order, None, Some(&stored.token))?;
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

    pub(super) fn import_unsynced(&self, stored: &StoredToken) -> Result<Imported, StoreError> {
        let token = &stored.token;
        let key = token.id.get().to_be_bytes();
        let record = Record::of(stored).encode_to_vec();
        let hash = stored.hash.as_bytes();
        let trees = (
            &self.tokens,
            &self.by_hash,
            &self.meta,
            &self.retired,
            &self.order,
        );
        let outcome = trees.transaction(|(tokens, by_hash, meta, retired, order)| {
            if let Some(existing) = tokens.get(key)? {
                let same = Record::decode(&*existing).is_ok_and(|r| r.token_hash == hash);
                return Ok(if same {
                    Imported::AlreadyThere
                } else {
                    Imported::id_taken(token.id)
                });
            }
            for hash in stored.hashes() {
                if by_hash.get(hash.as_bytes())?.is_some() {
                    return Ok(Imported::hash_taken(token.id));
                }
            }
            tokens.insert(&key, record.clone())?;
            for hash in stored.hashes() {
                by_hash.insert(hash.as_bytes(), &key)?;
            }
            for hash in &stored.retired {
                retired.insert(hash.as_bytes(), &key)?;
            }
            reindex(order, None, Some(token))?;
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
            let (key, bytes) = entry.map_err(unavailable)?;
            let Some(stored) = readable(Record::decode_stored(&bytes), key_id(&key)) else {
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
    pub(super) fn lockout(
        &self,
        before: &ServiceToken,
        after: Option<&ServiceToken>,
        keep: &KeepAdmin,
    ) -> Result<Option<&'static str>, StoreError> {
        match keep.at_stake(before, after) {
            Some(what) if !self.another_admin(before.id, keep)? => Ok(Some(what)),
            _ => Ok(None),
        }
    }

    pub(super) fn change_unsynced(
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
        // Changes are serialized by `_serial`: what `before` says (the etag
        // included) holds until the end.
        let after = match planned(change, &before, keep, expected) {
            Planned::Write(after) => after,
            Planned::Answer(answer) => return Ok(answer),
        };
        if let Some(what) = self.lockout(&before.token, Some(&after.token), keep)? {
            return Ok(Outcome::Lockout(what));
        }
        // Applied again to the record as the transaction reads it: a last
        // use recorded since is kept (only uses change a record outside
        // `changes`, and they touch nothing the check above looked at).
        let seq = self.event_seq(draft)?;
        let trees = (
            &self.tokens,
            &self.by_hash,
            &self.meta,
            &self.outbox,
            &self.retired,
            &self.order,
        );
        let outcome = trees.transaction(|(tokens, by_hash, meta, outbox, retired, order)| {
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
            for gone in current
                .retired
                .iter()
                .filter(|h| !after.retired.contains(h))
            {
                retired.remove(gone.as_bytes())?;
            }
            for added in &after.retired {
                retired.insert(added.as_bytes(), &key)?;
            }
            tokens.insert(&key, Record::of(&after).encode_to_vec())?;
            reindex(order, Some(&current.token), Some(&after.token))?;
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

    pub(super) fn delete_unsynced(
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
            &self.retired,
            &self.order,
        );
        let outcome =
            trees.transaction(|(tokens, by_hash, meta, outbox, signals, retired, order)| {
                let Some(bytes) = tokens.remove(&key)? else {
                    return Ok(false);
                };
                signals.remove(&key)?;
                // An undecodable record has no entries (the index skips it).
                if let Ok(gone) = Record::decode_stored(&bytes) {
                    reindex(order, Some(&gone.token), None)?;
                }
                // An undecodable record has no description to announce.
                if let (Some(seq), Some(draft), Ok(gone)) =
                    (seq, draft, Record::decode_stored(&bytes))
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
                    for hash in record.retired_hashes {
                        retired.remove(hash)?;
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

    /// Records one use; whether it announced a new source (see
    /// [`new_source`]), in the same transaction.
    pub(super) fn record_use(
        &self,
        used: &Use,
        announce: Option<&Announce>,
    ) -> Result<bool, StoreError> {
        let key = used.id.get().to_be_bytes();
        let seq = match announce {
            Some(_) if !used.sources.is_empty() => {
                Some(self.db.generate_id().map_err(unavailable)?)
            }
            _ => None,
        };
        let trees = (&self.tokens, &self.meta, &self.outbox, &self.order);
        let outcome = trees.transaction(|(tokens, meta, outbox, order)| {
            let Some(bytes) = tokens.get(key)? else {
                return Ok(false);
            };
            // A record this release cannot read is left as it is.
            let Ok(mut record) = Record::decode_checked(&bytes) else {
                return Ok(false);
            };
            let last_used = record.last_used_at;
            record.last_used_at = latest(record.last_used_at, used.at);
            if record.last_used_at != last_used {
                let time = |at: Option<prost_types::Timestamp>| {
                    at.and_then(|at| SystemTime::try_from(at).ok())
                };
                reindex_last_used(order, used.id, time(last_used), time(record.last_used_at))?;
            }
            if let Some(at) = used.previous_at
                && record.previous_hash.is_some()
            {
                record.previous_last_used_at = latest(record.previous_last_used_at, at);
            }
            let mut announced = false;
            if !used.sources.is_empty() {
                let before = record.recent_sources();
                let mut recent = before.clone();
                recent.merge(&used.sources);
                let news = announce
                    .zip(seq)
                    .and_then(|(a, seq)| Some((a, seq, new_source(&before, &used.sources, a)?)));
                if let Some((announce, _, _)) = news {
                    recent.announce(announce.at);
                }
                record.set_recent_sources(&recent);
                if let Some((announce, seq, address)) = news
                    && let Ok(stored) = Record::decode_stored(&record.encode_to_vec())
                {
                    let event = events::new_source(&stored.token, address, &before, announce.at);
                    push_event(outbox, meta, seq, &event)?;
                    announced = true;
                }
            }
            tokens.insert(&key, record.encode_to_vec())?;
            Ok(announced)
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("last-used", e))
    }
}
