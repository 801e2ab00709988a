//! The gRPC front end: turns protobuf requests into domain values, calls the
//! [`TokenService`], and turns the answers back. No rules live here.

mod ext_authz;

/// For the fuzz target: `bytes` read by the ext_authz view and by
/// envoy-types' full decode; panics where both accept them and disagree.
#[doc(hidden)]
pub fn check_request_differential(bytes: &[u8]) {
    ext_authz::differential(bytes);
}

/// For the fuzz target: an `UpdateRequest`'s bytes through the field-mask
/// reading every Update goes through; never panics.
#[doc(hidden)]
pub fn parse_update(bytes: &[u8]) -> Option<Result<(TokenId, Edit), Error>> {
    let request = <proto::UpdateRequest as prost::Message>::decode(bytes).ok()?;
    Some(edit(request))
}
mod answers;
mod undecodable;

use std::{net::IpAddr, sync::Arc, time::Duration};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    connections::Held,
    credential,
    error::Error,
    model::{
        AllowedRoutes, AllowedSources, Audiences, Bindings, CheckContext, DEFAULT_USAGE_DAYS,
        DayUsage, Description, Edit, Etag, FieldError, LabelEdit, Labels, ListFilter, ListOrder,
        NewToken, Outcome, Owners, RateLimit, RateLimits, Roles, RouteRule, TokenId, TokenName,
        parse_time,
    },
    page::PageRequest,
    proto,
    rate_limit::{Charge, Surface},
    service::{
        Authority, Credential, MAX_REPORTED_USES, ReportedOutcome, ReportedUse, Rpc, TokenService,
        Transport,
    },
    source,
};

pub use ext_authz::{AUDIENCE, AuthorizationService, ExtAuthz, REQUIRED_ROLES};
pub use undecodable::UndecodableLayer;

/// `proto::token_service_server::TokenService` over the domain service.
#[derive(Clone)]
pub struct GrpcTokenService {
    service: Arc<TokenService>,
}

impl GrpcTokenService {
    pub fn new(service: Arc<TokenService>) -> GrpcTokenService {
        GrpcTokenService { service }
    }

    /// Runs a management call: the credential from `request`'s metadata,
    /// its source for the audit, and `call` with the caller's authority and the
    /// message, through [`TokenService::manage`].
    async fn manage<M, T, Fut>(
        &self,
        rpc: Rpc,
        request: Request<M>,
        call: impl FnOnce(Authority, M) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let (metadata, source, message) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        Ok(self
            .service
            .manage(
                rpc,
                Transport::Grpc,
                Credential::Presented(presented),
                source,
                |authority| call(authority, message),
            )
            .await?)
    }
}

