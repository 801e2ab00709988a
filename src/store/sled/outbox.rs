//! sled's event outbox and expiry signals: the events written with their
//! change, claimed and settled by delivery, and the expiry steps announced.

use std::time::{Duration, SystemTime};

use prost::Message;
use sled::{
    Transactional,
    transaction::{TransactionError, TransactionalTree, UnabortableTransactionError},
};

use crate::clock::{epoch_micros, from_epoch_micros};
use crate::events::{Draft, Event, Expiry, OutboxStats, Pending, Settle};
use crate::store::{StoreError, expiry_due, readable};

use super::{
    OUTBOX_COUNT_KEY, Trees, decode_count,
    record::{Record, key_id},
    transaction_failed, unavailable,
};

/// One event in the outbox. Tags are a storage format: never reuse one.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct OutboxRecord {
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
pub(super) fn push_event(
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

/// The expiration and step last announced, from a `signals` value.
pub(super) fn announced(value: &[u8]) -> Option<(SystemTime, Expiry)> {
    let (at, step) = (value.get(..8)?, value.get(8)?);
    let at = i64::from_be_bytes(at.try_into().ok()?);
    Some((from_epoch_micros(at)?, Expiry::from_u8(*step)?))
}

impl Trees {
    /// A sequence number for an event, when there is one to write.
    pub(super) fn event_seq(&self, event: Option<&Draft>) -> Result<Option<u64>, StoreError> {
        event
            .map(|_| self.db.generate_id().map_err(unavailable))
            .transpose()
    }

    /// Announces `step` of the token stored under `key`, found by a scan
    /// expiring at `expiration`, unless the transaction finds it changed
    /// or the step announced since; whether it did.
    pub(super) fn signal_expiry(
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
            let announced = || {
                let value = signals.get(key)?;
                Ok::<_, UnabortableTransactionError>(value.as_deref().and_then(announced))
            };
            if expiry_due(&current, now, announced)? != Some((expiration, step)) {
                return Ok(false);
            }
            signals.insert(key, &signal_value(expiration, step))?;
            push_event(outbox, meta, seq, &step.event(&current, now))?;
            Ok(true)
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("expiry signal", e))
    }

    pub(super) fn settle_event(&self, settle: &Settle) -> Result<(), StoreError> {
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
}

impl Trees {
    pub(super) fn claim_events(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Pending>, StoreError> {
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

    pub(super) fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let pending = decode_count(self.meta.get(OUTBOX_COUNT_KEY).map_err(unavailable)?);
        let oldest = match self.outbox.first().map_err(unavailable)? {
            Some((_, bytes)) => OutboxRecord::decode(&*bytes).ok().map(|r| r.occurred_at()),
            None => None,
        };
        Ok(OutboxStats { pending, oldest })
    }

    /// The expiry steps due at `now` and not yet announced: a pass over
    /// every record.
    pub(super) fn expiries_due(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(sled::IVec, SystemTime, Expiry)>, StoreError> {
        let mut due = Vec::new();
        for entry in self.tokens.iter() {
            let (key, bytes) = entry.map_err(unavailable)?;
            let Some(stored) = readable(Record::decode_stored(&bytes), key_id(&key)) else {
                continue;
            };
            let announced = || {
                let value = self.signals.get(&key).map_err(unavailable)?;
                Ok(value.as_deref().and_then(announced))
            };
            if let Some((expiration, step)) = expiry_due(&stored.token, now, announced)? {
                due.push((key, expiration, step));
            }
        }
        Ok(due)
    }
}
