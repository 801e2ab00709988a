//! Events: what a change to a token, or its coming expiry, tells the world,
//! in the form the store's outbox keeps and webhooks send (never a secret).
//!
//! The service describes a change before the store makes it (a [`Draft`]:
//! what kind of change, by whom, when); the store completes the draft with
//! the token as the change left it and writes the [`Event`] in the same
//! transaction as the change, so an acknowledged change always has its
//! event. The body is serialized once, here: the bytes kept are the bytes
//! sent and signed.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    clock::rfc3339,
    model::{Bindings, LimitParts, RecentSources, RouteParts, ServiceToken, TokenId},
};

/// What happened to a token, as `type` and `X-Sts-Event` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Created,
    Updated,
    Rotated,
    Disabled,
    Enabled,
    Deleted,
    Purged,
    Leaked,
    Expiring,
    Expired,
    NewSource,
    ReuseDetected,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "token.created",
            EventType::Updated => "token.updated",
            EventType::Rotated => "token.rotated",
            EventType::Disabled => "token.disabled",
            EventType::Enabled => "token.enabled",
            EventType::Deleted => "token.deleted",
            EventType::Purged => "token.purged",
            EventType::Leaked => "token.leaked",
            EventType::Expiring => "token.expiring",
            EventType::Expired => "token.expired",
            EventType::NewSource => "token.new_source",
            EventType::ReuseDetected => "token.reuse_detected",
        }
    }
}

/// Who made a change: the token that called (an admin, a manager, or the
/// token itself rotating itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: TokenId,
    pub name: String,
}

impl Actor {
    pub fn of(token: &ServiceToken) -> Actor {
        Actor {
            id: token.id,
            name: token.name.as_str().to_owned(),
        }
    }
}

/// The kind of change a draft describes; an edit's event type depends on
/// what it changed (see [`Draft::event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Created,
    Edited,
    Rotated,
    Deleted,
    Purged,
    Leaked,
    ReuseDetected,
}

/// An event as the service knows it before the store makes the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    change: Kind,
    actor: Option<Actor>,
    /// Where a leaked token's revocation came from.
    source: Option<IpAddr>,
    at: SystemTime,
}

impl Draft {
    fn new(change: Kind, actor: Option<Actor>, at: SystemTime) -> Draft {
        Draft {
            change,
            actor,
            source: None,
            at,
        }
    }

    pub fn created(actor: Actor, at: SystemTime) -> Draft {
        Draft::new(Kind::Created, Some(actor), at)
    }

    /// An update: `token.updated`, or `token.disabled` / `token.enabled`
    /// when it turned the token off or on.
    pub fn edited(actor: Actor, at: SystemTime) -> Draft {
        Draft::new(Kind::Edited, Some(actor), at)
    }

    pub fn rotated(actor: Actor, at: SystemTime) -> Draft {
        Draft::new(Kind::Rotated, Some(actor), at)
    }

    pub fn deleted(actor: Actor, at: SystemTime) -> Draft {
        Draft::new(Kind::Deleted, Some(actor), at)
    }

    /// Deleted by the server itself, long expired.
    pub fn purged(at: SystemTime) -> Draft {
        Draft::new(Kind::Purged, None, at)
    }

    /// Revoked by someone holding its secret, with no other credential.
    pub fn leaked(source: Option<IpAddr>, at: SystemTime) -> Draft {
        Draft {
            source,
            ..Draft::new(Kind::Leaked, None, at)
        }
    }

    /// A retired secret of the token presented again (from `source`,
    /// where the check knew it); the token disabled with it under
    /// `--revoke-on-reuse`.
    pub fn reuse_detected(source: Option<IpAddr>, at: SystemTime) -> Draft {
        Draft {
            source,
            ..Draft::new(Kind::ReuseDetected, None, at)
        }
    }

    /// The event of this change to `before` (the token as it was),
    /// leaving `after` (for a delete, the token as it was too).
    pub fn event(&self, before: &ServiceToken, after: &ServiceToken) -> Event {
        let kind = match self.change {
            Kind::Created => EventType::Created,
            Kind::Edited => match (before.disabled, after.disabled) {
                (false, true) => EventType::Disabled,
                (true, false) => EventType::Enabled,
                _ => EventType::Updated,
            },
            Kind::Rotated => EventType::Rotated,
            Kind::Deleted => EventType::Deleted,
            Kind::Purged => EventType::Purged,
            Kind::Leaked => EventType::Leaked,
            Kind::ReuseDetected => EventType::ReuseDetected,
        };
        Event::build(kind, self.at, after, |body| {
            body.actor = self.actor.as_ref().map(|actor| ActorJson {
                id: actor.id.get(),
                name: actor.name.clone(),
            });
            body.source = self.source.map(|s| s.to_string());
        })
    }
}

