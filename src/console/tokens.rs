//! The tokens pages: the list (search, filters, sorting, paging by cursor),
//! a token's page (every field, recent sources, usage), the create and
//! edit forms, and the actions (disable, enable, rotate, delete). Each is
//! one management call of the service under the console's session.

use std::{
    future::Future,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use axum::{
    extract::{
        Form, Path, Query, State,
        rejection::{FormRejection, QueryRejection},
    },
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{
    clock::span_text,
    error::Error,
    model::{Etag, FieldError, ListFilter, ListOrder, ServiceToken, TokenId},
    page::PageRequest,
    service::{Authority, Rpc},
};

use super::{
    ConsoleState,
    forms::{TokenFormInput, etag},
    page,
    session::{Signed, error_page},
    views::{self, Base, Choice, FormPage, Row, SecretPage, TokenForm, TokenPage, Tokens},
};

/// Tokens a list page shows.
pub const PAGE_SIZE: usize = 50;
/// Days of usage a token's page draws.
const USAGE_DAYS_SHOWN: u32 = 30;
const DAY: Duration = Duration::from_secs(86_400);

/// The list page's query: every filter as the form sends it.
#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    expiring_days: String,
    #[serde(default)]
    unused_days: String,
    #[serde(default)]
    bound: String,
    #[serde(default)]
    over_policy: String,
    #[serde(default)]
    order: String,
    #[serde(default)]
    page: String,
    #[serde(default)]
    notice: String,
}

const ORDERS: [(&str, &str); 8] = [
    ("name", "Name, A to Z"),
    ("name desc", "Name, Z to A"),
    ("expiration", "Expires soonest"),
    ("expiration desc", "Expires latest"),
    ("last_used", "Least recently used"),
    ("last_used desc", "Most recently used"),
    ("created desc", "Newest"),
    ("created", "Oldest"),
];

impl ListQuery {
    fn days(field: &str, text: &str) -> Result<Option<Duration>, FieldError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        match text.parse::<u32>() {
            Ok(days @ 1..=36_500) => Ok(Some(DAY * days)),
            _ => Err(FieldError::new(
                field,
                "must be a whole number of days from 1 to 36500",
            )),
        }
    }

    fn filter(&self, now: SystemTime) -> Result<ListFilter, FieldError> {
        let expiring = Self::days("expiring_days", &self.expiring_days)?;
        let unused = Self::days("unused_days", &self.unused_days)?;
        let disabled = match self.state.as_str() {
            "disabled" => Some(true),
            "enabled" => Some(false),
            _ => None,
        };
        let mut filter = ListFilter::parse(
            self.q.trim(),
            self.role.trim(),
            unused.and_then(|d| now.checked_sub(d)),
            expiring.and_then(|d| now.checked_add(d)),
            disabled,
        )?
        .over_policy(self.over_policy == "1")
        .labelled(self.label.trim())?;
        filter.bound = match self.bound.as_str() {
            "bound" => Some(true),
            "unbound" => Some(false),
            _ => None,
        };
        Ok(filter)
    }

    fn order(&self) -> Result<ListOrder, FieldError> {
        ListOrder::parse(if self.order.is_empty() {
            "name"
        } else {
            &self.order
        })
    }

    /// This query's link with `page` as the page.
    fn link(&self, state: &ConsoleState, page: Option<&str>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("q", &self.q),
            ("role", &self.role),
            ("label", &self.label),
            ("state", &self.state),
            ("expiring_days", &self.expiring_days),
            ("unused_days", &self.unused_days),
            ("bound", &self.bound),
            ("over_policy", &self.over_policy),
            ("order", &self.order),
        ] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        if let Some(page) = page {
            query.append_pair("page", page);
        }
        let query = query.finish();
        if query.is_empty() {
            state.link("/tokens")
        } else {
            state.link(&format!("/tokens?{query}"))
        }
    }

    fn view(&self, base: Base, policy: bool) -> Tokens {
        let choices = |options: &[(&str, &str)], current: &str| {
            options
                .iter()
                .map(|(value, label)| Choice {
                    value: (*value).to_owned(),
                    label: (*label).to_owned(),
                    selected: *value == current,
                })
                .collect()
        };
        let order = if self.order.is_empty() {
            "name"
        } else {
            self.order.as_str()
        };
        Tokens {
            base,
            rows: Vec::new(),
            q: self.q.clone(),
            role: self.role.clone(),
            label: self.label.clone(),
            states: choices(
                &[
                    ("", "Any"),
                    ("enabled", "Enabled"),
                    ("disabled", "Disabled"),
                ],
                &self.state,
            ),
            bindings: choices(
                &[("", "Any"), ("bound", "Bound"), ("unbound", "Unbound")],
                &self.bound,
            ),
            orders: choices(&ORDERS, order),
            expiring_days: self.expiring_days.clone(),
            unused_days: self.unused_days.clone(),
            over_policy: self.over_policy == "1",
            policy,
            next: None,
            first: None,
            notice: match self.notice.as_str() {
                "deleted" => "The token was deleted.".to_owned(),
                _ => String::new(),
            },
            error: String::new(),
        }
    }
}

