//! The console's stylesheet and script, compiled into the binary and
//! served under names that carry a hash of their bytes, so a browser may
//! keep them a year: a new release's are new names.

use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::ConsoleState;

const CSS: &[u8] = include_bytes!("../../assets/console/console.css");
const JS: &[u8] = include_bytes!("../../assets/console/console.js");

/// The assets' names, fixed at start-up.
pub struct Assets {
    css: String,
    js: String,
}

/// `stem.<12 hex digits of the SHA-256 of bytes>.ext`.
fn hashed(stem: &str, ext: &str, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("{stem}.{}.{ext}", &hex::encode(digest)[..12])
}

impl Assets {
    pub fn new() -> Assets {
        Assets {
            css: hashed("console", "css", CSS),
            js: hashed("console", "js", JS),
        }
    }

    pub fn css_href(&self, state: &ConsoleState) -> String {
        state.link(&format!("/assets/{}", self.css))
    }

    pub fn js_href(&self, state: &ConsoleState) -> String {
        state.link(&format!("/assets/{}", self.js))
    }
}

pub async fn serve(State(state): State<ConsoleState>, Path(file): Path<String>) -> Response {
    let (bytes, kind) = if file == state.assets.css {
        (CSS, "text/css; charset=utf-8")
    } else if file == state.assets.js {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        bytes,
    )
        .into_response()
}
