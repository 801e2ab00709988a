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
use crate::error::Error;

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
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state.readiness();
    if readiness.is_ready() {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    } else {
        let status = if readiness.is_draining() {
            "shutting down"
        } else {
            "store unavailable"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": status })),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<HttpState>) -> Result<Response, Error> {
    let text = state.service.render_metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
