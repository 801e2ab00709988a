//! The overview page: token counts (each a link to the list it counts)
//! and this replica's version, store and health.

use std::sync::OnceLock;

use axum::{
    extract::State,
    http::{StatusCode, request::Parts},
    response::Response,
};

use crate::service::Rpc;

use super::{
    ConsoleState, page,
    session::{error_page, signed},
    views::{self, Base, Count},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The prefix itself: to its page.
pub async fn root_redirect(State(state): State<ConsoleState>) -> Response {
    state.redirect("/")
}

pub async fn overview(State(state): State<ConsoleState>, parts: Parts) -> Response {
    let signed = match signed(&state, &parts).await {
        Ok(signed) => signed,
        Err(answer) => return answer,
    };
    let caller = OnceLock::new();
    let service = state.service.clone();
    let result = state
        .service
        .manage_session(
            Rpc::ConsolePage,
            &signed.session,
            signed.source,
            |authority| {
                let _ = caller.set(authority.token().clone());
                async move { service.overview(&authority).await }
            },
        )
        .await;
    let overview = match result {
        Ok(overview) => overview,
        Err(e) => return error_page(&state, Some(&parts), &e),
    };
    let Some(caller) = caller.into_inner() else {
        return error_page(&state, Some(&parts), &crate::error::Error::ShuttingDown);
    };
    let summary = overview.summary;
    let plus = if overview.capped { "+" } else { "" };
    let tokens = |query: &str| state.link(&format!("/tokens{query}"));
    let mut counts = vec![
        Count {
            label: "active",
            value: format!("{}{plus}", summary.active),
            href: tokens("?state=enabled"),
            class: "state-active",
        },
        Count {
            label: "disabled",
            value: format!("{}{plus}", summary.disabled),
            href: tokens("?state=disabled"),
            class: "",
        },
        Count {
            label: "expiring in 7 days",
            value: format!("{}{plus}", summary.expiring[1]),
            href: tokens("?state=enabled&expiring_days=7&order=expiration"),
            class: "state-expiring",
        },
        Count {
            label: "expiring in 30 days",
            value: format!("{}{plus}", summary.expiring[2]),
            href: tokens("?state=enabled&expiring_days=30&order=expiration"),
            class: "state-expiring",
        },
        Count {
            label: "unused for 90 days",
            value: format!("{}{plus}", summary.unused[1]),
            href: tokens("?state=enabled&unused_days=90&order=last_used"),
            class: "",
        },
        Count {
            label: "expired",
            value: format!("{}{plus}", summary.expired),
            href: tokens("?order=expiration"),
            class: "state-expired",
        },
    ];
    if let Some((over, more)) = overview.over_policy {
        counts.push(Count {
            label: "over policy",
            value: format!("{over}{}", if more { "+" } else { "" }),
            href: tokens("?over_policy=1"),
            class: "state-expired",
        });
    }
    let ready = (state.ready)();
    let view = views::Overview {
        base: Base::signed(&state, signed.csrf(), &caller, "overview"),
        counts,
        as_of: format!(
            "{} ({})",
            views::when(overview.as_of),
            views::relative(overview.as_of, std::time::SystemTime::now())
        ),
        version: VERSION,
        store: state.service.store_kind(),
        health: if ready { "ready" } else { "not ready" },
        health_class: if ready {
            "state-active"
        } else {
            "state-expired"
        },
        scope: if overview.every_token {
            "(all)"
        } else {
            "(those you manage)"
        },
    };
    page(StatusCode::OK, askama::Template::render(&view))
}
