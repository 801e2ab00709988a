//! The console's overview: how many tokens are active, disabled, expiring,
//! unused and over policy, among those the caller manages (every token for
//! an admin, its own for a manager).

use std::time::SystemTime;

use crate::{
    error::Error,
    model::{ListFilter, TokenSummary},
    page::PageRequest,
};

use super::{Authority, TokenService};

/// Up to this many tokens, an admin's overview counts them afresh; above,
/// it shows the upkeep's last count (the one behind the metrics).
const FRESH_UP_TO: u64 = 10_000;
/// Tokens a manager's overview, or the count over policy, walks at most.
const WALK_AT_MOST: usize = 10_000;
const WALK_PAGE: usize = 1000;

/// The overview's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overview {
    pub summary: TokenSummary,
    /// When counted.
    pub as_of: SystemTime,
    /// Tokens over a policy (`None`: the server has none), and whether
    /// there may be more than counted.
    pub over_policy: Option<(u64, bool)>,
    /// Whether the counts are of every token (an admin's) or of those the
    /// caller manages; and whether there were more than were walked.
    pub every_token: bool,
    pub capped: bool,
}

impl TokenService {
    pub async fn overview(&self, authority: &Authority) -> Result<Overview, Error> {
        let now = self.now();
        let every_token = authority.kind() == "admin";
        let (summary, as_of, capped) = if every_token {
            match self.last_summary() {
                Some((at, summary)) if self.store.count().await? > FRESH_UP_TO => {
                    (summary, at, false)
                }
                _ => (self.store.summary(now).await?, now, false),
            }
        } else {
            let mut summary = TokenSummary::default();
            let (_, more) = self
                .walk(authority, &ListFilter::default(), |token| {
                    summary.add(token, now)
                })
                .await?;
            (summary, now, more)
        };
        let config = &self.config;
        let over_policy = if config.lifetime.max().is_some() || config.require_source_binding {
            let filter = ListFilter::default().over_policy(true);
            Some(self.walk(authority, &filter, |_| {}).await?)
        } else {
            None
        };
        Ok(Overview {
            summary,
            as_of,
            over_policy,
            every_token,
            capped,
        })
    }

    /// Calls `each` on up to [`WALK_AT_MOST`] tokens `filter` lists for
    /// `authority`; how many, and whether there were more.
    async fn walk(
        &self,
        authority: &Authority,
        filter: &ListFilter,
        mut each: impl FnMut(&crate::model::ServiceToken),
    ) -> Result<(u64, bool), Error> {
        let mut seen = 0u64;
        let mut after = None;
        loop {
            let page = self
                .list(authority, PageRequest::after_id(after, WALK_PAGE), filter)
                .await?;
            for token in &page.tokens {
                each(token);
            }
            seen += page.tokens.len() as u64;
            match (page.next_cursor, page.tokens.last()) {
                (Some(_), Some(last)) if (seen as usize) < WALK_AT_MOST => after = Some(last.id),
                (Some(_), Some(_)) => return Ok((seen, true)),
                _ => return Ok((seen, false)),
            }
        }
    }
}
