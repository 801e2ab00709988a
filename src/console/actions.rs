//! What a token's page does: disable, enable, rotate with a grace, delete
//! with the name typed; each one management call under the session, its
//! form's CSRF token checked first, a refusal shown on the token's page.

use axum::{
    extract::{Form, Path, State, rejection::FormRejection},
    http::{StatusCode, request::Parts},
    response::Response,
};
use serde::Deserialize;

use crate::{
    error::Error,
    model::{Edit, FieldError},
    service::Rpc,
};

use super::{
    ConsoleState,
    forms::{self, etag},
    page,
    session::{Signed, error_page},
    tokens::{call, message, not_a_form, parse_id, token_page},
    views::{self, Base, SecretPage},
};

/// The form of every action: its CSRF token, and the etag of the token as
/// the page showed it.
#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    etag: String,
    #[serde(default)]
    grace: String,
    #[serde(default)]
    confirm: String,
}

/// An action's failure: sign-in again for a refused credential, else the
/// token's page saying why, with the status the API would answer.
async fn action_refused(
    state: &ConsoleState,
    parts: &Parts,
    signed: &Signed,
    id: &str,
    error: Error,
) -> Response {
    if let Error::Unauthenticated(_) | Error::PermissionDenied(_) = error {
        return error_page(state, Some(parts), &error);
    }
    let status = super::status_of(&error);
    token_page(state, parts, signed, id, "", status, &message(&error)).await
}

pub async fn disable(
    state: State<ConsoleState>,
    parts: Parts,
    id: Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    set_disabled(state, parts, id, form, true).await
}

pub async fn enable(
    state: State<ConsoleState>,
    parts: Parts,
    id: Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    set_disabled(state, parts, id, form, false).await
}

async fn set_disabled(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
    disabled: bool,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let Ok(Form(form)) = form else {
        return not_a_form();
    };
    csrf_or_answer!(signed, &form.csrf);
    let service = state.service.clone();
    let (token_id, tag) = (&id, &form.etag);
    let (_, result) = call(&state, &signed, Rpc::Update, |authority| async move {
        let edit = Edit {
            disabled: Some(disabled),
            ..Edit::default()
        };
        service
            .update(&authority, parse_id(token_id)?, edit, etag(tag)?)
            .await
    })
    .await;
    match result {
        Ok(token) => state.redirect(&format!(
            "/tokens/{}?done={}",
            token.id,
            if disabled { "disabled" } else { "enabled" }
        )),
        Err(e) => action_refused(&state, &parts, &signed, &id, e).await,
    }
}

pub async fn rotate(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let Ok(Form(form)) = form else {
        return not_a_form();
    };
    csrf_or_answer!(signed, &form.csrf);
    let service = state.service.clone();
    let (token_id, grace_text) = (&id, &form.grace);
    let (caller, result) = call(&state, &signed, Rpc::Rotate, |authority| async move {
        let grace = forms::grace(grace_text)?;
        service.rotate(&authority, parse_id(token_id)?, grace).await
    })
    .await;
    match result {
        Ok((secret, token)) => {
            let caller = caller.expect("a call that ran had a caller");
            // The signed-in token rotated itself: its session ended with
            // the rotation (a session stands for one secret); the page
            // still shows the new secret once.
            let grace = token.previous_secret.map_or_else(String::new, |p| {
                format!(
                    "The previous secret keeps working until {}.",
                    views::when(p.expiration)
                )
            });
            let view = SecretPage {
                base: Base::signed(&state, signed.csrf(), &caller, "tokens"),
                id: token.id.get(),
                name: crate::text::visible(token.name.as_str()).into_owned(),
                what: "rotated",
                secret: secret.expose_secret().to_owned(),
                grace,
            };
            page(StatusCode::OK, askama::Template::render(&view))
        }
        Err(e) => action_refused(&state, &parts, &signed, &id, e).await,
    }
}

pub async fn delete(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let Ok(Form(form)) = form else {
        return not_a_form();
    };
    csrf_or_answer!(signed, &form.csrf);
    let service = state.service.clone();
    let (token_id, tag, confirm) = (&id, &form.etag, &form.confirm);
    let (_, result) = call(&state, &signed, Rpc::Delete, |authority| async move {
        let id = parse_id(token_id)?;
        let token = service.get(&authority, id).await?;
        let typed = confirm.trim();
        // A name an earlier release stored may hold characters no one can
        // type: its shown form confirms it too.
        if typed != token.name.as_str() && typed != crate::text::visible(token.name.as_str()) {
            return Err(FieldError::new(
                "confirm",
                "must be the token's name, typed exactly, to delete it",
            )
            .into());
        }
        service.delete(&authority, id, etag(tag)?).await
    })
    .await;
    match result {
        Ok(()) => state.redirect("/tokens?notice=deleted"),
        Err(e) => action_refused(&state, &parts, &signed, &id, e).await,
    }
}
