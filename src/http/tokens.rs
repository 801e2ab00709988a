//! StackState-compatible REST for tokens: `GET`/`POST /api/security/tokens`
//! and `DELETE /api/security/tokens/{id}`, over the same service calls (and
//! the same admin rule) as gRPC.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{HttpState, api::TokenJson, api::epoch_millis, caller::Peer};
use crate::{
    credential,
    error::Error,
    model::{FieldError, NewToken, TokenId, parse_epoch_millis},
    page::PageRequest,
    service::Rpc,
};

/// Every token, in id order, fetched from the service one maximal page at a time.
pub async fn list(
    State(state): State<HttpState>,
    Peer(source): Peer,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenJson>>, Error> {
    let service = &state.service;
    let call = |admin| async move {
        let mut tokens = Vec::new();
        let mut after = None;
        loop {
            let request = PageRequest {
                after,
                size: service.config().max_page_size,
            };
            let page = service.list(&admin, request).await?;
            tokens.extend(page.tokens.iter().map(TokenJson::from));
            match (page.next_cursor, page.tokens.last()) {
                (Some(_), Some(last)) => after = Some(last.id),
                _ => return Ok(tokens),
            }
        }
    };
    service
        .manage(Rpc::List, credential::presented(&headers), source, call)
        .await
        .map(Json)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateJson {
    name: String,
    roles: Vec<String>,
    /// Epoch milliseconds.
    expiry_date: Option<i64>,
}

#[derive(Serialize)]
struct CreatedJson {
    id: u64,
    name: String,
    token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<i64>,
}

/// What StackState's REST calls a new token's expiration.
const EXPIRY_DATE: &str = "expiryDate";

/// A body axum could not read: too large (413), or cut short.
fn unreadable(rejection: BytesRejection, limit: usize) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge { limit }
    } else {
        FieldError::new("body", rejection.body_text()).into()
    }
}

pub async fn create(
    State(state): State<HttpState>,
    Peer(source): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let service = &state.service;
    let call = |admin| async move {
        let body = body.map_err(|rejection| unreadable(rejection, state.max_body))?;
        let request: CreateJson = serde_json::from_slice(&body)
            .map_err(|e| FieldError::new("body", format!("is not a token request: {e}")))?;
        let expiration = request
            .expiry_date
            .map(|ms| parse_epoch_millis(EXPIRY_DATE, ms))
            .transpose()?;
        let new = NewToken::parse(&request.name, &request.roles, expiration)?;
        let created = service.create(&admin, new).await;
        created.map_err(|e| e.naming_field("expiration", EXPIRY_DATE))
    };
    let (token, created) = service
        .manage(Rpc::Create, credential::presented(&headers), source, call)
        .await?;
    Ok(Json(CreatedJson {
        id: created.id.get(),
        name: created.name.to_string(),
        token: token.expose_secret().to_owned(),
        expiration: created.expiration.map(epoch_millis),
    })
    .into_response())
}

pub async fn delete(
    State(state): State<HttpState>,
    Peer(source): Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let service = &state.service;
    let call = |admin| async move {
        let id = id
            .parse::<u64>()
            .map_err(|_| FieldError::new("id", format!("{id:?} is not a token id")))?;
        service.delete(&admin, TokenId::parse(id)?).await
    };
    service
        .manage(Rpc::Delete, credential::presented(&headers), source, call)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
