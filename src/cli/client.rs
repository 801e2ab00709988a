//! Connecting to `sts-server` from a context URL, and the calls the
//! commands make, each turning an RPC failure into a [`CliError`].

use std::{path::PathBuf, time::Duration};

use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::{
    CliError,
    error::{TransportProblem, transport_problem},
};
use crate::error::with_causes;
use crate::proto::{
    CreateRequest, DailyUsage, DeleteRequest, GetRequest, GetUsageRequest, InvalidReason,
    ListRequest, RevokeLeakedRequest, RotateRequest, RotateSelfRequest, ServiceToken,
    UpdateRequest, ValidateRequest, token_service_client::TokenServiceClient,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest page `List` serves; fewer round trips for big token sets.
const LIST_PAGE_SIZE: i32 = 1000;

/// How an `https://` server's certificate is checked. Plain `http://` URLs
/// ignore both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_cert_path: Option<PathBuf>,
    /// Accept any certificate: encrypted but unauthenticated, for tests.
    pub skip_ssl: bool,
}

impl TlsOptions {
    fn client_config(&self) -> Result<ClientTlsConfig, CliError> {
        let config = ClientTlsConfig::new().with_enabled_roots();
        let Some(path) = &self.ca_cert_path else {
            return Ok(config);
        };
        let unusable = |why: String| {
            CliError::Config(format!(
                "cannot use the CA certificate {}: {why}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
        // tonic skips what does not parse; a file with no certificate in it
        // would silently trust nothing extra, so say so instead.
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(unusable("it holds no PEM certificate".into()));
        }
        Ok(config.ca_certificate(Certificate::from_pem(pem)))
    }
}

/// A connection to one server, with the credential management calls use.
pub struct Session {
    client: TokenServiceClient<Channel>,
    url: String,
    https: bool,
    token: Option<String>,
}

/// A failed connection in one line that says what is most likely wrong;
/// when plaintext got no gRPC answer, a TLS handshake tells whether the
/// server wants https://.
async fn explain(url: &str, https: bool, error: &dyn std::error::Error) -> CliError {
    let problem = transport_problem(error, https);
    let tls = matches!(problem, TransportProblem::NotGrpc | TransportProblem::Other)
        && !https
        && match origin(url) {
            Ok((origin, _)) => super::insecure::speaks_tls(&origin).await,
            Err(_) => false,
        };
    problem.explain(url, error, tls)
}

/// `scheme://host[:port]` of a context URL. gRPC lives at the root, so a path
/// (`https://host/api`) or a trailing slash is dropped.
pub fn origin(url: &str) -> Result<(String, bool), CliError> {
    let invalid = |why: &str| CliError::Usage(format!("invalid URL '{url}': {why}"));
    let uri: http::Uri = url.trim().parse().map_err(|_| invalid("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(invalid(&format!("scheme '{other}' is not http or https"))),
        None => return Err(invalid("it needs http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("user info in the URL is not supported"));
    }
    let scheme = if tls { "https" } else { "http" };
    Ok((format!("{scheme}://{authority}"), tls))
}

impl Session {
    pub async fn connect(
        url: &str,
        token: Option<String>,
        tls: &TlsOptions,
    ) -> Result<Session, CliError> {
        let (origin, https) = origin(url)?;
        let connect_error = |e: tonic::transport::Error| CliError::Connect {
            url: url.to_owned(),
            reason: with_causes(&e),
        };

        let origin_text = origin.clone();
        let insecure = https && tls.skip_ssl;
        // tonic refuses an https URI without its own TLS; with --skip-ssl the
        // connector does TLS (and defaults the port to 443) instead.
        let origin = if insecure {
            origin.replacen("https://", "http://", 1)
        } else {
            origin
        };
        let mut endpoint = Endpoint::from_shared(origin)
            .map_err(connect_error)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        tracing::debug!(%origin_text, https, skip_ssl = tls.skip_ssl, "connecting");
        let channel = if insecure {
            endpoint
                .connect_with_connector(super::insecure::connector())
                .await
        } else {
            if https {
                endpoint = endpoint
                    .tls_config(tls.client_config()?)
                    .map_err(connect_error)?;
            }
            endpoint.connect().await
        };
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => return Err(explain(url, https, &e).await),
        };
        tracing::debug!(%origin_text, "connected");
        Ok(Session {
            client: TokenServiceClient::new(channel),
            url: url.to_owned(),
            https,
            token,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn token(&self) -> Result<&str, CliError> {
        self.token.as_deref().ok_or_else(|| {
            CliError::Config(
                "no service token: pass --service-token, set STS_CLI_SERVICE_TOKEN, or save a context with `sts context save`".into(),
            )
        })
    }

    fn authorized<T>(&self, message: T) -> Result<Request<T>, CliError> {
        let token = self.token()?;
        let value = MetadataValue::try_from(token).map_err(|_| {
            CliError::Usage("the service token contains characters a token never has".into())
        })?;
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-api-key", value);
        Ok(request)
    }

    async fn failed(&self, status: tonic::Status) -> CliError {
        if let Some(answered) = CliError::from_status(&status, &self.url) {
            return answered;
        }
        let cause: &dyn std::error::Error = std::error::Error::source(&status).unwrap_or(&status);
        explain(&self.url, self.https, cause).await
    }

    /// Creates a token; returns the secret and its description.
    pub async fn create(
        &mut self,
        request: CreateRequest,
    ) -> Result<(String, ServiceToken), CliError> {
        let request = self.authorized(request)?;
        let response = match self.client.create(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        let created = response
            .service_token
            .ok_or_else(|| CliError::Usage("the server's answer lacks the created token".into()))?;
        Ok((response.token, created))
    }

    /// One token by id.
    pub async fn get(&mut self, id: u64) -> Result<ServiceToken, CliError> {
        let request = self.authorized(GetRequest { id })?;
        let response = match self.client.get(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        response
            .service_token
            .ok_or_else(|| CliError::Usage("the server's answer lacks the token".into()))
    }

    /// Token `id`'s checks per day, the last `days` days.
    pub async fn usage(&mut self, id: u64, days: u32) -> Result<Vec<DailyUsage>, CliError> {
        let request = self.authorized(GetUsageRequest { id, days })?;
        match self.client.get_usage(request).await {
            Ok(response) => Ok(response.into_inner().days),
            Err(status) => Err(self.failed(status).await),
        }
    }

    /// Sets the fields of `token` that `paths` name; returns the result.
    pub async fn update(
        &mut self,
        token: ServiceToken,
        paths: Vec<String>,
    ) -> Result<ServiceToken, CliError> {
        let request = self.authorized(UpdateRequest {
            service_token: Some(token),
            update_mask: Some(prost_types::FieldMask { paths }),
        })?;
        let response = match self.client.update(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        response
            .service_token
            .ok_or_else(|| CliError::Usage("the server's answer lacks the token".into()))
    }

    /// A new secret for token `id`; returns it and the token.
    pub async fn rotate(
        &mut self,
        id: u64,
        grace: Duration,
    ) -> Result<(String, ServiceToken), CliError> {
        let request = self.authorized(RotateRequest {
            id,
            grace_period: Some(grace_period(grace)?),
        })?;
        let response = match self.client.rotate(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        with_secret(response.token, response.service_token)
    }

    /// The session's own token rotating itself.
    pub async fn rotate_self(
        &mut self,
        grace: Duration,
        expiration: Option<prost_types::Timestamp>,
    ) -> Result<(String, ServiceToken), CliError> {
        let request = self.authorized(RotateSelfRequest {
            grace_period: Some(grace_period(grace)?),
            expiration,
        })?;
        let response = match self.client.rotate_self(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        with_secret(response.token, response.service_token)
    }

    /// Revokes leaked tokens by their secrets: no credential is sent (the
    /// secrets are the right to revoke them). One result per secret, in
    /// order.
    pub async fn revoke_leaked(&mut self, tokens: Vec<String>) -> Result<Vec<i32>, CliError> {
        let request = RevokeLeakedRequest { tokens };
        match self.client.revoke_leaked(request).await {
            Ok(response) => Ok(response.into_inner().results),
            Err(status) => Err(self.failed(status).await),
        }
    }

    /// Every token `filter` (a ListRequest's filters) matches, following
    /// `next_page_token` to the end.
    pub async fn list_all(&mut self, filter: ListRequest) -> Result<Vec<ServiceToken>, CliError> {
        let mut tokens = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self.authorized(ListRequest {
                page_size: LIST_PAGE_SIZE,
                page_token,
                ..filter.clone()
            })?;
            let page = match self.client.list(request).await {
                Ok(page) => page.into_inner(),
                Err(status) => return Err(self.failed(status).await),
            };
            tracing::debug!(tokens = page.service_tokens.len(), "list page");
            tokens.extend(page.service_tokens);
            if page.next_page_token.is_empty() {
                return Ok(tokens);
            }
            page_token = page.next_page_token;
        }
    }

    pub async fn delete(&mut self, id: u64) -> Result<(), CliError> {
        let request = self.authorized(DeleteRequest {
            id,
            etag: String::new(),
        })?;
        match self.client.delete(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Err(CliError::NotFound(format!("service token {id} not found")))
            }
            Err(status) => Err(self.failed(status).await),
        }
    }

    /// Checks this session's own token with `Validate`.
    pub async fn validate_own_token(&mut self) -> Result<ServiceToken, CliError> {
        let token = self.token()?.to_owned();
        // A look, not a use: it spends nothing from the token's limits.
        let request = ValidateRequest {
            token,
            cost: Some(0),
            ..ValidateRequest::default()
        };
        let response = match self.client.validate(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.failed(status).await),
        };
        match response.service_token {
            Some(identity) if response.valid => Ok(identity),
            _ => Err(CliError::Auth {
                url: self.url.clone(),
                reason: format!(
                    "the service token is not valid ({})",
                    match response.reason() {
                        InvalidReason::Malformed => "malformed",
                        InvalidReason::NotFound => "unknown or deleted",
                        InvalidReason::Expired => "expired",
                        InvalidReason::Disabled => "disabled",
                        // Validate from a terminal names no source,
                        // audience or route, so a bound token is refused
                        // here whatever it may do where it is bound.
                        InvalidReason::SourceNotAllowed => {
                            "it is bound to source addresses, which this check cannot name"
                        }
                        InvalidReason::AudienceNotAllowed => {
                            "it is bound to audiences, which this check cannot name"
                        }
                        InvalidReason::RouteNotAllowed => {
                            "it is bound to routes, which this check cannot name"
                        }
                        InvalidReason::RateLimited => "it is over a rate limit",
                        InvalidReason::Unspecified => "no reason given",
                    }
                ),
            }),
        }
    }
}

/// A new secret and its token, from an answer that must carry both.
fn with_secret(
    secret: String,
    token: Option<ServiceToken>,
) -> Result<(String, ServiceToken), CliError> {
    let token =
        token.ok_or_else(|| CliError::Usage("the server's answer lacks the token".into()))?;
    Ok((secret, token))
}

/// A grace period as the API takes it.
fn grace_period(grace: Duration) -> Result<prost_types::Duration, CliError> {
    Ok(prost_types::Duration {
        seconds: i64::try_from(grace.as_secs())
            .map_err(|_| CliError::Usage("--grace is too long".into()))?,
        nanos: grace.subsec_nanos() as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_trailing_slashes() {
        assert_eq!(
            origin("http://localhost:7070").unwrap(),
            ("http://localhost:7070".into(), false)
        );
        assert_eq!(
            origin("http://localhost:7070/").unwrap(),
            ("http://localhost:7070".into(), false)
        );
        assert_eq!(
            origin("https://x.example/api/").unwrap(),
            ("https://x.example".into(), true)
        );
        for bad in [
            "localhost:7070",
            "ftp://x",
            "http://",
            "not a url",
            "http://u:p@x",
        ] {
            assert!(matches!(origin(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }
}
