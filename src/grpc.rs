//! The gRPC front end: turns protobuf requests into domain values, calls the
//! [`TokenService`], and turns the answers back. No rules live here.

use std::{sync::Arc, time::SystemTime};

use tonic::{Request, Response, Status};

use crate::{
    credential,
    error::Error,
    model::{FieldError, NewToken, Roles, ServiceToken, TokenId, TokenName},
    page::PageRequest,
    proto,
    service::{Admin, InvalidReason, TokenService, Validation},
};

/// `proto::token_service_server::TokenService` over the domain service.
#[derive(Clone)]
pub struct GrpcTokenService {
    service: Arc<TokenService>,
}

impl GrpcTokenService {
    pub fn new(service: Arc<TokenService>) -> GrpcTokenService {
        GrpcTokenService { service }
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Admin, Error> {
        self.service
            .authorize_admin(credential::presented(request.metadata().as_ref()))
            .await
    }
}

#[tonic::async_trait]
impl proto::token_service_server::TokenService for GrpcTokenService {
    async fn create(
        &self,
        request: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        let admin = self.admin(&request).await?;
        let new = new_token(request.into_inner()).map_err(Error::from)?;
        let (token, created) = self.service.create(&admin, new).await?;
        Ok(Response::new(proto::CreateResponse {
            token: token.expose_secret().to_owned(),
            service_token: Some(created.into()),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let admin = self.admin(&request).await?;
        let request = request.into_inner();
        let config = self.service.config();
        let page = PageRequest::parse(
            request.page_size,
            &request.page_token,
            config.default_page_size,
            config.max_page_size,
        )
        .map_err(Error::from)?;
        let page = self.service.list(&admin, page).await?;
        Ok(Response::new(proto::ListResponse {
            service_tokens: page.tokens.into_iter().map(Into::into).collect(),
            next_page_token: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let admin = self.admin(&request).await?;
        let id = TokenId::parse(request.into_inner().id).map_err(Error::from)?;
        self.service.delete(&admin, id).await?;
        Ok(Response::new(proto::DeleteResponse {}))
    }

    async fn validate(
        &self,
        request: Request<proto::ValidateRequest>,
    ) -> Result<Response<proto::ValidateResponse>, Status> {
        let validation = self.service.validate(&request.get_ref().token).await?;
        Ok(Response::new(validation.into()))
    }
}

fn new_token(request: proto::CreateRequest) -> Result<NewToken, FieldError> {
    Ok(NewToken {
        name: TokenName::parse(&request.name)?,
        roles: Roles::parse(&request.roles)?,
        expiration: request
            .expiration
            .map(|ts| timestamp("expiration", ts))
            .transpose()?,
    })
}

/// protobuf's Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A Timestamp as protobuf defines it valid; anything else is refused rather
/// than normalized, so a client bug is seen instead of silently reinterpreted.
fn timestamp(field: &str, ts: prost_types::Timestamp) -> Result<SystemTime, FieldError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldError::new(field, "nanos must be within 0..1000000000"));
    }
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) {
        return Err(FieldError::new(
            field,
            "must lie between the years 1 and 9999",
        ));
    }
    SystemTime::try_from(ts).map_err(|_| FieldError::new(field, "is not a representable time"))
}

impl From<ServiceToken> for proto::ServiceToken {
    fn from(token: ServiceToken) -> proto::ServiceToken {
        proto::ServiceToken {
            id: token.id.get(),
            name: token.name.as_str().to_owned(),
            roles: token.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            expiration: token.expiration.map(Into::into),
            created_at: Some(token.created_at.into()),
        }
    }
}

impl From<Validation> for proto::ValidateResponse {
    fn from(validation: Validation) -> proto::ValidateResponse {
        match validation {
            Validation::Valid(token) => proto::ValidateResponse {
                valid: true,
                reason: proto::InvalidReason::Unspecified.into(),
                service_token: Some(token.into()),
            },
            Validation::Invalid(reason) => proto::ValidateResponse {
                valid: false,
                reason: proto::InvalidReason::from(reason).into(),
                service_token: None,
            },
        }
    }
}

impl From<InvalidReason> for proto::InvalidReason {
    fn from(reason: InvalidReason) -> proto::InvalidReason {
        match reason {
            InvalidReason::Malformed(_) => proto::InvalidReason::Malformed,
            InvalidReason::NotFound => proto::InvalidReason::NotFound,
            InvalidReason::Expired => proto::InvalidReason::Expired,
        }
    }
}