/// A Watch stream's messages as gRPC sends them.
pub type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::WatchResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl proto::token_service_server::TokenService for GrpcTokenService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        use tokio_stream::StreamExt as _;
        let held = request.extensions().get::<Held>().cloned();
        let (metadata, source, proto::WatchRequest {}) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        let watcher = self
            .service
            .authorize_watcher(presented, source, false)
            .await?;
        let messages = self.service.watch(watcher)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(messages).map(move |message| {
            // The connection stays busy while the stream is open.
            let _held = &held;
            message.map(answers::watch_response).map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_uses(
        &self,
        request: Request<proto::ReportUsesRequest>,
    ) -> Result<Response<proto::ReportUsesResponse>, Status> {
        let (metadata, source, message) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        let watcher = self
            .service
            .authorize_watcher(presented, source, true)
            .await?;
        let uses = reported_uses(message).map_err(Error::from)?;
        self.service.report_uses(&watcher, &uses);
        Ok(Response::new(proto::ReportUsesResponse {}))
    }

    async fn create(
        &self,
        request: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        let (token, created) = self
            .manage(Rpc::Create, request, |authority, message| async move {
                self.service.create(&authority, new_token(message)?).await
            })
            .await?;
        Ok(Response::new(proto::CreateResponse {
            token: token.expose_secret().to_owned(),
            service_token: Some(created.into()),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let page = self
            .manage(Rpc::List, request, |authority, request| async move {
                let config = self.service.config();
                let page = PageRequest::parse(
                    request.page_size,
                    &request.page_token,
                    ListOrder::parse(&request.order_by)?,
                    config.default_page_size,
                    config.max_page_size,
                )?;
                let filter = ListFilter::parse(
                    &request.name_prefix,
                    &request.role,
                    time("unused_since", request.unused_since)?,
                    time("expiring_before", request.expiring_before)?,
                    request.disabled,
                )?
                .over_policy(request.over_policy)
                .owned_by(request.owner_id)?
                .labelled(&request.label)?;
                self.service.list(&authority, page, &filter).await
            })
            .await?;
        Ok(Response::new(proto::ListResponse {
            service_tokens: page.tokens.into_iter().map(Into::into).collect(),
            next_page_token: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        self.manage(Rpc::Delete, request, |authority, message| async move {
            let id = TokenId::parse(message.id)?;
            let expected = etag(&message.etag)?;
            self.service.delete(&authority, id, expected).await
        })
        .await?;
        Ok(Response::new(proto::DeleteResponse {}))
    }

    async fn validate(
        &self,
        request: Request<proto::ValidateRequest>,
    ) -> Result<Response<proto::ValidateResponse>, Status> {
        let message = request.get_ref();
        let context = CheckContext::stated(
            &message.source_address,
            &message.audience,
            &message.http_method,
            &message.path,
        )
        .map_err(Error::from)?;
        let charge = Charge::Spend {
            cost: message.cost.unwrap_or(1),
            surface: Surface::Validate,
        };
        let validation = self
            .service
            .validate_charged(&message.token, &context, charge)
            .await?;
        Ok(Response::new(validation.into()))
    }

    async fn revoke_leaked(
        &self,
        request: Request<proto::RevokeLeakedRequest>,
    ) -> Result<Response<proto::RevokeLeakedResponse>, Status> {
        let source = source::of(request.extensions());
        let results = self
            .service
            .revoke_leaked(Transport::Grpc, &request.get_ref().tokens, source)
            .await?;
        Ok(Response::new(proto::RevokeLeakedResponse {
            results: results
                .into_iter()
                .map(|r| proto::RevokeResult::from(r) as i32)
                .collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let token = self
            .manage(Rpc::Get, request, |authority, message| async move {
                self.service
                    .get(&authority, TokenId::parse(message.id)?)
                    .await
            })
            .await?;
        Ok(Response::new(proto::GetResponse {
            service_token: Some(token.into()),
        }))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateRequest>,
    ) -> Result<Response<proto::UpdateResponse>, Status> {
        let token = self
            .manage(Rpc::Update, request, |authority, message| async move {
                let expected = etag(
                    message
                        .service_token
                        .as_ref()
                        .map_or("", |token| token.etag.as_str()),
                )?;
                let (id, edit) = edit(message)?;
                self.service.update(&authority, id, edit, expected).await
            })
            .await?;
        Ok(Response::new(proto::UpdateResponse {
            service_token: Some(token.into()),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<proto::GetUsageRequest>,
    ) -> Result<Response<proto::GetUsageResponse>, Status> {
        let usage = self
            .manage(Rpc::GetUsage, request, |authority, message| async move {
                let id = TokenId::parse(message.id)?;
                let days = match message.days {
                    0 => DEFAULT_USAGE_DAYS,
                    days => days,
                };
                self.service.usage(&authority, id, days).await
            })
            .await?;
        let days = usage
            .iter()
            .map(|DayUsage { day, counts }| {
                let count = |outcome| counts.get(outcome);
                proto::DailyUsage {
                    date: day.date(),
                    valid: count(Outcome::Valid),
                    rate_limited: count(Outcome::RateLimited),
                    expired: count(Outcome::Expired),
                    disabled: count(Outcome::Disabled),
                    source_not_allowed: count(Outcome::SourceNotAllowed),
                    audience_not_allowed: count(Outcome::AudienceNotAllowed),
                    route_not_allowed: count(Outcome::RouteNotAllowed),
                    missing_role: count(Outcome::MissingRole),
                }
            })
            .collect();
        Ok(Response::new(proto::GetUsageResponse { days }))
    }

    async fn rotate(
        &self,
        request: Request<proto::RotateRequest>,
    ) -> Result<Response<proto::RotateResponse>, Status> {
        let (token, rotated) = self
            .manage(Rpc::Rotate, request, |authority, message| async move {
                let id = TokenId::parse(message.id)?;
                let grace = grace_period(message.grace_period)?;
                self.service.rotate(&authority, id, grace).await
            })
            .await?;
        Ok(Response::new(proto::RotateResponse {
            token: token.expose_secret().to_owned(),
            service_token: Some(rotated.into()),
        }))
    }

    async fn rotate_self(
        &self,
        request: Request<proto::RotateSelfRequest>,
    ) -> Result<Response<proto::RotateSelfResponse>, Status> {
        let (metadata, source, message) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        let request = async move {
            let grace = grace_period(message.grace_period)?;
            Ok((grace, time("expiration", message.expiration)?))
        };
        let (token, rotated) = self
            .service
            .rotate_self(Transport::Grpc, presented, source, request)
            .await?;
        Ok(Response::new(proto::RotateSelfResponse {
            token: token.expose_secret().to_owned(),
            service_token: Some(rotated.into()),
        }))
    }
}

/// A `ReportUsesRequest` as uses, every one well-formed, or the first
/// field that is not (then none is noted).
fn reported_uses(request: proto::ReportUsesRequest) -> Result<Vec<ReportedUse>, FieldError> {
    if request.uses.len() > MAX_REPORTED_USES {
        return Err(FieldError::new(
            "uses",
            format!(
                "holds {} uses; send at most {MAX_REPORTED_USES} per call",
                request.uses.len()
            ),
        ));
    }
    request
        .uses
        .into_iter()
        .enumerate()
        .map(|(i, reported)| {
            let proto::ReportedUse {
                token_id,
                at,
                source_address,
                outcome,
                count,
            } = reported;
            let field = |name: &str| format!("uses[{i}].{name}");
            let id = TokenId::parse(token_id)
                .map_err(|e| FieldError::new(field("token_id"), e.problem))?;
            let at = time(&field("at"), at)?
                .ok_or_else(|| FieldError::new(field("at"), "is required"))?;
            let source = match source_address.as_str() {
                "" => None,
                text => Some(text.parse::<IpAddr>().map_err(|_| {
                    FieldError::new(field("source_address"), "must be a bare IP address")
                })?),
            };
            let outcome = match proto::UseOutcome::try_from(outcome) {
                Ok(proto::UseOutcome::Valid) => ReportedOutcome::Valid,
                Ok(proto::UseOutcome::PreviousSecret) => ReportedOutcome::PreviousSecret,
                Ok(proto::UseOutcome::MissingRole) => ReportedOutcome::MissingRole,
                Ok(proto::UseOutcome::Unspecified) | Err(_) => {
                    return Err(FieldError::new(
                        field("outcome"),
                        "must be VALID, PREVIOUS_SECRET or MISSING_ROLE",
                    ));
                }
            };
            Ok(ReportedUse {
                id,
                at,
                source,
                outcome,
                count: count.max(1),
            })
        })
        .collect()
}

fn time(
    field: &str,
    at: Option<prost_types::Timestamp>,
) -> Result<Option<std::time::SystemTime>, FieldError> {
    at.map(|ts| parse_time(field, ts.seconds, ts.nanos))
        .transpose()
}

/// Unset is zero: the old secret ends now.
fn grace_period(grace: Option<prost_types::Duration>) -> Result<Duration, FieldError> {
    let Some(grace) = grace else {
        return Ok(Duration::ZERO);
    };
    let invalid = || {
        FieldError::new(
            "grace_period",
            "must be zero or positive, with nanos within 0..1000000000",
        )
    };
    if grace.seconds < 0 || !(0..1_000_000_000).contains(&grace.nanos) {
        return Err(invalid());
    }
    Ok(Duration::new(grace.seconds as u64, grace.nanos as u32))
}

/// The mask paths of an update, as AIP-134 names them.
const UPDATE_PATHS: &str = "name, roles, expiration, description, labels, labels.<key>, disabled, allowed_sources, audiences, allowed_routes, rate_limits, owner_id";

/// An UpdateRequest as the token it names and the fields its mask sets.
fn edit(request: proto::UpdateRequest) -> Result<(TokenId, Edit), Error> {
    let token = request
        .service_token
        .ok_or_else(|| FieldError::new("service_token", "is required (its id names the token)"))?;
    let id = TokenId::parse(token.id)?;
    let paths = request
        .update_mask
        .map(|mask| mask.paths)
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(FieldError::new(
            "update_mask",
            format!("is required: name the fields to change ({UPDATE_PATHS})"),
        )
        .into());
    }
    let mut edit = Edit::default();
    // `labels.<key>` (AIP-161): that key set from the message's labels,
    // or removed when they lack it; merged into the token's labels as the
    // store applies the change, so concurrent merges all land.
    let mut set = std::collections::BTreeMap::new();
    let mut remove = std::collections::BTreeSet::new();
    for path in &paths {
        if let Some(key) = path.strip_prefix("labels.") {
            match token.labels.get(key) {
                Some(value) => {
                    set.insert(key.to_owned(), value.clone());
                }
                None => {
                    remove.insert(key.to_owned());
                }
            }
            continue;
        }
        match path.as_str() {
            "name" => edit.name = Some(TokenName::parse(&token.name)?),
            "roles" => edit.roles = Some(Roles::parse(&token.roles)?),
            "expiration" => edit.expiration = Some(time("expiration", token.expiration)?),
            "description" => edit.description = Some(Description::parse(&token.description)?),
            "labels" => edit.labels = Some(LabelEdit::Replace(Labels::parse(&token.labels)?)),
            "disabled" => edit.disabled = Some(token.disabled),
            "allowed_sources" => {
                edit.sources = Some(AllowedSources::parse(
                    "allowed_sources",
                    &token.allowed_sources,
                )?);
            }
            "audiences" => edit.audiences = Some(Audiences::parse("audiences", &token.audiences)?),
            "allowed_routes" => edit.routes = Some(routes(&token.allowed_routes)?),
            "rate_limits" => edit.rate_limits = Some(rate_limits(&token.rate_limits)?),
            "owner_id" => edit.owners = Some(Owners::requested("owner_id", token.owner_id)?),
            other => {
                return Err(FieldError::new(
                    "update_mask",
                    format!("{other:?} is not a field that can be updated ({UPDATE_PATHS})"),
                )
                .into());
            }
        }
    }
    if !set.is_empty() || !remove.is_empty() {
        if edit.labels.is_some() {
            return Err(FieldError::new(
                "update_mask",
                "names `labels` and `labels.<key>` together: give one or the other",
            )
            .into());
        }
        edit.labels = Some(LabelEdit::Merge {
            set: Labels::parse(&set)?,
            remove,
        });
    }
    Ok((id, edit))
}

/// What a management call needs of its request: the metadata (where the
/// credential is), its source address (for the audit) and the message.
fn parts<T>(request: Request<T>) -> (MetadataMap, Option<IpAddr>, T) {
    let source = source::of(request.extensions());
    let (metadata, _, message) = request.into_parts();
    (metadata, source, message)
}

/// The etag a conditional change was sent with; empty: none.
fn etag(text: &str) -> Result<Option<Etag>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(Etag::parse("etag", text)?))
}

fn new_token(request: proto::CreateRequest) -> Result<NewToken, Error> {
    let expiration = time("expiration", request.expiration)?;
    let new = NewToken::parse(&request.name, &request.roles, expiration)?;
    let limits = match (request.no_rate_limits, request.rate_limits.is_empty()) {
        (false, true) => None,
        (false, false) => Some(rate_limits(&request.rate_limits)?),
        (true, true) => Some(RateLimits::default()),
        (true, false) => {
            return Err(FieldError::new(
                "no_rate_limits",
                "cannot be set together with rate_limits",
            )
            .into());
        }
    };
    Ok(new
        .limited(limits)
        .described(
            Description::parse(&request.description)?,
            Labels::parse(&request.labels)?,
        )
        .bound(Bindings {
            sources: AllowedSources::parse("allowed_sources", &request.allowed_sources)?,
            audiences: Audiences::parse("audiences", &request.audiences)?,
            routes: routes(&request.allowed_routes)?,
        }))
}

/// The rate limits of a request, each checked; an error names the limit
/// by its place (`rate_limits[1]`).
fn rate_limits(limits: &[proto::RateLimit]) -> Result<RateLimits, FieldError> {
    let limits = limits
        .iter()
        .enumerate()
        .map(|(at, limit)| {
            let field = format!("rate_limits[{at}]");
            let period = limit
                .period
                .and_then(|period| {
                    Some(Duration::new(
                        u64::try_from(period.seconds).ok()?,
                        u32::try_from(period.nanos).ok()?,
                    ))
                })
                .ok_or_else(|| {
                    FieldError::new(
                        &field,
                        "the period must be set, whole seconds from 1s to 24h",
                    )
                })?;
            RateLimit::new(&field, &limit.name, limit.limit, period)
        })
        .collect::<Result<Vec<_>, _>>()?;
    RateLimits::new("rate_limits", limits)
}

/// The routes of a request, each parsed; an error names the route by its
/// place (`allowed_routes[2]`).
fn routes(routes: &[proto::AllowedRoute]) -> Result<AllowedRoutes, FieldError> {
    let rules = routes
        .iter()
        .enumerate()
        .map(|(at, route)| {
            RouteRule::parse(format!("allowed_routes[{at}]"), &route.methods, &route.path)
        })
        .collect::<Result<Vec<_>, _>>()?;
    AllowedRoutes::new("allowed_routes", rules)
}
