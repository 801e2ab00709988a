//! sled's usage tree: a token's checks per UTC day, one record per day
//! and token keyed day first (`day ‖ id`, big-endian), so the purge of
//! old days is one range from the start, and a token's days are point
//! reads. Runs on the offload lanes; the caller syncs.

use sled::{Transactional, transaction::TransactionError};

use crate::model::{Counts, Day, DayUsage, OUTCOMES, TokenId};
use crate::store::StoreError;

use super::{Trees, transaction_failed, unavailable};

/// The format of a usage record: this byte, then each outcome's count as
/// a big-endian u64, in `Outcome::ALL`'s order. A record of a later format
/// (more outcomes) is read for the outcomes this release knows.
const USAGE_FORMAT: u8 = 1;

fn key(day: Day, id: TokenId) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&day.number().to_be_bytes());
    key[4..].copy_from_slice(&id.get().to_be_bytes());
    key
}

fn encode(counts: &Counts) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 8 * OUTCOMES);
    bytes.push(USAGE_FORMAT);
    for count in counts.0 {
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    bytes
}

/// A record's counts; an unreadable one counts nothing (usage is never
/// worth failing a batch for).
fn decode(bytes: &[u8]) -> Counts {
    let mut counts = Counts::default();
    let Some((&format, rest)) = bytes.split_first() else {
        return counts;
    };
    if format < USAGE_FORMAT {
        return counts;
    }
    for (count, chunk) in counts.0.iter_mut().zip(rest.chunks_exact(8)) {
        *count = u64::from_be_bytes(chunk.try_into().expect("chunks of 8"));
    }
    counts
}

impl Trees {
    /// Adds each token's counts to its record of `day`, in one transaction
    /// with the tokens tree, so a token deleted meanwhile is skipped.
    pub(super) fn record_usage(
        &self,
        day: Day,
        counts: &[(TokenId, Counts)],
    ) -> Result<(), StoreError> {
        let trees = (&self.tokens, &self.usage);
        let outcome = trees.transaction(|(tokens, usage)| {
            for (id, counts) in counts {
                if tokens.get(id.get().to_be_bytes())?.is_none() {
                    continue;
                }
                let key = key(day, *id);
                let mut kept = usage.get(key)?.map_or_else(Counts::default, |b| decode(&b));
                kept.add(counts);
                usage.insert(&key, encode(&kept))?;
            }
            Ok(())
        });
        outcome.map_err(|e: TransactionError<()>| transaction_failed("usage", e))
    }

    /// The days from `from` to `to` (inclusive) with counts for `id`.
    pub(super) fn usage(
        &self,
        id: TokenId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DayUsage>, StoreError> {
        let mut days = Vec::new();
        let mut day = from;
        while day <= to {
            if let Some(bytes) = self.usage.get(key(day, id)).map_err(unavailable)? {
                days.push(DayUsage {
                    day,
                    counts: decode(&bytes),
                });
            }
            if day == Day::from_number(u32::MAX) {
                break;
            }
            day = day.next();
        }
        Ok(days)
    }

    /// Removes every record of a day before `before`.
    pub(super) fn purge_usage(&self, before: Day) -> Result<u64, StoreError> {
        let end = key(before, TokenId::parse(1).expect("1 is an id"));
        let mut removed = 0;
        for entry in self.usage.range(..end) {
            let (key, _) = entry.map_err(unavailable)?;
            self.usage.remove(key).map_err(unavailable)?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_one_of_a_later_format_keeps_what_this_release_knows() {
        let counts = Counts([1, 2, 3, 4, 5, 6, 7, u64::MAX]);
        assert_eq!(decode(&encode(&counts)), counts);
        let mut later = encode(&counts);
        later[0] = USAGE_FORMAT + 1;
        later.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(decode(&later), counts);
        assert_eq!(decode(&[]), Counts::default());
        assert_eq!(decode(&[USAGE_FORMAT, 0, 0]), Counts::default());
    }

    #[test]
    fn keys_order_by_day_then_token() {
        let (a, b) = (TokenId::parse(2).unwrap(), TokenId::parse(1).unwrap());
        assert!(key(Day::from_number(5), a) < key(Day::from_number(6), b));
        assert!(key(Day::from_number(5), b) < key(Day::from_number(5), a));
    }
}
