//! What gRPC answers: domain values as protobuf messages. A token is
//! shown whole to its managers and as who it is to a checker; a
//! validation, a revocation and a Watch message as the API spells them.

use std::time::Duration;

use crate::{
    model::{BindingRefusal, Bindings, Etag, MatchedSecret, ServiceToken},
    proto,
    rate_limit::Quota,
    service::{InvalidReason, Revoked, Validation, WatchMessage},
};

pub(super) fn watch_response(message: WatchMessage) -> proto::WatchResponse {
    let (event, token_id, heartbeat_interval) = match message {
        WatchMessage::Synced { heartbeat } => (
            proto::WatchEvent::Synced,
            0,
            prost_types::Duration::try_from(heartbeat).ok(),
        ),
        WatchMessage::Heartbeat => (proto::WatchEvent::Heartbeat, 0, None),
        WatchMessage::Changed(id) => (proto::WatchEvent::Changed, id.get(), None),
        WatchMessage::Resync => (proto::WatchEvent::Resync, 0, None),
    };
    proto::WatchResponse {
        event: event as i32,
        token_id,
        heartbeat_interval,
    }
}

impl From<Revoked> for proto::RevokeResult {
    fn from(result: Revoked) -> proto::RevokeResult {
        match result {
            Revoked::Revoked => proto::RevokeResult::Revoked,
            Revoked::NotFound => proto::RevokeResult::NotFound,
            Revoked::Malformed => proto::RevokeResult::Malformed,
        }
    }
}

impl From<ServiceToken> for proto::ServiceToken {
    /// A token as management answers it: every field, its etag too.
    fn from(token: ServiceToken) -> proto::ServiceToken {
        shown(token, ShownTo::Manager)
    }
}

/// Who a token is shown to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ShownTo {
    /// Its managers: everything.
    Manager,
    /// Whoever checks it: who it is, never where else it may be or was
    /// used (its bindings, its recent sources), nor its etag (a checksum
    /// only a manager sends back, not worth a hash on every check).
    Checker,
}

fn shown(token: ServiceToken, to: ShownTo) -> proto::ServiceToken {
    let manager = to == ShownTo::Manager;
    let etag = if manager {
        Etag::of(&token).to_string()
    } else {
        String::new()
    };
    // Every field named: a new one must decide how gRPC shows it.
    let ServiceToken {
        id,
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
        recent_sources,
        rate_limits,
        owners,
        lifetime,
    } = token;
    // Built only when shown: a check's answer must not pay for them.
    fn only<T>(shown: bool, items: impl FnOnce() -> Vec<T>) -> Vec<T> {
        if shown { items() } else { Vec::new() }
    }
    proto::ServiceToken {
        id: id.get(),
        name: name.as_str().to_owned(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        expiration: expiration.map(Into::into),
        created_at: Some(created_at.into()),
        description: description.as_str().to_owned(),
        labels: labels.as_map().clone(),
        disabled,
        last_used_at: last_used_at.map(Into::into),
        created_by,
        updated_at: Some(updated_at.into()),
        previous_secret_expiration: previous_secret.map(|p| p.expiration.into()),
        previous_secret_last_used_at: previous_secret.and_then(|p| p.last_used_at).map(Into::into),
        etag,
        allowed_sources: only(manager, || sources.texts()),
        audiences: only(manager, || audiences.as_slice().to_vec()),
        allowed_routes: only(manager, || {
            routes
                .rules()
                .iter()
                .map(|rule| proto::AllowedRoute {
                    methods: rule.methods().to_vec(),
                    path: rule.pattern().to_owned(),
                })
                .collect()
        }),
        recent_sources: only(manager, || {
            recent_sources
                .iter()
                .map(|(address, at)| proto::RecentSource {
                    address: address.to_string(),
                    last_seen_at: Some(at.into()),
                })
                .collect()
        }),
        rate_limits: only(manager, || {
            rate_limits
                .as_slice()
                .iter()
                .map(|limit| proto::RateLimit {
                    name: limit.name().to_owned(),
                    limit: limit.limit(),
                    period: Some(duration(limit.period())),
                })
                .collect()
        }),
        owner_id: if manager {
            owners.direct().map_or(0, |owner| owner.get())
        } else {
            0
        },
        lifetime: lifetime.filter(|_| manager).map(duration),
    }
}

fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// Where each of a check's limits stands, as Validate answers it.
fn states(quota: &Quota) -> Vec<proto::RateLimitState> {
    quota
        .states()
        .map(|(limit, standing)| proto::RateLimitState {
            name: limit.name().to_owned(),
            limit: limit.limit(),
            remaining: standing.remaining,
            reset: Some(duration(standing.reset)),
        })
        .collect()
}

impl From<Validation> for proto::ValidateResponse {
    fn from(validation: Validation) -> proto::ValidateResponse {
        match validation {
            Validation::Valid(token, secret, quota) => proto::ValidateResponse {
                valid: true,
                reason: proto::InvalidReason::Unspecified.into(),
                bound: !token.bindings.is_empty(),
                service_token: Some(shown(token, ShownTo::Checker)),
                previous_secret: secret == MatchedSecret::Previous,
                rate_limits: states(&quota),
                retry_after: None,
            },
            Validation::Limited(quota) => proto::ValidateResponse {
                valid: false,
                reason: proto::InvalidReason::RateLimited.into(),
                service_token: None,
                previous_secret: false,
                rate_limits: states(&quota),
                retry_after: quota.retry_after().map(duration),
                bound: false,
            },
            Validation::Invalid(reason) => proto::ValidateResponse {
                valid: false,
                reason: proto::InvalidReason::from(reason).into(),
                service_token: None,
                previous_secret: false,
                rate_limits: Vec::new(),
                retry_after: None,
                bound: false,
            },
        }
    }
}

impl From<InvalidReason> for proto::InvalidReason {
    fn from(reason: InvalidReason) -> proto::InvalidReason {
        match reason {
            InvalidReason::Malformed(_) => proto::InvalidReason::Malformed,
            InvalidReason::NotFound => proto::InvalidReason::NotFound,
            InvalidReason::Expired => proto::InvalidReason::Expired,
            InvalidReason::Disabled => proto::InvalidReason::Disabled,
            InvalidReason::NotAllowed(BindingRefusal::SourceNotAllowed) => {
                proto::InvalidReason::SourceNotAllowed
            }
            InvalidReason::NotAllowed(BindingRefusal::AudienceNotAllowed) => {
                proto::InvalidReason::AudienceNotAllowed
            }
            InvalidReason::NotAllowed(BindingRefusal::RouteNotAllowed) => {
                proto::InvalidReason::RouteNotAllowed
            }
        }
    }
}
