//! The web console, on the same port under `--console-path-prefix`: pages
//! rendered on the server from templates compiled into the binary
//! (askama), a little JavaScript where it serves a person (copy, confirm),
//! every action a call of [`TokenService`] under the `console` transport,
//! as gRPC's and REST's are. A transport like `http`: it sees the service
//! and the model, never the store.
//!
//! `session.rs` signs in and out and finds a request's session (cookie,
//! CSRF token); `tokens.rs` and `overview.rs` are the pages, `actions.rs`
//! what a token's page does (disable, enable, rotate, delete); `forms.rs`
//! reads their forms into model values; `views.rs` is what the templates
//! show; `chart.rs` draws usage as SVG; `assets.rs` serves the stylesheet
//! and script under content-hashed names.

/// The session of a request, or the answer instead.
macro_rules! signed_or_answer {
    ($state:expr, $parts:expr) => {
        match $crate::console::session::signed(&$state, &$parts).await {
            Ok(signed) => signed,
            Err(answer) => return answer,
        }
    };
}

/// A form's CSRF token checked, or the refusal answered.
macro_rules! csrf_or_answer {
    ($signed:expr, $posted:expr) => {
        if !$crate::console::session::csrf_matches(&$signed, $posted) {
            return $crate::console::session::csrf_refused();
        }
    };
}

mod actions;
mod assets;
mod chart;
mod forms;
mod overview;
mod session;
mod tokens;
mod views;

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

use crate::{
    config::{ConsoleConfig, ConsolePrefix},
    error::Error,
    service::TokenService,
};

pub use session::SESSION_COOKIE;

/// Whether the replica is ready, as the server knows it (the console sees
/// no other transport).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// What every console handler shares.
#[derive(Clone)]
pub struct ConsoleState(Arc<Shared>);

pub struct Shared {
    service: Arc<TokenService>,
    prefix: ConsolePrefix,
    /// The port serves TLS: cookies are `Secure` whatever the request says.
    tls: bool,
    /// Whether this replica is ready (what `/readyz` answers): the
    /// overview shows it.
    ready: Ready,
    assets: assets::Assets,
}

impl std::ops::Deref for ConsoleState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ConsoleState {
    pub fn new(
        service: Arc<TokenService>,
        config: &ConsoleConfig,
        tls: bool,
        ready: Ready,
    ) -> ConsoleState {
        ConsoleState(Arc::new(Shared {
            service,
            prefix: config.prefix.clone(),
            tls,
            ready,
            assets: assets::Assets::new(),
        }))
    }

    /// `path` (starting with `/`) under the console's prefix.
    fn link(&self, path: &str) -> String {
        format!("{}{path}", self.prefix.as_str())
    }

    fn redirect(&self, path: &str) -> Response {
        Redirect::to(&self.link(path)).into_response()
    }
}

/// The console's routes, each under the prefix; the caller merges them
/// into the port's router.
pub fn router(state: ConsoleState) -> Router {
    let at = |path: &str| state.link(path);
    Router::new()
        .route(&at(""), get(overview::root_redirect))
        .route(&at("/"), get(overview::overview))
        .route(
            &at("/sign-in"),
            get(session::sign_in_page).post(session::sign_in),
        )
        .route(&at("/sign-out"), post(session::sign_out))
        .route(&at("/tokens"), get(tokens::list))
        .route(
            &at("/tokens/new"),
            get(tokens::new_page).post(tokens::create),
        )
        .route(&at("/tokens/{id}"), get(tokens::show))
        .route(
            &at("/tokens/{id}/edit"),
            get(tokens::edit_page).post(tokens::edit),
        )
        .route(&at("/tokens/{id}/disable"), post(actions::disable))
        .route(&at("/tokens/{id}/enable"), post(actions::enable))
        .route(&at("/tokens/{id}/rotate"), post(actions::rotate))
        .route(&at("/tokens/{id}/delete"), post(actions::delete))
        .route(&at("/assets/{file}"), get(assets::serve))
        .layer(axum::middleware::map_response(guarded))
        .with_state(state)
}

/// The Content-Security-Policy of every console answer: scripts, styles
/// and images from our own origin only, never inline; no framing; forms
/// post only to us.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every console answer carries; a page (anything but an
/// asset, which says its own) is never stored by a browser or a proxy, so
/// a secret shown once stays shown once.
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// A rendered page as an answer.
fn page(status: StatusCode, html: Result<String, askama::Error>) -> Response {
    match html {
        Ok(html) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// The HTTP status a service error is shown with on a page.
fn status_of(error: &Error) -> StatusCode {
    crate::authz::HttpError::of(error).status
}