/// How close a token is to its expiry, in the steps `token.expiring` and
/// `token.expired` announce: each once per token and expiration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiry {
    Within30Days = 1,
    Within7Days = 2,
    Within1Day = 3,
    Expired = 4,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Expiry {
    /// Tokens expiring further away than this have nothing to announce.
    pub const HORIZON: Duration = Duration::from_secs(30 * 86_400);

    /// The step a token expiring at `expiration` has reached at `now`.
    pub fn at(expiration: SystemTime, now: SystemTime) -> Option<Expiry> {
        let Ok(left) = expiration.duration_since(now) else {
            return Some(Expiry::Expired);
        };
        if left.is_zero() {
            Some(Expiry::Expired)
        } else if left <= DAY {
            Some(Expiry::Within1Day)
        } else if left <= 7 * DAY {
            Some(Expiry::Within7Days)
        } else if left <= Expiry::HORIZON {
            Some(Expiry::Within30Days)
        } else {
            None
        }
    }

    /// As a store keeps it.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The step a store kept; 0 (or anything unknown) is none yet.
    pub fn from_u8(level: u8) -> Option<Expiry> {
        match level {
            1 => Some(Expiry::Within30Days),
            2 => Some(Expiry::Within7Days),
            3 => Some(Expiry::Within1Day),
            4 => Some(Expiry::Expired),
            _ => None,
        }
    }

    /// The window a `token.expiring` event names; none for `token.expired`.
    fn threshold(self) -> Option<&'static str> {
        match self {
            Expiry::Within30Days => Some("30d"),
            Expiry::Within7Days => Some("7d"),
            Expiry::Within1Day => Some("1d"),
            Expiry::Expired => None,
        }
    }

    /// The event announcing that `token` reached this step at `now`.
    pub fn event(self, token: &ServiceToken, now: SystemTime) -> Event {
        let kind = match self {
            Expiry::Expired => EventType::Expired,
            _ => EventType::Expiring,
        };
        Event::build(kind, now, token, |body| {
            body.threshold = self.threshold();
        })
    }
}

/// One event, as the outbox keeps it and webhooks send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique; also `X-Sts-Delivery`, so a receiver can drop a redelivery.
    pub id: String,
    /// `token.created`, ...: kept as text, so an event written by a later
    /// release is still delivered by this one.
    pub kind: String,
    /// The JSON body, exactly as sent and signed.
    pub body: Vec<u8>,
    pub occurred_at: SystemTime,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct EventJson<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    occurred_at: String,
    /// How far off the expiry a `token.expiring` announces.
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<&'static str>,
    token: EventToken<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<ActorJson>,
    /// The address a leaked token's revocation came from, or the new
    /// address a token was used from.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// The sources a token was used from before a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    recent_sources: Option<Vec<SourceJson>>,
}

#[derive(Serialize)]
struct SourceJson {
    address: String,
    last_seen_at: String,
}

/// `token.new_source`: `token` (as it is now) was used from `source`, an
/// address outside `recent` (its recent sources until then), at `at`.
pub fn new_source(
    token: &ServiceToken,
    source: IpAddr,
    recent: &RecentSources,
    at: SystemTime,
) -> Event {
    Event::build(EventType::NewSource, at, token, |body| {
        body.source = Some(source.to_string());
        body.recent_sources = Some(
            recent
                .iter()
                .map(|(address, seen)| SourceJson {
                    address: address.to_string(),
                    last_seen_at: rfc3339(seen),
                })
                .collect(),
        );
    })
}

#[derive(Serialize)]
struct ActorJson {
    id: u64,
    name: String,
}

/// A token's description, every field but its secrets (and their hashes).
#[derive(Serialize)]
struct EventToken<'a> {
    id: u64,
    name: &'a str,
    description: &'a str,
    roles: Vec<&'a str>,
    labels: &'a BTreeMap<String, String>,
    expiration: Option<String>,
    disabled: bool,
    created_at: String,
    created_by: &'a str,
    updated_at: String,
    last_used_at: Option<String>,
    /// Until when a rotated-out secret still works.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expiration: Option<String>,
    /// The bindings, each left out while it binds nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_sources: Vec<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_routes: Vec<RouteParts>,
    /// Left out while there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<LimitParts>,
    /// The direct owner's id; left out for an admin's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<u64>,
}

