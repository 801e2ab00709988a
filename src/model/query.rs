//! Questions over many tokens: the counts behind the metrics
//! (`TokenSummary`) and what a list selects (`ListFilter`).

use std::time::{Duration, SystemTime};

use super::fields::FieldError;
use super::fields::Labels;
use super::fields::MAX_NAME_CHARS;
use super::fields::Role;
use super::fields::TokenId;
use super::token::ServiceToken;

/// first, then disabled, else active), and of the active ones, those
/// expiring within each of [`TokenSummary::EXPIRING`] and those unused
/// (never used: since created) for each of [`TokenSummary::UNUSED`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenSummary {
    pub active: u64,
    pub disabled: u64,
    pub expired: u64,
    pub expiring: [u64; 3],
    pub unused: [u64; 2],
    /// The earliest expiration of an active token.
    pub next_expiry: Option<SystemTime>,
}

impl TokenSummary {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    /// The windows of `expiring`, with their metric labels.
    pub const EXPIRING: [(&'static str, Duration); 3] = [
        ("1d", TokenSummary::DAY),
        ("7d", Duration::from_secs(7 * 24 * 3600)),
        ("30d", Duration::from_secs(30 * 24 * 3600)),
    ];
    /// The windows of `unused`, with their metric labels.
    pub const UNUSED: [(&'static str, Duration); 2] = [
        ("30d", Duration::from_secs(30 * 24 * 3600)),
        ("90d", Duration::from_secs(90 * 24 * 3600)),
    ];

    /// Counts `token` as of `now`.
    pub fn add(&mut self, token: &ServiceToken, now: SystemTime) {
        if token.is_expired_at(now) {
            self.expired += 1;
            return;
        }
        if token.disabled {
            self.disabled += 1;
            return;
        }
        self.active += 1;
        if let Some(expiration) = token.expiration {
            self.next_expiry = Some(self.next_expiry.map_or(expiration, |n| n.min(expiration)));
            for (count, (_, window)) in self.expiring.iter_mut().zip(TokenSummary::EXPIRING) {
                if now
                    .checked_add(window)
                    .is_none_or(|until| expiration <= until)
                {
                    *count += 1;
                }
            }
        }
        let since = token.last_used_at.unwrap_or(token.created_at);
        for (count, (_, window)) in self.unused.iter_mut().zip(TokenSummary::UNUSED) {
            if now.checked_sub(window).is_some_and(|cutoff| since < cutoff) {
                *count += 1;
            }
        }
    }
}

/// What `list` shows: every filter set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub name_prefix: Option<String>,
    pub role: Option<Role>,
    /// Not used since then: last used before it, or never used and created
    /// before it (one rule with `sts_tokens_unused`: a token made a minute
    /// ago has not been unused for 90 days).
    pub unused_since: Option<SystemTime>,
    /// Expiring before then (expired included).
    pub expiring_before: Option<SystemTime>,
    pub disabled: Option<bool>,
    /// Over the maximum lifetime: never expiring, or expiring after then.
    /// The service sets it from `over_policy`; stores only read it.
    pub expiring_after: Option<SystemTime>,
    /// Over the source-binding policy: bound to no source. The service
    /// sets it from `over_policy`; a token over either policy matches.
    pub without_sources: bool,
    /// Asked for: tokens a policy would not allow today.
    pub over_policy: bool,
    /// Owned by every one of these, directly or through the tokens they
    /// made: `--owner`, and, for a manager's list, the manager itself.
    pub owners: Vec<TokenId>,
    /// Holding only these roles (`None`: any): a manager's list shows the
    /// tokens whose roles it could grant. Set by the service.
    pub roles_within: Option<Vec<Role>>,
    /// Carrying this label (`key`), or this label with this value
    /// (`key=value`).
    pub label: Option<LabelSelector>,
    /// Only tokens bound to something (sources, audiences or routes:
    /// `true`) or to nothing (`false`).
    pub bound: Option<bool>,
}

/// A label a listed token must carry: its key, and the value it must have
/// (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    pub value: Option<String>,
}

