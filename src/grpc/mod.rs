//! The gRPC front end: turns protobuf requests into domain values, calls the
//! [`TokenService`], and turns the answers back. No rules live here.

mod undecodable;

use std::{net::IpAddr, sync::Arc};

use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    credential,
    error::Error,
    model::{NewToken, ServiceToken, TokenId, parse_time},
    page::PageRequest,
    proto,
    service::{InvalidReason, Rpc, TokenService, Validation},
};

pub use undecodable::UndecodableLayer;

/// `proto::token_service_server::TokenService` over the domain service.
#[derive(Clone)]
pub struct GrpcTokenService {
    service: Arc<TokenService>,
}

impl GrpcTokenService {
    pub fn new(service: Arc<TokenService>) -> GrpcTokenService {
        GrpcTokenService { service }
    }
}

#[tonic::async_trait]
impl proto::token_service_server::TokenService for GrpcTokenService {
    async fn create(
        &self,
        request: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::CreateResponse>, Status> {
        let (metadata, source, message) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        let (token, created) = self
            .service
            .manage(Rpc::Create, presented, source, |admin| async move {
                self.service.create(&admin, new_token(message)?).await
            })
            .await?;
        Ok(Response::new(proto::CreateResponse {
            token: token.expose_secret().to_owned(),
            service_token: Some(created.into()),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let (metadata, source, request) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        let page = self
            .service
            .manage(Rpc::List, presented, source, |admin| async move {
                let config = self.service.config();
                let page = PageRequest::parse(
                    request.page_size,
                    &request.page_token,
                    config.default_page_size,
                    config.max_page_size,
                )?;
                self.service.list(&admin, page).await
            })
            .await?;
        Ok(Response::new(proto::ListResponse {
            service_tokens: page.tokens.into_iter().map(Into::into).collect(),
            next_page_token: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let (metadata, source, message) = parts(request);
        let presented = credential::presented(metadata.as_ref());
        self.service
            .manage(Rpc::Delete, presented, source, |admin| async move {
                self.service
                    .delete(&admin, TokenId::parse(message.id)?)
                    .await
            })
            .await?;
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

/// What a management call needs of its request: the metadata (where the
/// credential is), the peer's address (for the audit) and the message.
fn parts<T>(request: Request<T>) -> (MetadataMap, Option<IpAddr>, T) {
    let source = request.remote_addr().map(|a| a.ip());
    let (metadata, _, message) = request.into_parts();
    (metadata, source, message)
}

fn new_token(request: proto::CreateRequest) -> Result<NewToken, Error> {
    let expiration = request
        .expiration
        .map(|ts| parse_time("expiration", ts.seconds, ts.nanos))
        .transpose()?;
    Ok(NewToken::parse(&request.name, &request.roles, expiration)?)
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
