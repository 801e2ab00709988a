//! StackState-compatible REST for tokens: `GET`/`POST /api/security/tokens`,
//! `GET`/`PATCH`/`DELETE /api/security/tokens/{id}` and
//! `POST /api/security/tokens/{id}/rotate` and `…/self/rotate`, over the
//! same service calls (and the same admin and manager rules) as gRPC.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    HttpState,
    api::{RateLimitJson, TokenJson},
    body,
    caller::{Management, Peer},
    decode, json,
    patch::{
        ALLOWED_ROUTES, ALLOWED_SOURCES, AUDIENCES, EXPIRY_DATE, OWNER_ID, RATE_LIMITS, patch_edit,
    },
};
use crate::clock::epoch_millis;
use crate::{
    error::Error,
    model::{
        AllowedSources, Audiences, Bindings, DEFAULT_USAGE_DAYS, DayUsage, Description, Etag,
        FieldError, Labels, ListFilter, ListOrder, NewToken, Outcome, RouteParts, ServiceToken,
        TokenId, parse_epoch_millis,
    },
    page::PageRequest,
    service::{Authority, Revoked, Rpc, TokenService, Transport},
    token::Secret,
};

/// The query parameters of the list: the gRPC filters, camel-cased, times
/// in epoch milliseconds; `limit` and `pageToken` page it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    limit: Option<i32>,
    page_token: Option<String>,
    name_prefix: Option<String>,
    role: Option<String>,
    unused_since: Option<i64>,
    expiring_before: Option<i64>,
    disabled: Option<bool>,
    over_policy: Option<bool>,
    owner_id: Option<u64>,
    order_by: Option<String>,
    label: Option<String>,
}

impl ListQuery {
    fn filter(&self) -> Result<ListFilter, FieldError> {
        let time = |field, ms: Option<i64>| ms.map(|ms| parse_epoch_millis(field, ms)).transpose();
        ListFilter::parse(
            self.name_prefix.as_deref().unwrap_or_default(),
            self.role.as_deref().unwrap_or_default(),
            time("unusedSince", self.unused_since)?,
            time("expiringBefore", self.expiring_before)?,
            self.disabled,
        )
        .map(|filter| filter.over_policy(self.over_policy.unwrap_or_default()))?
        .owned_by(self.owner_id.unwrap_or_default())
        .map_err(|e| FieldError::new(OWNER_ID, e.problem))?
        .labelled(self.label.as_deref().unwrap_or_default())
    }

    fn order(&self) -> Result<ListOrder, FieldError> {
        ListOrder::parse(self.order_by.as_deref().unwrap_or_default())
            .map_err(|e| FieldError::new("orderBy", e.problem))
    }
}

/// What a list answers: one page (with `limit`), or every token.
enum Listed {
    Page {
        tokens: Vec<ServiceToken>,
        next: Option<String>,
    },
    All(Body),
}

/// Tokens in id order as one JSON array, StackState's shape. With `limit`
/// (or `pageToken`) one page, the next one linked in a `Link: <…>;
/// rel="next"` header; without, every token, streamed a page at a time so
/// the server never holds them all.
pub async fn list(
    manage: Management,
    query: Result<Query<ListQuery>, QueryRejection>,
    uri: axum::http::Uri,
) -> Result<Response, Error> {
    let service = manage.state.service.clone();
    let call = |authority: Authority| async move {
        let Query(query) =
            query.map_err(|rejection| FieldError::new("query", rejection.body_text()))?;
        let filter = query.filter()?;
        let order = query.order()?;
        let config = service.config();
        if query.limit.is_none() && query.page_token.is_none() {
            // The first page now, so a store failure is still an error answer.
            let request = PageRequest {
                order,
                after: None,
                size: config.max_page_size,
            };
            let first = service.list(&authority, request, &filter).await?;
            return Ok(Listed::All(stream_all(
                service.clone(),
                authority,
                filter,
                order,
                first,
            )));
        }
        let page = PageRequest::parse(
            query.limit.unwrap_or(0),
            query.page_token.as_deref().unwrap_or_default(),
            order,
            config.default_page_size,
            config.max_page_size,
        )
        .map_err(|e| match e.field.as_str() {
            "page_size" => FieldError::new("limit", e.problem),
            "page_token" => FieldError::new("pageToken", e.problem),
            _ => e,
        })?;
        let page = service.list(&authority, page, &filter).await?;
        Ok(Listed::Page {
            tokens: page.tokens,
            next: page.next_cursor,
        })
    };
    let listed = manage.run(Rpc::List, call).await?;
    Ok(match listed {
        Listed::All(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Listed::Page { tokens, next } => {
            let tokens: Vec<TokenJson> = tokens.iter().map(TokenJson::from).collect();
            let mut response = Json(tokens).into_response();
            if let Some(link) = next.and_then(|cursor| next_link(&uri, &cursor)) {
                response.headers_mut().insert(header::LINK, link);
            }
            response
        }
    })
}

/// The `Link` to the page after `cursor`: this request's path and query,
/// `pageToken` replaced.
fn next_link(uri: &axum::http::Uri, cursor: &str) -> Option<HeaderValue> {
    let kept = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(name, _)| name != "pageToken")
        .collect::<Vec<_>>();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(kept);
    query.append_pair("pageToken", cursor);
    HeaderValue::from_str(&format!(
        "<{}?{}>; rel=\"next\"",
        uri.path(),
        query.finish()
    ))
    .ok()
}

