//! OAuth 2.0 token introspection (RFC 7662), `POST /oauth2/introspect`:
//! how API gateways (Kong, APISIX, Ory Oathkeeper, Authorino) and MCP
//! servers ask whether a token is active.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{HttpState, api::insert_previous_secret, body, caller::Peer, routes};
use crate::clock::epoch_seconds;
use crate::{
    credential,
    error::Error,
    model::{CheckContext, FieldError, Role},
    service::{ReviewFor, Validation},
};

/// RFC 7662 section 2.2's answer. Inactive is `{"active": false}` and
/// nothing more, whatever the reason (the spec's advice: say no more to a
/// caller than whether it may use the token).
#[derive(Serialize)]
#[serde(untagged)]
enum Introspection {
    Active {
        active: bool,
        token_type: &'static str,
        sub: String,
        client_id: String,
        username: String,
        /// The roles, space-separated (RFC 6749 section 3.3).
        scope: String,
        iat: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<i64>,
        /// The token's audiences, when it is bound to some: the resource
        /// server must find itself among them (RFC 7662 section 2.2).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        aud: Vec<String>,
    },
    Inactive {
        active: bool,
    },
}

/// The `token_type` of an active answer.
const TOKEN_TYPE: &str = "service_token";

/// Introspects the form's `token` (`token_type_hint` is ignored: there is
/// one kind). The caller must hold the reviewer role, sent as a token in
/// any header form or as HTTP Basic's password (RFC 7662 section 2.1:
/// without it, the endpoint would let anyone scan for tokens).
pub async fn introspect(
    State(state): State<HttpState>,
    Peer(source): Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let presented = credential::presented_or_basic(&headers);
    let context = CheckContext {
        source,
        audience: None,
        route: Some(("POST", routes::INTROSPECT)),
    };
    let reviewer = state
        .service
        .authorize_reviewer(presented.as_deref().map_err(|e| *e), "Introspect", &context)
        .await?;
    let body = body::read(body, state.bodies.max_bytes).await?;
    let token = form_token(&body)?;
    // A source- or route-bound token is inactive here: introspection
    // cannot tell where it is used.
    let answer = match state
        .service
        .review(&reviewer, &token, ReviewFor::AnyAudience)
        .await?
    {
        Validation::Valid(token, _, _) => Introspection::Active {
            active: true,
            token_type: TOKEN_TYPE,
            sub: token.id.to_string(),
            client_id: token.id.to_string(),
            username: token.name.to_string(),
            scope: token
                .roles
                .iter()
                .map(Role::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            iat: epoch_seconds(token.created_at),
            exp: token.expiration.map(epoch_seconds),
            aud: token.bindings.audiences.as_slice().to_vec(),
        },
        // RFC 7662 sec. 2.2: an inactive token's answer says nothing more,
        // a rate-limited one's neither.
        Validation::Limited(_) | Validation::Invalid(_) => {
            Introspection::Inactive { active: false }
        }
    };
    let mut response = Json(answer).into_response();
    // The answer is about a secret: no cache may keep it (RFC 7662 sec. 4).
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    insert_previous_secret(reviewer.caller(), response.headers_mut());
    Ok(response)
}

/// The one `token` parameter of the form (RFC 6749: a parameter must not
/// be sent twice).
pub(super) fn form_token(body: &[u8]) -> Result<String, Error> {
    let mut tokens = url::form_urlencoded::parse(body).filter(|(name, _)| name == "token");
    let Some((_, token)) = tokens.next() else {
        return Err(
            FieldError::new("token", "is missing: send it form-encoded, `token=<token>`").into(),
        );
    };
    if tokens.next().is_some() {
        return Err(FieldError::new("token", "is sent more than once").into());
    }
    Ok(token.into_owned())
}
