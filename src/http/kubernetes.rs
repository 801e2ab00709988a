//! Kubernetes webhook token authentication: `POST
//! /api/kubernetes/tokenreview` answers kube-apiserver's `TokenReview`
//! (`authentication.k8s.io/v1`, and `v1beta1`, kube-apiserver's default for
//! webhooks, whose shape is the same) in the version it was asked in.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use k8s_openapi::{
    api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::Value;

use super::{HttpState, api::insert_previous_secret, body, caller::Peer, routes};
use crate::{
    config::{IntegrationConfig, KubernetesUsername},
    credential,
    error::Error,
    model::{BindingRefusal, CheckContext, FieldError, ServiceToken},
    service::{InvalidReason, ReviewFor, Validation},
};

const V1: &str = "authentication.k8s.io/v1";
const V1BETA1: &str = "authentication.k8s.io/v1beta1";
/// The `extra` key carrying the token's id (Kubernetes keeps it in audit
/// logs and passes it to authorization webhooks).
pub const TOKEN_ID_EXTRA: &str = "sts.token-id";

/// Reviews the token in the `TokenReview`: 200 with `status` filled in
/// either way (an invalid token is an answer, `authenticated: false` with
/// the reason), 400 for a body that is not a TokenReview, 401/403 for a
/// caller without a valid token holding the reviewer role, 503 when the
/// store cannot say.
pub async fn token_review(
    State(state): State<HttpState>,
    Peer(source): Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let context = CheckContext {
        source,
        audience: None,
        route: Some(("POST", routes::TOKEN_REVIEW)),
    };
    let reviewer = state
        .service
        .authorize_reviewer(credential::presented(&headers), "TokenReview", &context)
        .await?;
    let body = body::read(body, state.bodies.max_bytes).await?;
    let (version, review) = parse(&body)?;
    let spec = review.spec;
    let asked = spec.audiences.unwrap_or_default();
    let review = ReviewFor::Audiences(&asked);
    let status = match state.service.review(&reviewer, &spec.token, review).await? {
        Validation::Valid(token, _, _) => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(user_of(&token, &state.integrations)),
            // Kubernetes' rule: the audiences both sides accept. A token
            // bound to none accepts every audience asked.
            audiences: Some(
                asked
                    .iter()
                    .filter(|a| {
                        token.bindings.audiences.is_empty() || token.bindings.audiences.allows(a)
                    })
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .filter(|a| !a.is_empty()),
            error: None,
        },
        Validation::Limited(quota) => TokenReviewStatus {
            authenticated: Some(false),
            error: Some(Error::OverLimit(Box::new(quota)).to_string()),
            ..TokenReviewStatus::default()
        },
        Validation::Invalid(reason) => TokenReviewStatus {
            authenticated: Some(false),
            error: Some(refusal_text(reason)),
            ..TokenReviewStatus::default()
        },
    };
    let answer = TokenReview {
        metadata: ObjectMeta::default(),
        // Never echoed: it holds the reviewed secret.
        spec: TokenReviewSpec::default(),
        status: Some(status),
    };
    let mut answer = serde_json::to_value(answer).expect("a TokenReview serializes");
    answer["apiVersion"] = Value::from(version);
    let mut response = Json(answer).into_response();
    insert_previous_secret(reviewer.caller(), response.headers_mut());
    Ok(response)
}

/// Why a token does not authenticate, as the API server logs it.
fn refusal_text(reason: InvalidReason) -> String {
    match reason {
        InvalidReason::NotAllowed(BindingRefusal::SourceNotAllowed) => {
            "the service token is bound to source addresses, which a TokenReview cannot tell: it cannot authenticate to Kubernetes".to_owned()
        }
        InvalidReason::NotAllowed(BindingRefusal::RouteNotAllowed) => {
            "the service token is bound to routes, which a TokenReview cannot tell: it cannot authenticate to Kubernetes".to_owned()
        }
        InvalidReason::NotAllowed(BindingRefusal::AudienceNotAllowed) => {
            "the service token is bound to audiences, and none of them is one the API server accepts (spec.audiences)".to_owned()
        }
        other => Error::from(other).to_string(),
    }
}

/// The Kubernetes user a valid token is: its name (or id) and roles, each
/// behind the prefix, which keeps them out of `system:`.
fn user_of(token: &ServiceToken, integrations: &IntegrationConfig) -> UserInfo {
    let prefix = &integrations.kubernetes_prefix;
    let id = token.id.to_string();
    let username = match integrations.kubernetes_username {
        KubernetesUsername::Name => prefix.apply(token.name.as_str()),
        KubernetesUsername::Id => prefix.apply(&id),
    };
    UserInfo {
        username: Some(username),
        uid: Some(id.clone()),
        groups: Some(
            token
                .roles
                .iter()
                .map(|r| prefix.apply(r.as_str()))
                .collect(),
        ),
        extra: Some([(TOKEN_ID_EXTRA.to_owned(), vec![id])].into()),
    }
}

const NO_TOKEN: &str = "is not a TokenReview: it needs `spec.token`, a string";

/// The review and the version it was sent in. v1beta1 is read as v1: the
/// two have the same fields.
pub(super) fn parse(body: &[u8]) -> Result<(&'static str, TokenReview), Error> {
    let invalid = |problem: String| Error::from(FieldError::new("TokenReview", problem));
    let mut value: Value = super::decode::json(body, "a TokenReview", &[])?;
    let version = match value.get("apiVersion").and_then(Value::as_str) {
        Some(V1) => V1,
        Some(V1BETA1) => V1BETA1,
        _ => {
            return Err(invalid(format!("apiVersion must be {V1} or {V1BETA1}")));
        }
    };
    if !value.pointer("/spec/token").is_some_and(Value::is_string) {
        return Err(invalid(NO_TOKEN.into()));
    }
    value["apiVersion"] = Value::from(V1);
    // A fixed text: serde's would quote the offending value, which may
    // be the secret.
    let review = serde_json::from_value(value).map_err(|_| invalid(NO_TOKEN.into()))?;
    Ok((version, review))
}
