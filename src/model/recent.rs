//! The sources a token was last seen from ([`RecentSources`]): at most
//! [`MAX_RECENT_SOURCES`] distinct addresses, each with the time it was
//! last seen. Replicas record uses apart and merge them in the store, so
//! the merge is written to converge whatever the order: by address, the
//! latest time wins, then the most recent few are kept (commutative,
//! associative and idempotent; a property test holds it to that).

use std::{net::IpAddr, sync::Arc, time::SystemTime};

/// How many distinct sources a token keeps.
pub const MAX_RECENT_SOURCES: usize = 5;

/// Distinct source addresses, most recent first, each with when it was
/// last seen; addresses IPv4-mapped are kept as IPv4. With them, when a
/// new source was last announced, so replicas announce at most one per
/// window between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentSources {
    /// Shared: a cached token is cloned for every check (and `None`, no
    /// count to touch, while there are none).
    seen: Option<Arc<Vec<(IpAddr, SystemTime)>>>,
    announced_at: Option<SystemTime>,
}

impl RecentSources {
    /// The sources `seen` names, merged as any other record of them.
    pub fn of(seen: impl IntoIterator<Item = (IpAddr, SystemTime)>) -> RecentSources {
        let mut recent = RecentSources::default();
        for (address, at) in seen {
            recent.see(address, at);
        }
        recent
    }

    /// Records a use from `address` at `at`; whether the address was not
    /// among the recent sources before (a new source, to be announced).
    pub fn see(&mut self, address: IpAddr, at: SystemTime) -> bool {
        let address = address.to_canonical();
        let new = !self.iter().any(|(known, _)| known == address);
        self.merge(&RecentSources {
            seen: Some(Arc::new(vec![(address, at)])),
            announced_at: None,
        });
        new
    }

    /// Folds `other` in: per address the latest time, then the
    /// [`MAX_RECENT_SOURCES`] most recent (ties broken by address, so every
    /// replica keeps the same ones).
    /// The latest announcement wins.
    pub fn merge(&mut self, other: &RecentSources) {
        let seen = Arc::make_mut(self.seen.get_or_insert_with(Default::default));
        for (address, at) in other.iter() {
            match seen.iter_mut().find(|(known, _)| *known == address) {
                Some((_, seen)) => *seen = (*seen).max(at),
                None => seen.push((address, at)),
            }
        }
        seen.sort_by(|(a, a_at), (b, b_at)| b_at.cmp(a_at).then_with(|| a.cmp(b)));
        seen.truncate(MAX_RECENT_SOURCES);
        if seen.is_empty() {
            self.seen = None;
        }
        self.announced_at = self.announced_at.max(other.announced_at);
    }

    /// Most recent first.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, SystemTime)> + '_ {
        self.seen.iter().flat_map(|seen| seen.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_none()
    }

    /// When a new source of this token was last announced, if ever.
    pub fn announced_at(&self) -> Option<SystemTime> {
        self.announced_at
    }

    /// As read back from a store: `seen` in any order, merged as ever.
    pub fn read_back(
        seen: impl IntoIterator<Item = (IpAddr, SystemTime)>,
        announced_at: Option<SystemTime>,
    ) -> RecentSources {
        let mut recent = RecentSources::of(seen);
        recent.announced_at = announced_at;
        recent
    }

    /// Notes that a new source was announced at `at`.
    pub fn announce(&mut self, at: SystemTime) {
        self.announced_at = self.announced_at.max(Some(at));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_is_new_once_and_the_latest_time_wins() {
        let mut recent = RecentSources::default();
        assert!(recent.see(ip("10.0.0.1"), at(5)));
        assert!(!recent.see(ip("10.0.0.1"), at(3)), "seen already");
        assert!(
            !recent.see(ip("::ffff:10.0.0.1"), at(9)),
            "the same client, mapped"
        );
        assert_eq!(recent.iter().collect::<Vec<_>>(), [(ip("10.0.0.1"), at(9))]);
    }

    #[test]
    fn only_the_five_most_recent_are_kept() {
        let recent = RecentSources::of((1..=7).map(|i| (ip(&format!("10.0.0.{i}")), at(i))));
        let kept: Vec<IpAddr> = recent.iter().map(|(a, _)| a).collect();
        let expected: Vec<IpAddr> = (3..=7).rev().map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(kept, expected);
        // An address that fell out is new again.
        let mut recent = recent;
        assert!(recent.see(ip("10.0.0.1"), at(8)));
    }
}
