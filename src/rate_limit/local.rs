//! `Local`, the limits' state in this process: one entry per token with
//! limits in use, in shards so checks of different tokens rarely meet on a
//! lock. Exact for a single replica.

use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::{Debt, Quota, Standing, Terms, decide};
use crate::model::{MAX_RATE_LIMITS, RateLimit, RateLimits, TokenId};

/// Shards of the table: a power of two, a few per core.
const SHARDS: usize = 64;

/// The limits' state of every token checked lately.
pub struct Local {
    shards: Box<[Mutex<Shard>]>,
}

/// The tokens of one shard, each with its limits' state.
// FxHash: one multiply per lookup. Ids are drawn at random; only an
// admin's import picks them, so no caller can aim at one bucket.
type Shard = FxHashMap<TokenId, Vec<Slot>>;

/// One limit's state, with the terms it was spent under: a limit whose
/// terms an update changed starts whole under its new terms.
struct Slot {
    limit: RateLimit,
    debt: Debt,
}

impl Default for Local {
    fn default() -> Local {
        Local {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Local {
    fn shard(&self, id: TokenId) -> &Mutex<Shard> {
        // Ids are drawn uniformly, so their low bits spread the shards.
        &self.shards[(id.get() as usize) % SHARDS]
    }

    pub fn spend(&self, id: TokenId, limits: &RateLimits, cost: u64, now_ms: u64) -> Quota {
        let limits_slice = limits.as_slice();
        let mut terms = [Terms {
            limit: 1,
            period_ms: 1,
        }; MAX_RATE_LIMITS];
        for (at, limit) in limits_slice.iter().enumerate() {
            terms[at] = Terms::of(limit);
        }
        let terms = &terms[..limits_slice.len()];
        let mut standings = [Standing::default(); MAX_RATE_LIMITS];
        let mut table = self
            .shard(id)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slots = table.entry(id).or_default();
        let same = slots.len() == limits_slice.len()
            && slots
                .iter()
                .zip(limits_slice)
                .all(|(slot, limit)| slot.limit == *limit);
        if !same {
            // Keep each limit's state by its terms; a new or changed one
            // starts whole.
            let mut kept: Vec<Slot> = limits_slice
                .iter()
                .map(|limit| Slot {
                    limit: limit.clone(),
                    debt: slots
                        .iter()
                        .find(|slot| slot.limit == *limit)
                        .map_or(Debt::default(), |slot| slot.debt),
                })
                .collect();
            std::mem::swap(slots, &mut kept);
        }
        let mut debts = [Debt::default(); MAX_RATE_LIMITS];
        for (at, slot) in slots.iter().enumerate() {
            debts[at] = slot.debt;
        }
        let debts = &mut debts[..limits_slice.len()];
        let refused = decide(terms, debts, cost, now_ms, &mut standings);
        // Only a spend is kept, as Redis' script keeps it: a look (cost 0)
        // or a refusal leaves the state as it was, so both engines answer
        // alike even when the clock steps back.
        if refused.is_none() && cost > 0 {
            for (slot, debt) in slots.iter_mut().zip(debts.iter()) {
                slot.debt = *debt;
            }
        }
        drop(table);
        Quota::new(limits.clone(), standings, refused)
    }

    pub fn sweep(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            let mut table = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            table.retain(|_, slots| {
                slots
                    .iter()
                    .any(|slot| Terms::of(&slot.limit).drained(slot.debt, now_ms).debt > 0)
            });
        }
    }

    /// Tokens with state kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |table| table.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(texts: &[&str]) -> RateLimits {
        RateLimits::parse_texts("rate_limits", texts).unwrap()
    }

    #[test]
    fn a_refused_check_spends_from_no_limit() {
        let local = Local::default();
        let id = TokenId::parse(7).unwrap();
        let both = limits(&["burst=3/1s", "hourly=5/1h"]);
        let now = 1_000_000;
        for _ in 0..3 {
            assert!(local.spend(id, &both, 1, now).allowed());
        }
        // The burst is spent; the hourly limit has 2 left and keeps them.
        let refused = local.spend(id, &both, 1, now);
        assert!(!refused.allowed());
        assert_eq!(refused.refused_by().unwrap().name(), "burst");
        let remaining: Vec<u64> = refused.states().map(|(_, s)| s.remaining).collect();
        assert_eq!(remaining, [0, 2]);
        // A second on, the burst has room again and the hourly still 2.
        let later = local.spend(id, &both, 0, now + 1000);
        let remaining: Vec<u64> = later.states().map(|(_, s)| s.remaining).collect();
        assert_eq!(remaining, [3, 2]);
        // A cost the hourly cannot take spends nothing from the burst.
        let refused = local.spend(id, &both, 3, now + 1000);
        assert_eq!(refused.refused_by().unwrap().name(), "hourly");
        let remaining: Vec<u64> = refused.states().map(|(_, s)| s.remaining).collect();
        assert_eq!(remaining, [3, 2]);
    }

    #[test]
    fn changed_terms_start_whole_and_whole_limits_are_forgotten() {
        let local = Local::default();
        let id = TokenId::parse(9).unwrap();
        let now = 5_000_000;
        assert!(
            local
                .spend(id, &limits(&["a=1/1m", "b=1/1m"]), 1, now)
                .allowed()
        );
        // `a` under new terms starts whole; `b` kept its state.
        let changed = local.spend(id, &limits(&["a=2/1m", "b=1/1m"]), 1, now);
        assert!(!changed.allowed());
        assert_eq!(changed.refused_by().unwrap().name(), "b");
        assert_eq!(local.len(), 1);
        local.sweep(now + 59_999);
        assert_eq!(local.len(), 1);
        local.sweep(now + 60_000);
        assert_eq!(local.len(), 0);
    }
}