/// Runs management call `rpc` for the session; with its result, the
/// caller (once its credential passed) for the page's frame.
pub(super) async fn call<T, Fut>(
    state: &ConsoleState,
    signed: &Signed,
    rpc: Rpc,
    run: impl FnOnce(Authority) -> Fut,
) -> (Option<ServiceToken>, Result<T, Error>)
where
    Fut: Future<Output = Result<T, Error>>,
{
    let caller = OnceLock::new();
    let result = state
        .service
        .manage_session(rpc, &signed.session, signed.source, |authority| {
            let _ = caller.set(authority.token().clone());
            run(authority)
        })
        .await;
    (caller.into_inner(), result)
}

/// What a page shows for a failed call: sign-in again for a refused
/// credential, else `shown` (a page with the error in it), or the error
/// page when the caller never got that far.
pub(super) fn failed(
    state: &ConsoleState,
    parts: &Parts,
    caller: Option<ServiceToken>,
    error: Error,
    shown: impl FnOnce(ServiceToken, String) -> Response,
) -> Response {
    match (caller, &error) {
        (_, Error::Unauthenticated(_) | Error::PermissionDenied(_)) | (None, _) => {
            error_page(state, Some(parts), &error)
        }
        (Some(caller), _) => {
            let mut answer = shown(caller, message(&error));
            *answer.status_mut() = super::status_of(&error);
            answer
        }
    }
}

/// An error as the API's answer words it.
pub(super) fn message(error: &Error) -> String {
    crate::authz::HttpError::of(error).message
}

pub async fn list(
    State(state): State<ConsoleState>,
    parts: Parts,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let config = state.service.config();
    let policy = config.lifetime.max().is_some() || config.require_source_binding;
    let now = SystemTime::now();
    let service = state.service.clone();
    let request = &query;
    let (caller, result) = call(&state, &signed, Rpc::List, |authority| async move {
        let filter = request.filter(now)?;
        let order = request.order()?;
        let page =
            PageRequest::parse(PAGE_SIZE as i32, &request.page, order, PAGE_SIZE, PAGE_SIZE)?;
        service.list(&authority, page, &filter).await
    })
    .await;
    let view = |caller: &ServiceToken| {
        query.view(
            Base::signed(&state, signed.csrf(), caller, "tokens"),
            policy,
        )
    };
    match result {
        Ok(listed) => {
            let caller = caller.expect("a call that ran had a caller");
            let mut view = view(&caller);
            let now = SystemTime::now();
            view.rows = listed.tokens.iter().map(|t| Row::of(t, now)).collect();
            view.next = listed
                .next_cursor
                .map(|cursor| query.link(&state, Some(&cursor)));
            view.first = (!query.page.is_empty()).then(|| query.link(&state, None));
            page(StatusCode::OK, askama::Template::render(&view))
        }
        Err(e) => failed(&state, &parts, caller, e, |caller, error| {
            let mut view = view(&caller);
            view.error = error;
            page(StatusCode::OK, askama::Template::render(&view))
        }),
    }
}

/// A token page's query: what the last action did.
#[derive(Deserialize, Default)]
pub struct DoneQuery {
    #[serde(default)]
    done: String,
}

pub async fn show(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
    query: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let notice = match query.map(|Query(q)| q.done).unwrap_or_default().as_str() {
        "disabled" => "The token is disabled: every check with it fails until it is enabled.",
        "enabled" => "The token is enabled again.",
        "saved" => "Saved.",
        "unchanged" => "Nothing was changed.",
        _ => "",
    };
    token_page(&state, &parts, &signed, &id, notice, StatusCode::OK, "").await
}

/// A token's page, with `notice` or `error` at the top.
pub(super) async fn token_page(
    state: &ConsoleState,
    parts: &Parts,
    signed: &Signed,
    id: &str,
    notice: &str,
    status: StatusCode,
    error: &str,
) -> Response {
    let service = state.service.clone();
    let (caller, result) = call(state, signed, Rpc::Get, |authority| async move {
        let id = parse_id(id)?;
        let token = service.get(&authority, id).await?;
        let usage = service.usage(&authority, id, USAGE_DAYS_SHOWN).await?;
        Ok((token, usage))
    })
    .await;
    match result {
        Ok((token, usage)) => {
            let caller = caller.expect("a call that ran had a caller");
            let now = SystemTime::now();
            let (fields, sources) = TokenPage::fields(&token, now);
            let view = TokenPage {
                base: Base::signed(state, signed.csrf(), &caller, "tokens"),
                id: token.id.get(),
                name: crate::text::visible(token.name.as_str()).into_owned(),
                badges: views::badges(&token, now),
                fields,
                sources,
                chart: super::chart::draw(&views::usage_totals(&usage)),
                etag: Etag::of(&token).to_string(),
                disabled: token.disabled,
                max_grace: span_text(state.service.config().max_rotation_grace),
                notice: notice.to_owned(),
                error: error.to_owned(),
            };
            page(status, askama::Template::render(&view))
        }
        Err(e) => error_page(state, Some(parts), &e),
    }
}

