//! Who may do what to which token: the delegation rules, as two pure
//! functions over plain values. [`judge`] says whether a caller (an admin
//! or a manager) may make, reach or change a token; [`renewal`] says what
//! a token's self-rotation may give it. Every transport's management call
//! goes through them, and the unit and property tests below hold them to
//! the one promise: nothing a manager or a token does for itself gives any
//! token a role no admin granted above it, or an expiration past those
//! above it.

use std::time::{Duration, SystemTime};

use crate::model::{Role, ServiceToken};

/// The roles that decide who manages what, and whether managers may make
/// managers.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub admin_role: &'a Role,
    pub manager_role: &'a Role,
    /// `--managers-may-delegate`: a manager may grant the manager role.
    pub may_delegate: bool,
}

/// What a management call does to a token.
#[derive(Debug, Clone, Copy)]
pub enum Act<'a> {
    /// Makes `token`, as it would be stored (its owners included).
    Create(&'a ServiceToken),
    /// Sees, rotates, disables or deletes `token`.
    Reach(&'a ServiceToken),
    /// Changes `before` into `after`.
    Change {
        before: &'a ServiceToken,
        after: &'a ServiceToken,
    },
}

/// Why [`judge`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token is not the caller's to manage: answered as a token that
    /// does not exist, so a manager learns nothing of other teams' ids.
    NotYours,
    /// The act would give a token more than the caller may: what, named.
    Denied(String),
}

/// The kind of caller a management call counts under (bounded labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    Admin,
    Manager,
    /// A token rotating itself.
    Own,
}

impl CallerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerKind::Admin => "admin",
            CallerKind::Manager => "manager",
            CallerKind::Own => "self",
        }
    }
}

/// Whether `caller` may do `act`; `above` are the caller's own owners that
/// still exist (its ceiling: nothing it makes outlives them either). An admin may do anything (the lockout
/// rule and the policies are checked elsewhere, for everyone). A manager
/// reaches only the tokens it owns (its id in their chain of owners) whose
/// roles it could grant today; it makes and changes tokens only within
/// its own roles (never the admin role, the manager role only where
/// managers may delegate), its own expiration, and, for a new token, its
/// own bindings and rate limits; a change never widens a token's bindings
/// or limits, and never moves its owner.
pub fn judge(
    rules: &Rules<'_>,
    caller: &ServiceToken,
    above: &[ServiceToken],
    act: Act<'_>,
) -> Result<(), Refusal> {
    if caller.roles.contains(rules.admin_role) {
        return Ok(());
    }
    if !caller.roles.contains(rules.manager_role) {
        return Err(Refusal::Denied(format!(
            "the caller's service token holds neither the `{}` nor the `{}` role",
            rules.admin_role, rules.manager_role
        )));
    }
    match act {
        Act::Reach(token) => reach(rules, caller, token),
        Act::Create(token) => {
            if token.owners.direct() != Some(caller.id) {
                return Err(Refusal::NotYours);
            }
            for role in token.roles.iter() {
                grantable(rules, caller, role)?;
            }
            within_expiration(caller, above, token.expiration)?;
            if let Some(field) = token.bindings.widening(&caller.bindings) {
                return Err(Refusal::Denied(format!(
                    "{field}: a manager's tokens are bound within the manager's own {field}"
                )));
            }
            if let Some(limit) = token.rate_limits.widening(&caller.rate_limits) {
                return Err(Refusal::Denied(format!(
                    "rate_limits: a manager's tokens are limited at least as the manager is, and none keeps its limit `{limit}`"
                )));
            }
            Ok(())
        }
        Act::Change { before, after } => {
            reach(rules, caller, before)?;
            if after.owners != before.owners {
                return Err(Refusal::Denied(
                    "owner_id: only an admin changes a token's owner".to_owned(),
                ));
            }
            if after.roles != before.roles {
                for role in after.roles.iter() {
                    grantable(rules, caller, role)?;
                }
            }
            if after.expiration != before.expiration {
                within_expiration(caller, above, after.expiration)?;
            }
            if let Some(field) = after.bindings.widening(&before.bindings) {
                return Err(Refusal::Denied(format!(
                    "{field}: a manager may narrow a token's {field}, never widen them"
                )));
            }
            if let Some(limit) = after.rate_limits.widening(&before.rate_limits) {
                return Err(Refusal::Denied(format!(
                    "rate_limits: a manager may tighten a token's limits, never loosen or drop one (`{limit}`)"
                )));
            }
            Ok(())
        }
    }
}

/// A token the manager owns, with only roles it could grant now: so an
/// admin handing a token to a manager, or a manager losing a role, never
/// widens anyone's power.
fn reach(rules: &Rules<'_>, caller: &ServiceToken, token: &ServiceToken) -> Result<(), Refusal> {
    let mine = token.id != caller.id
        && token.owners.include(caller.id)
        && token
            .roles
            .iter()
            .all(|role| grantable(rules, caller, role).is_ok());
    if mine { Ok(()) } else { Err(Refusal::NotYours) }
}

