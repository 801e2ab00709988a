//! Signing in and out, and the session behind a request: its cookie
//! (`HttpOnly`, `SameSite=Strict`, the console's path, `Secure` over TLS or
//! behind a trusted proxy that says the request came over HTTPS) and the
//! CSRF token every form posts back.

use std::net::IpAddr;

use axum::{
    extract::{Form, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::{error::Error, model::Session, service::SessionId, source};

use super::{ConsoleState, page, views};

/// The session's cookie.
pub const SESSION_COOKIE: &str = "sts_console";
/// The sign-in form's own cookie: the token its form must post back (a
/// double-submit check), so no other site can sign a browser in.
const SIGN_IN_COOKIE: &str = "sts_console_sign_in";
/// How long a sign-in form stays good.
const SIGN_IN_FORM_SECONDS: u32 = 600;

/// A request's session, found open, with where the request came from.
pub struct Signed {
    pub id: SessionId,
    pub session: Session,
    pub source: Option<IpAddr>,
}

impl Signed {
    pub fn csrf(&self) -> String {
        self.id.csrf_token()
    }
}

/// The value of cookie `name`, if the request sent it.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the browser reached us over HTTPS: the port serves TLS, or a
/// trusted proxy says so.
fn secure(state: &ConsoleState, parts: &Parts) -> bool {
    state.tls
        || (source::via_trusted_proxy(&parts.extensions)
            && parts
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https")))
}

fn set_cookie(
    state: &ConsoleState,
    parts: &Parts,
    name: &str,
    value: &str,
    max_age: Option<u32>,
) -> String {
    let mut cookie = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Strict",
        state.prefix.as_str()
    );
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure(state, parts) {
        cookie.push_str("; Secure");
    }
    cookie
}

/// The open session of the request, or the answer to give instead: to
/// the sign-in page (a page), 401 (an action).
pub async fn signed(state: &ConsoleState, parts: &Parts) -> Result<Signed, Response> {
    let id = cookie(&parts.headers, SESSION_COOKIE).and_then(SessionId::parse);
    let source = source::of(&parts.extensions);
    let found = match id {
        Some(id) => match state.service.console_session(&id).await {
            Ok(found) => found.map(|session| (id, session)),
            Err(e) => return Err(error_page(state, None, &e)),
        },
        None => None,
    };
    match found {
        Some((id, session)) => Ok(Signed {
            id,
            session,
            source,
        }),
        None => Err(to_sign_in(state, parts, "")),
    }
}

/// Whether a form's CSRF token is the session's.
pub fn csrf_matches(signed: &Signed, posted: &str) -> bool {
    bool::from(signed.csrf().as_bytes().ct_eq(posted.as_bytes()))
}

/// The answer to a form whose CSRF token is not the session's.
pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "This form is not from this console session (its CSRF token does not match). Reload the page and try again.",
    )
        .into_response()
}

/// To the sign-in page, the session cookie cleared, saying `why`.
pub fn to_sign_in(state: &ConsoleState, parts: &Parts, why: &str) -> Response {
    let mut location = state.link("/sign-in");
    if !why.is_empty() {
        location.push_str("?ended=");
        location.push_str(why);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (
                header::SET_COOKIE,
                set_cookie(state, parts, SESSION_COOKIE, "", Some(0)),
            ),
        ],
    )
        .into_response()
}

/// A service error on a page: a refused credential ends the session
/// (the service already ended it) and goes to sign-in; the rest are
/// shown.
pub fn error_page(state: &ConsoleState, parts: Option<&Parts>, error: &Error) -> Response {
    if let (Some(parts), Error::Unauthenticated(_) | Error::PermissionDenied(_)) = (parts, error) {
        return to_sign_in(state, parts, "refused");
    }
    let view = views::ErrorPage {
        base: views::Base::anonymous(state),
        status: super::status_of(error).as_u16(),
        message: error.to_string(),
    };
    page(super::status_of(error), askama::Template::render(&view))
}

#[derive(Deserialize)]
pub struct EndedQuery {
    ended: Option<String>,
}

pub async fn sign_in_page(
    State(state): State<ConsoleState>,
    query: Result<axum::extract::Query<EndedQuery>, axum::extract::rejection::QueryRejection>,
    parts: Parts,
) -> Response {
    let ended = query.map(|q| q.0.ended).unwrap_or_default();
    let notice = match ended.as_deref() {
        Some("refused") => {
            "Your session ended: its token was rotated, disabled, deleted, or lost its role."
        }
        Some("signed-out") => "You signed out.",
        Some(_) | None => "",
    };
    sign_in_form(&state, &parts, StatusCode::OK, notice, "")
}

fn sign_in_form(
    state: &ConsoleState,
    parts: &Parts,
    status: StatusCode,
    notice: &str,
    error: &str,
) -> Response {
    let form_token = SessionId::generate_form_token();
    let view = views::SignIn {
        base: views::Base::anonymous(state),
        form_token: form_token.clone(),
        notice: notice.to_owned(),
        error: error.to_owned(),
    };
    let mut response = page(status, askama::Template::render(&view));
    if let Ok(value) = set_cookie(
        state,
        parts,
        SIGN_IN_COOKIE,
        &form_token,
        Some(SIGN_IN_FORM_SECONDS),
    )
    .parse()
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
    form_token: String,
}

pub async fn sign_in(
    State(state): State<ConsoleState>,
    parts: Parts,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return sign_in_form(
            &state,
            &parts,
            StatusCode::BAD_REQUEST,
            "",
            "The form was incomplete.",
        );
    };
    let expected = cookie(&parts.headers, SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.form_token.as_bytes())) {
        return sign_in_form(
            &state,
            &parts,
            StatusCode::FORBIDDEN,
            "",
            "This sign-in form expired or was not this console's. Try again.",
        );
    }
    let source = source::of(&parts.extensions);
    match state.service.sign_in(form.token.trim(), source).await {
        Ok((id, _caller)) => (
            StatusCode::SEE_OTHER,
            axum::response::AppendHeaders([
                (header::LOCATION, state.link("/")),
                (
                    header::SET_COOKIE,
                    set_cookie(&state, &parts, SESSION_COOKIE, id.as_str(), None),
                ),
                (
                    header::SET_COOKIE,
                    set_cookie(&state, &parts, SIGN_IN_COOKIE, "", Some(0)),
                ),
            ]),
        )
            .into_response(),
        Err(e) => {
            let message = match &e {
                Error::Unauthenticated(why) => format!(
                    "That is not the current secret of a valid token ({}).",
                    why
                ),
                Error::PermissionDenied(_) => {
                    "That token holds neither the admin nor the manager role, so it cannot use the console.".to_owned()
                }
                Error::RateLimited { retry_after } => format!(
                    "Too many sign-in attempts from your address; try again in {} s.",
                    retry_after.as_secs().max(1)
                ),
                other => other.to_string(),
            };
            sign_in_form(&state, &parts, super::status_of(&e), "", &message)
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn sign_out(
    State(state): State<ConsoleState>,
    parts: Parts,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let signed = match signed(&state, &parts).await {
        Ok(signed) => signed,
        Err(answer) => return answer,
    };
    let posted = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_matches(&signed, &posted) {
        return csrf_refused();
    }
    if let Err(e) = state.service.end_session(&signed.session.key).await {
        return error_page(&state, None, &e);
    }
    to_sign_in(&state, &parts, "signed-out")
}