pub(super) fn parse_id(text: &str) -> Result<TokenId, Error> {
    let id = text
        .parse::<u64>()
        .map_err(|_| FieldError::new("id", "must be a token id (a number)"))?;
    Ok(TokenId::parse(id)?)
}

/// The refusal of a body that is not a console form.
pub(super) fn not_a_form() -> Response {
    (StatusCode::BAD_REQUEST, "the form was not a console form").into_response()
}

/// The lifetime policy as the form shows it beside the expiration.
fn policy_texts(state: &ConsoleState) -> (String, String) {
    let lifetime = state.service.config().lifetime;
    (
        lifetime
            .default_lifetime()
            .map_or_else(|| "none (never expires)".to_owned(), span_text),
        lifetime.max().map_or_else(|| "none".to_owned(), span_text),
    )
}

fn form_page(
    state: &ConsoleState,
    signed: &Signed,
    caller: &ServiceToken,
    editing: Option<(u64, String)>,
    form: TokenForm,
    error: String,
) -> FormPage {
    let (default_lifetime, max_lifetime) = policy_texts(state);
    FormPage {
        base: Base::signed(
            state,
            signed.csrf(),
            caller,
            if editing.is_some() { "tokens" } else { "new" },
        ),
        editing,
        form,
        default_lifetime,
        max_lifetime,
        error,
    }
}

pub async fn new_page(State(state): State<ConsoleState>, parts: Parts) -> Response {
    let signed = signed_or_answer!(state, parts);
    let (caller, result) = call(&state, &signed, Rpc::ConsolePage, |authority| async move {
        Ok(authority.token().clone())
    })
    .await;
    match result {
        Ok(caller) => page(
            StatusCode::OK,
            askama::Template::render(&form_page(
                &state,
                &signed,
                &caller,
                None,
                TokenForm::default(),
                String::new(),
            )),
        ),
        Err(e) => failed(&state, &parts, caller, e, |_, _| {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }),
    }
}

pub async fn create(
    State(state): State<ConsoleState>,
    parts: Parts,
    form: Result<Form<TokenFormInput>, FormRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let Ok(Form(form)) = form else {
        return not_a_form();
    };
    csrf_or_answer!(signed, &form.csrf);
    let service = state.service.clone();
    let input = &form;
    let (caller, result) = call(&state, &signed, Rpc::Create, |authority| async move {
        service.create(&authority, input.new_token()?).await
    })
    .await;
    match result {
        Ok((secret, token)) => {
            let caller = caller.expect("a call that ran had a caller");
            let view = SecretPage {
                base: Base::signed(&state, signed.csrf(), &caller, "new"),
                id: token.id.get(),
                name: crate::text::visible(token.name.as_str()).into_owned(),
                what: "created",
                secret: secret.expose_secret().to_owned(),
                grace: String::new(),
            };
            page(StatusCode::OK, askama::Template::render(&view))
        }
        Err(e) => failed(&state, &parts, caller, e, |caller, error| {
            let view = form_page(&state, &signed, &caller, None, form.as_form(), error);
            page(StatusCode::OK, askama::Template::render(&view))
        }),
    }
}

pub async fn edit_page(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let service = state.service.clone();
    let token_id = &id;
    let (caller, result) = call(&state, &signed, Rpc::Get, |authority| async move {
        service.get(&authority, parse_id(token_id)?).await
    })
    .await;
    match result {
        Ok(token) => {
            let caller = caller.expect("a call that ran had a caller");
            let editing = Some((token.id.get(), Etag::of(&token).to_string()));
            let view = form_page(
                &state,
                &signed,
                &caller,
                editing,
                TokenForm::of(&token),
                String::new(),
            );
            page(StatusCode::OK, askama::Template::render(&view))
        }
        Err(e) => error_page(&state, Some(&parts), &e),
    }
}

pub async fn edit(
    State(state): State<ConsoleState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<TokenFormInput>, FormRejection>,
) -> Response {
    let signed = signed_or_answer!(state, parts);
    let Ok(Form(form)) = form else {
        return not_a_form();
    };
    csrf_or_answer!(signed, &form.csrf);
    let service = state.service.clone();
    let (input, token_id) = (&form, &id);
    let (caller, result) = call(&state, &signed, Rpc::Update, |authority| async move {
        let id = parse_id(token_id)?;
        let current = service.get(&authority, id).await?;
        let edit = input.edit_of(&current)?;
        if edit.is_empty() {
            return Ok(None);
        }
        service
            .update(&authority, id, edit, etag(&input.etag)?)
            .await
            .map(Some)
    })
    .await;
    match result {
        Ok(Some(token)) => state.redirect(&format!("/tokens/{}?done=saved", token.id)),
        Ok(None) => state.redirect(&format!("/tokens/{id}?done=unchanged")),
        Err(e) => failed(&state, &parts, caller, e, |caller, error| {
            let editing = Some((id.parse().unwrap_or(0), form.etag.clone()));
            let view = form_page(&state, &signed, &caller, editing, form.as_form(), error);
            page(StatusCode::OK, askama::Template::render(&view))
        }),
    }
}