impl Event {
    fn build(
        kind: EventType,
        at: SystemTime,
        token: &ServiceToken,
        fill: impl FnOnce(&mut EventJson<'_>),
    ) -> Event {
        let id = event_id();
        // Every field named: a new one must decide whether events carry it.
        let ServiceToken {
            id: token_id,
            name,
            roles,
            expiration,
            created_at,
            description,
            labels,
            disabled,
            last_used_at,
            created_by,
            updated_at,
            previous_secret,
            bindings:
                Bindings {
                    sources,
                    audiences,
                    routes,
                },
            // Usage, not a manager's setting: `token.new_source` carries them.
            recent_sources: _,
            rate_limits,
            owners,
            // How the token renews itself, not something a change sets.
            lifetime: _,
        } = token;
        let mut body = EventJson {
            id: &id,
            kind: kind.as_str(),
            occurred_at: rfc3339(at),
            threshold: None,
            token: EventToken {
                id: token_id.get(),
                name: name.as_str(),
                description: description.as_str(),
                roles: roles.iter().map(|r| r.as_str()).collect(),
                labels: labels.as_map(),
                expiration: expiration.map(rfc3339),
                disabled: *disabled,
                created_at: rfc3339(*created_at),
                created_by,
                updated_at: rfc3339(*updated_at),
                last_used_at: last_used_at.map(rfc3339),
                previous_secret_expiration: previous_secret.map(|p| rfc3339(p.expiration)),
                allowed_sources: sources.texts(),
                audiences: audiences.as_slice(),
                allowed_routes: RouteParts::of(routes),
                rate_limits: LimitParts::of(rate_limits),
                owner_id: owners.direct().map(|id| id.get()),
            },
            actor: None,
            source: None,
            recent_sources: None,
        };
        fill(&mut body);
        let bytes = serde_json::to_vec(&body).expect("an event always serializes");
        Event {
            id: id.clone(),
            kind: kind.as_str().to_owned(),
            body: bytes,
            occurred_at: at,
        }
    }
}

/// A random UUID (version 4) as text.
fn event_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// An event waiting in the outbox: its place in line, and the webhooks
/// (by [`crate::config::WebhookUrl::key`]) that have it already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub event: Event,
    pub delivered_to: Vec<String>,
}

/// What a delivery round did with one pending event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Every webhook has it: out of the outbox.
    Delivered { seq: u64 },
    /// Some webhook still lacks it: kept, with those that have it, and not
    /// offered again before `retry_at`. Events waiting on the same webhook
    /// get the very same time, so they come due together and are claimed
    /// again in the order they happened.
    Pending {
        seq: u64,
        delivered_to: Vec<String>,
        retry_at: SystemTime,
    },
}

/// How full the outbox is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    /// When the oldest pending event happened.
    pub oldest: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewToken;

    fn token(expiration: Option<SystemTime>) -> ServiceToken {
        let new = NewToken::parse("ci", &["deploy"], expiration).unwrap();
        ServiceToken::new(TokenId::parse(7).unwrap(), &new, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn expiry_steps_follow_the_time_left() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let at = |left: Duration| Expiry::at(now + left, now);
        assert_eq!(at(31 * DAY), None);
        assert_eq!(at(30 * DAY), Some(Expiry::Within30Days));
        assert_eq!(
            at(7 * DAY + Duration::from_secs(1)),
            Some(Expiry::Within30Days)
        );
        assert_eq!(at(7 * DAY), Some(Expiry::Within7Days));
        assert_eq!(at(DAY), Some(Expiry::Within1Day));
        assert_eq!(at(Duration::ZERO), Some(Expiry::Expired));
        assert_eq!(Expiry::at(now - DAY, now), Some(Expiry::Expired));
        for step in [
            Expiry::Within30Days,
            Expiry::Within7Days,
            Expiry::Within1Day,
            Expiry::Expired,
        ] {
            assert_eq!(Expiry::from_u8(step.as_u8()), Some(step));
        }
        assert_eq!(Expiry::from_u8(0), None);
    }

    #[test]
    fn an_edit_names_what_it_did() {
        let before = token(None);
        let mut after = before.clone();
        let actor = Actor::of(&before);
        let kind = |before: &ServiceToken, after: &ServiceToken| {
            Draft::edited(actor.clone(), SystemTime::UNIX_EPOCH)
                .event(before, after)
                .kind
        };
        assert_eq!(kind(&before, &after), "token.updated");
        after.disabled = true;
        assert_eq!(kind(&before, &after), "token.disabled");
        assert_eq!(kind(&after, &before), "token.enabled");
    }

    #[test]
    fn the_body_describes_the_token_and_nothing_secret() {
        let t = token(Some(SystemTime::UNIX_EPOCH + DAY));
        let event =
            Draft::leaked(Some("10.0.0.9".parse().unwrap()), SystemTime::UNIX_EPOCH).event(&t, &t);
        let json: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(json["id"], event.id.as_str());
        assert_eq!(json["type"], "token.leaked");
        assert_eq!(json["occurred_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["source"], "10.0.0.9");
        assert!(json.get("actor").is_none());
        assert_eq!(json["token"]["id"], 7);
        assert_eq!(json["token"]["roles"][0], "deploy");
        assert_eq!(json["token"]["expiration"], "1970-01-02T00:00:00Z");
        let keys: Vec<&String> = json["token"].as_object().unwrap().keys().collect();
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("hash") || k.contains("secret\""))
        );
        let expiring = Expiry::Within7Days.event(&t, SystemTime::UNIX_EPOCH);
        let json: serde_json::Value = serde_json::from_slice(&expiring.body).unwrap();
        assert_eq!(json["type"], "token.expiring");
        assert_eq!(json["threshold"], "7d");
        assert_ne!(expiring.id, event.id);
        assert_eq!(expiring.id.len(), 36);
    }
}
