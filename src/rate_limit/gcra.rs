//! The arithmetic of one limit (GCRA, the generic cell rate algorithm),
//! in whole numbers so every engine (this process, Redis' script) computes
//! the same answer: a limit of L per P ms keeps a *debt* that a check of
//! cost c raises by c × P and time drains by L per ms; a check fits while
//! the debt stays within P × L. So L checks fit at once, and the budget
//! comes back one check every P / L ms.

use std::time::Duration;

use crate::model::RateLimit;

/// A cost no limit has room for: what larger costs are cut to, so every
/// product of a cost and a period stays below 2^53 (exact in a double, as
/// Redis' script computes).
pub const NEVER_FITS: u64 = crate::model::MAX_LIMIT + 1;

/// One limit's state: its debt as of `at_ms` (milliseconds since the Unix
/// epoch, by the server's clock). The default is a whole limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Debt {
    pub debt: u64,
    pub at_ms: u64,
}

/// Where a limit stands, as answers report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Checks of cost 1 that fit now.
    pub remaining: u64,
    /// Until the limit is whole again, if nothing more is spent.
    pub reset: Duration,
}

/// A limit's terms in the units the arithmetic uses.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// Checks per period.
    pub limit: u64,
    /// The period in milliseconds.
    pub period_ms: u64,
}

impl Terms {
    pub fn of(limit: &RateLimit) -> Terms {
        Terms {
            limit: limit.limit(),
            period_ms: limit.period_secs() * 1000,
        }
    }

    /// The debt at which the limit is spent.
    fn capacity(self) -> u64 {
        self.period_ms * self.limit
    }

    /// `debt` as of `now_ms`: drained by the time since, never below zero.
    /// A clock behind the debt's (another replica's, a step back) drains
    /// nothing, and the debt keeps its later time.
    pub fn drained(self, debt: Debt, now_ms: u64) -> Debt {
        let elapsed = now_ms.saturating_sub(debt.at_ms);
        Debt {
            debt: debt.debt.saturating_sub(elapsed.saturating_mul(self.limit)),
            at_ms: now_ms.max(debt.at_ms),
        }
    }

    /// The debt after spending `cost` from `current` (already drained),
    /// if it fits. A cost above the limit never does.
    pub fn spend(self, current: Debt, cost: u64) -> Option<Debt> {
        if cost > self.limit {
            return None;
        }
        let debt = current.debt + cost * self.period_ms;
        (debt <= self.capacity()).then_some(Debt {
            debt,
            at_ms: current.at_ms,
        })
    }

    /// Where the limit stands with `debt`.
    pub fn standing(self, debt: Debt) -> Standing {
        Standing {
            remaining: (self.capacity() - debt.debt.min(self.capacity())) / self.period_ms,
            reset: Duration::from_millis(debt.debt.div_ceil(self.limit)),
        }
    }

    /// How long until `cost` fits, from `current` (already drained): the
    /// period when it never can.
    pub fn retry_after(self, current: Debt, cost: u64) -> Duration {
        if cost > self.limit {
            return Duration::from_millis(self.period_ms);
        }
        let over = (current.debt + cost * self.period_ms).saturating_sub(self.capacity());
        Duration::from_millis(over.div_ceil(self.limit))
    }
}

/// A check of `cost` against every limit of `terms` at `now_ms`, all or
/// nothing: each debt is drained to `now_ms`, and spent from only when
/// every limit has room. Fills `standings` (one per limit, as they stand
/// after the check) and answers which limit refused first and when the
/// check would fit every one, or `None` when it passed.
pub fn decide(
    terms: &[Terms],
    debts: &mut [Debt],
    cost: u64,
    now_ms: u64,
    standings: &mut [Standing],
) -> Option<(usize, Duration)> {
    let mut refused: Option<(usize, Duration)> = None;
    for (at, (terms, debt)) in terms.iter().zip(debts.iter_mut()).enumerate() {
        *debt = terms.drained(*debt, now_ms);
        if terms.spend(*debt, cost).is_none() {
            let wait = terms.retry_after(*debt, cost);
            refused = Some(match refused {
                Some((first, longest)) => (first, longest.max(wait)),
                None => (at, wait),
            });
        }
    }
    for (at, (terms, debt)) in terms.iter().zip(debts.iter_mut()).enumerate() {
        if refused.is_none() {
            *debt = terms
                .spend(*debt, cost)
                .expect("every limit was checked for room");
        }
        standings[at] = terms.standing(*debt);
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(limit: u64, period_secs: u64) -> Terms {
        Terms {
            limit,
            period_ms: period_secs * 1000,
        }
    }

    #[test]
    fn a_whole_limit_lets_its_number_through_at_once_then_one_per_share_of_the_period() {
        let t = terms(2, 1);
        let start = Debt {
            debt: 0,
            at_ms: 10_000,
        };
        let one = t.spend(start, 1).unwrap();
        assert_eq!(
            t.standing(one),
            Standing {
                remaining: 1,
                reset: Duration::from_millis(500)
            }
        );
        let two = t.spend(one, 1).unwrap();
        assert_eq!(
            t.standing(two),
            Standing {
                remaining: 0,
                reset: Duration::from_millis(1000)
            }
        );
        assert_eq!(t.spend(two, 1), None);
        assert_eq!(t.retry_after(two, 1), Duration::from_millis(500));
        // 499 ms on: still no room; 500 ms on: one.
        assert_eq!(t.spend(t.drained(two, 10_499), 1), None);
        let later = t.drained(two, 10_500);
        assert_eq!(t.standing(later).remaining, 1);
        assert!(t.spend(later, 1).is_some());
        // A period on: whole again.
        assert_eq!(t.drained(two, 11_000).debt, 0);
    }

    #[test]
    fn cost_zero_spends_nothing_and_a_cost_above_the_limit_never_fits() {
        let t = terms(5, 60);
        let start = Debt::default();
        assert_eq!(t.spend(start, 0), Some(start));
        assert_eq!(t.spend(start, 6), None);
        assert_eq!(t.retry_after(start, 6), Duration::from_secs(60));
        assert!(t.spend(start, 5).is_some());
    }

    #[test]
    fn a_clock_behind_the_debt_drains_nothing() {
        let t = terms(1, 10);
        let debt = Debt {
            debt: 10_000,
            at_ms: 50_000,
        };
        assert_eq!(t.drained(debt, 40_000), debt);
    }

    #[test]
    fn the_largest_terms_do_not_overflow() {
        let t = terms(crate::model::MAX_LIMIT, crate::model::MAX_PERIOD_SECS);
        let full = t.spend(Debt::default(), crate::model::MAX_LIMIT).unwrap();
        assert_eq!(t.standing(full).remaining, 0);
        assert_eq!(t.standing(full).reset, Duration::from_secs(24 * 3600));
        assert!(t.capacity() < (1 << 53), "exact in a double");
        assert_eq!(t.drained(full, u64::MAX).debt, 0);
    }
}
