//! gRPC request helpers: channels, credentials in metadata, Create and
//! Validate requests, status checks and answers without their volatile
//! fields.

use std::net::SocketAddr;

use sts::proto::{
    CreateRequest, ServiceToken, ValidateRequest, ValidateResponse,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `Validate` of `token` through `client`.
pub async fn validate_on(
    client: &TokenServiceClient<Channel>,
    token: &str,
) -> Result<ValidateResponse, Status> {
    let request = ValidateRequest {
        token: token.to_owned(),
        ..Default::default()
    };
    Ok(client.clone().validate(request).await?.into_inner())
}

/// A request carrying `token` as `x-api-key`.
pub fn with_key<T>(token: &str, message: T) -> Request<T> {
    with_header("x-api-key", token, message)
}

pub fn with_header<T>(name: &'static str, value: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(name, MetadataValue::try_from(value).unwrap());
    request
}

pub fn create_request(name: &str, roles: &[&str]) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expiration: None,
        ..Default::default()
    }
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// `token` as a check answers it: management answers' etag left out.
pub fn checked(token: ServiceToken) -> ServiceToken {
    ServiceToken {
        etag: String::new(),
        allowed_sources: Vec::new(),
        audiences: Vec::new(),
        allowed_routes: Vec::new(),
        recent_sources: Vec::new(),
        rate_limits: Vec::new(),
        owner_id: 0,
        lifetime: None,
        ..token
    }
}

/// `tokens` with their last-used times and sources cleared: what stays
/// the same while tokens are used.
pub fn without_last_use(tokens: Vec<ServiceToken>) -> Vec<ServiceToken> {
    tokens
        .into_iter()
        .map(|token| ServiceToken {
            last_used_at: None,
            recent_sources: Vec::new(),
            ..token
        })
        .collect()
}

/// A rate limit as the API takes it: `limit` checks per `period_secs`.
pub fn rate_limit(name: &str, limit: u64, period_secs: i64) -> sts::proto::RateLimit {
    sts::proto::RateLimit {
        name: name.into(),
        limit,
        period: Some(prost_types::Duration {
            seconds: period_secs,
            nanos: 0,
        }),
    }
}
