//! Plain-HTTP probes for orchestrators (`/healthz`, `/readyz`) and the
//! Prometheus scrape endpoint (`/metrics`).

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use std::sync::atomic::{AtomicBool, Ordering};

use super::HttpState;

/// Liveness: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether to take traffic: not while shutting down, nor while the store
/// is unreachable (a database away). Shared by `/readyz` and gRPC health.
#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    store_ok: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            draining: AtomicBool::new(false),
            store_ok: AtomicBool::new(true),
        }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.store_ok.load(Ordering::SeqCst)
    }

    /// Shutdown began; never ready again.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_store_ok(&self, ok: bool) {
        self.store_ok.store(ok, Ordering::SeqCst);
    }
}

/// Readiness: the store answers and the server is not shutting down.
/// With a shared store, `change_feed` says whether other replicas'
/// changes are heard (`live`) or not (`silent`: the validation cache is
/// off, every check asks the database, and the server stays ready).
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.readiness();
    let (code, status) = if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else if readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
    };
    let mut body = json!({ "status": status });
    if let Some(feed) = state.service.change_feed() {
        body["change_feed"] = feed.into();
    }
    (code, Json(body)).into_response()
}

pub async fn metrics(State(state): State<HttpState>) -> Response {
    let text = state.service.render_metrics().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