/// Every token as one JSON array, page after page, starting with `first`.
/// A store failure after the first page ends the body early: the client
/// sees a broken response, never a short list that looks whole.
fn stream_all(
    service: Arc<TokenService>,
    authority: Authority,
    filter: ListFilter,
    order: ListOrder,
    first: crate::service::Page,
) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Error>>(2);
    tokio::spawn(async move {
        let mut page = first;
        let mut opened = false;
        loop {
            let mut chunk = Vec::new();
            for token in &page.tokens {
                chunk.push(if opened { b',' } else { b'[' });
                opened = true;
                serde_json::to_writer(&mut chunk, &TokenJson::from(token))
                    .expect("a token serializes");
            }
            let after = match (&page.next_cursor, page.tokens.last()) {
                (Some(_), Some(last)) => Some(order.position_of(last)),
                _ => None,
            };
            if after.is_none() {
                chunk.extend_from_slice(if opened { b"]" } else { b"[]" });
            }
            if sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            let Some(after) = after else {
                return;
            };
            let request = PageRequest {
                order,
                after: Some(after),
                size: service.config().max_page_size,
            };
            match service.list(&authority, request, &filter).await {
                Ok(next) => page = next,
                Err(e) => {
                    let _ = sender.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateJson {
    name: String,
    roles: Vec<String>,
    /// Epoch milliseconds. `expiration` is what `GET` calls it: a client
    /// that copies a token's JSON must not create one that never expires.
    #[serde(alias = "expiration")]
    expiry_date: Option<i64>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    allowed_sources: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    allowed_routes: Vec<RouteParts>,
    /// Absent or null: the server's default limits; `[]`: none.
    #[serde(default)]
    rate_limits: Option<Vec<RateLimitJson>>,
}

#[derive(Serialize)]
struct CreatedJson {
    id: u64,
    name: String,
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<i64>,
}

/// What `GET` shows of a token that a create cannot set: refused by name
/// (a client copying a token's JSON learns which), not ignored.
const SET_BY_THE_SERVER: &[&str] = &[
    "id",
    "disabled",
    "createdAt",
    "createdBy",
    "updatedAt",
    "lastUsedAt",
    "previousSecretExpiration",
    "previousSecretLastUsedAt",
    "recentSources",
    "ownerId",
];

/// A JSON body, or the error that says why it is not one.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    Ok(decode::json(body, what, SET_BY_THE_SERVER)?)
}

fn path_id(id: &str) -> Result<TokenId, Error> {
    let number = id
        .parse::<u64>()
        .map_err(|_| FieldError::new("id", format!("{id:?} is not a token id")))?;
    Ok(TokenId::parse(number)?)
}

pub async fn create(manage: Management, body: Body) -> Result<Response, Error> {
    let (service, max_body) = (&manage.state.service, manage.state.bodies.max_bytes);
    let call = |authority| async move {
        let body = body::read(body, max_body).await?;
        let request: CreateJson = json_body(&body, "a token request")?;
        let expiration = request
            .expiry_date
            .map(|ms| parse_epoch_millis(EXPIRY_DATE, ms))
            .transpose()?;
        let new = NewToken::parse(&request.name, &request.roles, expiration)?
            .described(
                Description::parse(&request.description)?,
                Labels::parse(&request.labels)?,
            )
            .bound(Bindings {
                sources: AllowedSources::parse(ALLOWED_SOURCES, &request.allowed_sources)?,
                audiences: Audiences::parse(AUDIENCES, &request.audiences)?,
                routes: RouteParts::parse(ALLOWED_ROUTES, &request.allowed_routes)?,
            })
            .limited(
                request
                    .rate_limits
                    .as_deref()
                    .map(|items| RateLimitJson::parse(RATE_LIMITS, items))
                    .transpose()?,
            );
        let created = service.create(&authority, new).await;
        created.map_err(|e| {
            e.naming_field("expiration", EXPIRY_DATE)
                .naming_field("allowed_sources", ALLOWED_SOURCES)
        })
    };
    let (token, created) = manage.run(Rpc::Create, call).await?;
    Ok(with_secret(&token, &created))
}

/// The answer that carries a new secret (create, rotate): never kept by a
/// cache on the way, where the next reader could find it.
fn with_secret(token: &Secret, created: &ServiceToken) -> Response {
    let body = Json(CreatedJson {
        id: created.id.get(),
        name: created.name.to_string(),
        token: token.expose_secret().to_owned(),
        expiration: created.expiration.map(epoch_millis),
    });
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    (no_store, body).into_response()
}

pub async fn get(manage: Management, Path(id): Path<String>) -> Result<Response, Error> {
    let service = &manage.state.service;
    let call = |authority| async move { service.get(&authority, path_id(&id)?).await };
    let token = manage.run(Rpc::Get, call).await?;
    Ok(with_etag(&token, json(&TokenJson::from(&token))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    days: Option<u32>,
}

#[derive(Serialize)]
struct UsageJson {
    id: u64,
    /// Each day: its `date`, then every outcome's count under its name
    /// in camelCase (`rateLimited`).
    days: Vec<serde_json::Map<String, Value>>,
}

/// An outcome's name as REST writes it: `rate_limited` → `rateLimited`.
fn camel(snake: &str) -> String {
    let mut words = snake.split('_');
    let mut name = words.next().unwrap_or_default().to_owned();
    for word in words {
        let mut letters = word.chars();
        name.extend(letters.next().map(|c| c.to_ascii_uppercase()));
        name.push_str(letters.as_str());
    }
    name
}

/// `GET /api/security/tokens/{id}/usage?days=30`: the token's checks per
/// UTC day, oldest first.
pub async fn usage(
    manage: Management,
    Path(id): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let service = &manage.state.service;
    let days = match query {
        Ok(Query(UsageQuery { days })) => days.unwrap_or(DEFAULT_USAGE_DAYS),
        Err(_) => {
            return Err(
                FieldError::new("days", "must be a whole number of days from 1 to 90").into(),
            );
        }
    };
    let call = |authority| async move {
        let id = path_id(&id)?;
        Ok((id, service.usage(&authority, id, days).await?))
    };
    let (id, usage) = manage.run(Rpc::GetUsage, call).await?;
    let days = usage
        .iter()
        .map(|DayUsage { day, counts }| {
            let mut json = serde_json::Map::new();
            json.insert("date".into(), Value::from(day.date()));
            for outcome in Outcome::ALL {
                json.insert(camel(outcome.as_str()), Value::from(counts.get(outcome)));
            }
            json
        })
        .collect();
    Ok(json(&UsageJson { id: id.get(), days }))
}

/// The errors of every token body parser for `bytes` (create, rotate,
/// revoke, and a merge patch): what the fuzz
/// target checks.
pub(super) fn parse_bodies(bytes: &[u8]) -> Vec<String> {
    let mut errors = Vec::new();
    let error = |e: Error| e.to_string();
    errors.extend(
        json_body::<CreateJson>(bytes, "a token request")
            .err()
            .map(error),
    );
    errors.extend(
        json_body::<RotateJson>(bytes, "a rotation request")
            .err()
            .map(error),
    );
    errors.extend(
        json_body::<RevokeJson>(bytes, "a revocation")
            .err()
            .map(error),
    );
    match json_body::<Value>(bytes, "a JSON merge patch") {
        Ok(patch) => errors.extend(patch_edit(&patch).err().map(|e| Error::from(e).to_string())),
        Err(e) => errors.push(e.to_string()),
    }
    errors
}

pub async fn patch(
    manage: Management,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Error> {
    let (service, max_body) = (&manage.state.service, manage.state.bodies.max_bytes);
    let headers = &manage.headers;
    let call = |authority| async move {
        let id = path_id(&id)?;
        let expected = if_match(headers)?;
        let body = body::read(body, max_body).await?;
        let patch: Value = json_body(&body, "a JSON merge patch")?;
        let edit = patch_edit(&patch)?;
        let updated = service.update(&authority, id, edit, expected).await;
        updated.map_err(|e| {
            e.naming_field("expiration", EXPIRY_DATE)
                .naming_field("update_mask", "body")
                .naming_field("allowed_sources", ALLOWED_SOURCES)
        })
    };
    let token = manage.run(Rpc::Update, call).await?;
    Ok(with_etag(&token, json(&TokenJson::from(&token))))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateJson {
    #[serde(default)]
    grace_period_seconds: u64,
}

pub async fn rotate(
    manage: Management,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Error> {
    let (service, max_body) = (&manage.state.service, manage.state.bodies.max_bytes);
    let call = |authority| async move {
        let id = path_id(&id)?;
        let body = body::read(body, max_body).await?;
        let request: RotateJson = if body.iter().all(u8::is_ascii_whitespace) {
            RotateJson::default()
        } else {
            json_body(&body, "a rotation request")?
        };
        let grace = Duration::from_secs(request.grace_period_seconds);
        let rotated = service.rotate(&authority, id, grace).await;
        rotated.map_err(|e| {
            e.naming_field("grace_period", "gracePeriodSeconds")
                .naming_field("expiration", EXPIRY_DATE)
        })
    };
    let (token, rotated) = manage.run(Rpc::Rotate, call).await?;
    Ok(with_secret(&token, &rotated))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateSelfJson {
    #[serde(default)]
    grace_period_seconds: u64,
    /// Epoch milliseconds; absent: the token's lifetime from now.
    #[serde(alias = "expiration")]
    expiry_date: Option<i64>,
}

/// `POST /api/security/tokens/self/rotate`: the calling token's own new
/// secret, authenticated by its current one; the body (optional) is read
/// only once that passed.
pub async fn rotate_self(manage: Management, body: Body) -> Result<Response, Error> {
    let max_body = manage.state.bodies.max_bytes;
    let request = async move {
        let body = body::read(body, max_body).await?;
        let request: RotateSelfJson = if body.iter().all(u8::is_ascii_whitespace) {
            RotateSelfJson::default()
        } else {
            json_body(&body, "a rotation request")?
        };
        let expiration = request
            .expiry_date
            .map(|ms| parse_epoch_millis(EXPIRY_DATE, ms))
            .transpose()?;
        Ok((
            Duration::from_secs(request.grace_period_seconds),
            expiration,
        ))
    };
    let (token, rotated) = manage.rotate_self(request).await.map_err(|e| {
        e.naming_field("grace_period", "gracePeriodSeconds")
            .naming_field("expiration", EXPIRY_DATE)
    })?;
    Ok(with_secret(&token, &rotated))
}

pub async fn delete(manage: Management, Path(id): Path<String>) -> Result<StatusCode, Error> {
    let service = &manage.state.service;
    let headers = &manage.headers;
    let call = |authority| async move {
        let id = path_id(&id)?;
        service.delete(&authority, id, if_match(headers)?).await
    };
    manage.run(Rpc::Delete, call).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The etag a change is conditional on: `If-Match` (RFC 9110 13.1.1)
/// with one entity tag; `*` or no header: none (the token need only
/// exist). A list of several is refused rather than half supported.
fn if_match(headers: &HeaderMap) -> Result<Option<Etag>, Error> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let one = || {
        FieldError::new(
            "If-Match",
            "must be one entity tag as the server gave it, or *",
        )
    };
    let text = value.to_str().map_err(|_| one())?.trim();
    if values.next().is_some() || text.contains(',') {
        return Err(one().into());
    }
    if text == "*" {
        return Ok(None);
    }
    Ok(Some(Etag::parse("If-Match", text)?))
}

/// `response` with `token`'s etag in `ETag`, for a conditional change.
fn with_etag(token: &ServiceToken, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(&Etag::of(token).to_string()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeJson {
    tokens: Vec<String>,
}

#[derive(Serialize)]
pub struct RevokedJson {
    /// One per token, in the request's order; never the token itself.
    results: Vec<&'static str>,
}

/// Revokes leaked tokens by their secrets, no other credential needed
/// (see `TokenService::revoke_leaked`): what secret scanners and incident
/// responders call.
pub async fn revoke_leaked(
    State(state): State<HttpState>,
    Peer(source): Peer,
    body: Body,
) -> Result<Json<RevokedJson>, Error> {
    let body = body::read(body, state.bodies.max_bytes).await?;
    // A fixed text: serde's would quote a secret sent in the wrong place.
    let request: RevokeJson = serde_json::from_slice(&body).map_err(|_| {
        FieldError::new(
            "body",
            r#"is not a revocation request: send {"tokens": ["svctok-…", …]}"#,
        )
    })?;
    let results = state
        .service
        .revoke_leaked(Transport::Rest, &request.tokens, source)
        .await?;
    Ok(Json(RevokedJson {
        results: results
            .into_iter()
            .map(|result| match result {
                Revoked::Revoked => "revoked",
                Revoked::NotFound => "not_found",
                Revoked::Malformed => "malformed",
            })
            .collect(),
    }))
}
