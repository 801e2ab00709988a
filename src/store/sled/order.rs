//! sled's index of the list orders: one `order` tree whose keys are an
//! order's tag, the token's value under it (`SortValue::sortable`) and its
//! id, so a page in any order is a range scan from where the last one
//! stopped. Kept in the same transactions as the token records; built once
//! over a data directory an earlier release wrote.

use std::time::SystemTime;

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::model::{
    ListFilter, ListOrder, NEVER_USED, OrderKey, Position, ServiceToken, SortValue, StoredToken,
    TokenId, micros,
};
use crate::store::{StoreError, readable};

use super::{
    Trees,
    record::{Record, key_id},
    unavailable,
};

/// Key in `meta` saying the `order` tree holds every token: written once
/// the index is built, in the same flush.
pub(super) const ORDER_INDEX_KEY: &[u8] = b"order_index_v1";

/// The index key of `id` with `value` under `key`.
fn entry(key: OrderKey, value: &SortValue, id: TokenId) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32);
    bytes.push(key.tag());
    value.sortable(&mut bytes);
    bytes.extend_from_slice(&id.get().to_be_bytes());
    bytes
}

/// Every index key of `token`.
fn entries(token: &ServiceToken) -> impl Iterator<Item = Vec<u8>> + '_ {
    OrderKey::INDEXED
        .into_iter()
        .map(|(key, _)| entry(key, &key.value_of(token), token.id))
}

/// Moves `before`'s index entries to `after`'s (`None`: a token added or
/// removed), touching only those that differ.
pub(super) fn reindex(
    order: &TransactionalTree,
    before: Option<&ServiceToken>,
    after: Option<&ServiceToken>,
) -> Result<(), UnabortableTransactionError> {
    let old: Vec<Vec<u8>> = before.map(|t| entries(t).collect()).unwrap_or_default();
    let new: Vec<Vec<u8>> = after.map(|t| entries(t).collect()).unwrap_or_default();
    for gone in old.iter().filter(|k| !new.contains(k)) {
        order.remove(gone.as_slice())?;
    }
    for added in new.iter().filter(|k| !old.contains(k)) {
        order.insert(added.as_slice(), &[])?;
    }
    Ok(())
}

/// Moves a token's last-used entry when a recorded use moved its time.
pub(super) fn reindex_last_used(
    order: &TransactionalTree,
    id: TokenId,
    before: Option<SystemTime>,
    after: Option<SystemTime>,
) -> Result<(), UnabortableTransactionError> {
    let value = |at: Option<SystemTime>| SortValue::Micros(at.map_or(NEVER_USED, micros));
    let (old, new) = (value(before), value(after));
    if old != new {
        order.remove(entry(OrderKey::LastUsed, &old, id))?;
        order.insert(entry(OrderKey::LastUsed, &new, id), &[])?;
    }
    Ok(())
}

/// Indexes every token of a data directory written before the index was
/// kept (or while it was being built), then marks it built.
pub(super) fn build_if_missing(
    db: &sled::Db,
    tokens: &sled::Tree,
    order: &sled::Tree,
    meta: &sled::Tree,
) -> Result<(), StoreError> {
    if meta.get(ORDER_INDEX_KEY).map_err(unavailable)?.is_some() {
        return Ok(());
    }
    order.clear().map_err(unavailable)?;
    let mut built = 0u64;
    for record in tokens.iter() {
        let (key, bytes) = record.map_err(unavailable)?;
        // An unreadable record is listed by no order (as by none in id
        // order): `readable` logs it.
        if let Some(stored) = readable(Record::decode_stored(&bytes), key_id(&key)) {
            for entry in entries(&stored.token) {
                order.insert(entry, &[]).map_err(unavailable)?;
            }
            built += 1;
        }
    }
    meta.insert(ORDER_INDEX_KEY, &[1]).map_err(unavailable)?;
    db.flush().map_err(unavailable)?;
    if built > 0 {
        tracing::info!(
            tokens = built,
            "indexed the list orders of an earlier release's data directory"
        );
    }
    Ok(())
}

/// The least key greater than every key that starts with `prefix` (`None`:
/// there is none, every byte being 0xFF).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

impl Trees {
    /// Up to `limit` tokens `filter` matches, in `order`, after `after`.
    pub(super) fn list_ordered(
        &self,
        order: ListOrder,
        after: Option<&Position>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        // The keys to walk, [low, high): the order's own, narrowed to a
        // name prefix when the list is by name (a search costs a page, not
        // a scan), and to what lies past the last page.
        let mut low = vec![order.key.tag()];
        let mut high = Some(vec![order.key.tag() + 1]);
        if let (OrderKey::Name, Some(prefix)) = (order.key, &filter.name_prefix) {
            let mut start = low.clone();
            SortValue::Text(prefix.clone()).sortable(&mut start);
            // Without the name's terminator: every longer name shares it.
            start.truncate(start.len() - 2);
            high = successor(&start);
            low = start;
        }
        if let Some(at) = after {
            let from = entry(order.key, &at.value, at.id);
            if order.descending {
                high = Some(high.map_or(from.clone(), |high| high.min(from)));
            } else {
                let mut past = from;
                // Just past the last page's own key.
                past.push(0);
                low = low.max(past);
            }
        }
        if high.as_ref().is_some_and(|high| *high <= low) {
            return Ok(Vec::new());
        }
        let range = match high {
            Some(high) => self.order.range(low..high),
            None => self.order.range(low..),
        };
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if order.descending {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
        let mut page = Vec::with_capacity(limit.min(1024));
        for entry in entries {
            if page.len() == limit {
                break;
            }
            let (key, _) = entry.map_err(unavailable)?;
            let Some(id) = key.len().checked_sub(8).map(|at| &key[at..]) else {
                continue;
            };
            let Some(bytes) = self.tokens.get(id).map_err(unavailable)? else {
                // Removed after this scan began: the transaction that removed
                // it removed its entry too.
                continue;
            };
            match readable(Record::decode_stored(&bytes), key_id(id)) {
                Some(stored) if filter.matches(&stored.token) => page.push(stored),
                _ => {}
            }
        }
        Ok(page)
    }
}