impl LabelSelector {
    /// `key` or `key=value`, each as a label's key and value must be.
    pub fn parse(selector: &str) -> Result<LabelSelector, FieldError> {
        let (key, value) = match selector.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (selector, None),
        };
        Labels::parse([(key, value.unwrap_or(""))]).map_err(|e| {
            FieldError::new(
                "label",
                format!(
                    "must be key or key=value, with a label's key and value ({})",
                    e.problem
                ),
            )
        })?;
        Ok(LabelSelector {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        labels
            .as_map()
            .get(&self.key)
            .is_some_and(|value| self.value.as_ref().is_none_or(|wanted| wanted == value))
    }
}

impl ListFilter {
    /// From a request's fields: empty text means no filter.
    pub fn parse(
        name_prefix: &str,
        role: &str,
        unused_since: Option<SystemTime>,
        expiring_before: Option<SystemTime>,
        disabled: Option<bool>,
    ) -> Result<ListFilter, FieldError> {
        if name_prefix.chars().count() > MAX_NAME_CHARS {
            return Err(FieldError::new(
                "name_prefix",
                format!("is longer than a name can be ({MAX_NAME_CHARS} characters)"),
            ));
        }
        let role = match role {
            "" => None,
            role => Some(Role::parse(role)?),
        };
        Ok(ListFilter {
            name_prefix: (!name_prefix.is_empty()).then(|| name_prefix.to_owned()),
            role,
            unused_since,
            expiring_before,
            disabled,
            expiring_after: None,
            without_sources: false,
            over_policy: false,
            owners: Vec::new(),
            roles_within: None,
            label: None,
            bound: None,
        })
    }

    /// The same filter, also asking for a label (`""`: none).
    pub fn labelled(mut self, selector: &str) -> Result<ListFilter, FieldError> {
        if !selector.is_empty() {
            self.label = Some(LabelSelector::parse(selector)?);
        }
        Ok(self)
    }

    /// The same filter, also asking for the tokens `owner` owns (0: none).
    pub fn owned_by(mut self, owner: u64) -> Result<ListFilter, FieldError> {
        if owner != 0 {
            let owner =
                TokenId::parse(owner).map_err(|e| FieldError::new("owner_id", e.problem))?;
            self.owners.push(owner);
        }
        Ok(self)
    }

    /// The same filter, also asking for tokens over the lifetime policy.
    pub fn over_policy(self, over_policy: bool) -> ListFilter {
        ListFilter {
            over_policy,
            ..self
        }
    }

    pub fn matches(&self, token: &ServiceToken) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|prefix| token.name.as_str().starts_with(prefix))
            && self
                .role
                .as_ref()
                .is_none_or(|role| token.roles.contains(role))
            && self
                .unused_since
                .is_none_or(|since| token.last_used_at.unwrap_or(token.created_at) < since)
            && self.expiring_before.is_none_or(|before| {
                token
                    .expiration
                    .is_some_and(|expiration| expiration < before)
            })
            && self
                .disabled
                .is_none_or(|disabled| token.disabled == disabled)
            && self.over_a_policy(token)
            && self.owners.iter().all(|owner| token.owners.include(*owner))
            && self
                .roles_within
                .as_ref()
                .is_none_or(|within| token.roles.iter().all(|role| within.contains(role)))
            && self
                .label
                .as_ref()
                .is_none_or(|label| label.matches(&token.labels))
            && self
                .bound
                .is_none_or(|bound| bound != token.bindings.is_empty())
    }

    /// No policy asked about, or `token` is over one of those asked about.
    fn over_a_policy(&self, token: &ServiceToken) -> bool {
        let over_lifetime = self
            .expiring_after
            .is_some_and(|after| token.expiration.is_none_or(|expiration| expiration > after));
        let unbound = self.without_sources && token.bindings.sources.is_empty();
        (self.expiring_after.is_none() && !self.without_sources) || over_lifetime || unbound
    }
}