fn grantable(rules: &Rules<'_>, caller: &ServiceToken, role: &Role) -> Result<(), Refusal> {
    let problem = if role == rules.admin_role {
        "the admin role is never delegated"
    } else if role == rules.manager_role && !rules.may_delegate {
        "managers may not make managers on this server (--managers-may-delegate)"
    } else if !caller.roles.contains(role) {
        "a manager grants only roles it holds"
    } else {
        return Ok(());
    };
    Err(Refusal::Denied(format!("role `{role}`: {problem}")))
}

/// No later than the caller, nor any owner above it.
fn within_expiration(
    caller: &ServiceToken,
    above: &[ServiceToken],
    expiration: Option<SystemTime>,
) -> Result<(), Refusal> {
    let ceiling = std::iter::once(caller)
        .chain(above)
        .filter_map(|token| token.expiration.map(|e| (e, token.id)))
        .min();
    let Some((ceiling, whose)) = ceiling else {
        return Ok(());
    };
    if expiration.is_some_and(|expiration| expiration <= ceiling) {
        return Ok(());
    }
    let whose = if whose == caller.id {
        "the manager itself".to_owned()
    } else {
        format!("its owner, token {whose}")
    };
    Err(Refusal::Denied(format!(
        "expiration: a manager's tokens expire no later than the manager, nor than those above it: {whose} expires {}",
        crate::clock::rfc3339_micros(ceiling)
    )))
}

/// What a self-rotation may give a token: the bounds it is held to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Renewal {
    /// `--max-token-lifetime`: no later than now plus this.
    pub max_lifetime: Option<Duration>,
    /// `--max-token-age`: no later than the token's creation plus this.
    pub max_age: Option<Duration>,
}

/// Why [`renewal`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalRefusal {
    /// The expiration asked for is past `bound` (named).
    PastBound { bound: String },
    /// Nothing is left of the token's allowed age.
    TooOld,
}

/// The expiration a token's new secret gets when it rotates itself at
/// `now`: `requested` when given, else its lifetime from now (none for a
/// token without an expiration), and in either case never past now plus the
/// maximum lifetime, its creation plus the maximum age, nor any of its
/// owners' expirations (`owners`: those that still exist). A requested
/// expiration past one of those is refused, naming it; the default is cut
/// down to fit, and a policy requiring an expiration gives one to a token
/// that had none.
pub fn renewal(
    token: &ServiceToken,
    owners: &[ServiceToken],
    requested: Option<SystemTime>,
    now: SystemTime,
    bounds: Renewal,
) -> Result<Option<SystemTime>, RenewalRefusal> {
    let mut caps: Vec<(SystemTime, String)> = Vec::new();
    if let Some(max) = bounds.max_lifetime {
        let text = crate::clock::span_text(max);
        caps.push((
            now.checked_add(max).unwrap_or_else(crate::clock::latest),
            format!("this server's maximum token lifetime of {text} (--max-token-lifetime)"),
        ));
    }
    if let Some(age) = bounds.max_age {
        let text = crate::clock::span_text(age);
        let until = token
            .created_at
            .checked_add(age)
            .unwrap_or_else(crate::clock::latest);
        if until <= now {
            return Err(RenewalRefusal::TooOld);
        }
        caps.push((
            until,
            format!(
                "this server's maximum token age of {text} from its creation (--max-token-age)"
            ),
        ));
    }
    for owner in owners {
        if let Some(expiration) = owner.expiration {
            caps.push((
                expiration,
                format!("the expiration of its owner, token {}", owner.id),
            ));
        }
    }
    match requested {
        Some(requested) => match caps.into_iter().find(|(cap, _)| requested > *cap) {
            Some((_, bound)) => Err(RenewalRefusal::PastBound { bound }),
            None => Ok(Some(requested)),
        },
        None => {
            // A token without an expiration keeps none; one made before
            // lifetimes were kept renews for what it was given then.
            let lifetime = token.expiration.and_then(|expiration| {
                token
                    .lifetime
                    .or_else(|| expiration.duration_since(token.created_at).ok())
            });
            let wanted = lifetime.map(|lifetime| {
                now.checked_add(lifetime)
                    .unwrap_or_else(crate::clock::latest)
            });
            let cap = caps.into_iter().map(|(cap, _)| cap).min();
            Ok(match (wanted, cap) {
                (Some(wanted), Some(cap)) => Some(wanted.min(cap)),
                (wanted, cap) => wanted.or(cap),
            })
        }
    }
}

#[cfg(test)]
mod tests;
