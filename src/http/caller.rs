//! The `Caller` extractor: the authenticated service token behind a request.

use axum::{extract::FromRequestParts, http::request::Parts};

use super::HttpState;
use crate::{credential, error::Error, model::ServiceToken};

/// The caller's valid service token, read from `Authorization: ApiKey …` or
/// `X-API-Key` through the same validation as gRPC's `Validate`. Rejects
/// with 401 and `WWW-Authenticate: ApiKey`.
pub struct Caller(pub ServiceToken);

impl FromRequestParts<HttpState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Caller, Error> {
        state
            .service
            .authenticate(credential::presented(&parts.headers))
            .await
            .map(Caller)
    }
}
