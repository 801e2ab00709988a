//! [`ValidateLayer`]: a tower layer that reads the credential exactly as
//! the server does (the shared `sts_api::credential`), checks it with a
//! [`Validator`], checks the required roles, and puts the caller's
//! [`Identity`] into the request's extensions. Refusals are answered
//! without calling the inner service: 401 (with `WWW-Authenticate`), 403,
//! 429 (with `Retry-After`) or 503.

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use http::{HeaderValue, Request, Response, header};

use crate::{Context, Identity, Refusal, Validator};

/// Where the client's address is read from, if anywhere.
type SourceOf = Arc<dyn Fn(&http::Extensions) -> Option<IpAddr> + Send + Sync>;

/// Checks every request's service token before the inner service sees it.
#[derive(Clone)]
pub struct ValidateLayer {
    validator: Validator,
    roles: Arc<[String]>,
    audience: Option<Arc<str>>,
    source: Option<SourceOf>,
}

impl ValidateLayer {
    /// Every request needs a valid token; nothing more until
    /// [`ValidateLayer::require_role`].
    pub fn new(validator: Validator) -> ValidateLayer {
        ValidateLayer {
            validator,
            roles: Arc::from([]),
            audience: None,
            #[cfg(feature = "axum")]
            source: Some(Arc::new(connect_info)),
            #[cfg(not(feature = "axum"))]
            source: None,
        }
    }

    /// The token must also hold `role` (each one added is required too).
    pub fn require_role(mut self, role: impl Into<String>) -> ValidateLayer {
        let mut roles = self.roles.to_vec();
        roles.push(role.into());
        self.roles = roles.into();
        self
    }

    /// This service's name, for tokens bound to audiences.
    pub fn audience(mut self, audience: impl Into<String>) -> ValidateLayer {
        self.audience = Some(Arc::from(audience.into()));
        self
    }

    /// Where the client's address comes from (with the `axum` feature,
    /// by default axum's `ConnectInfo<SocketAddr>`).
    pub fn source_from(
        mut self,
        source: impl Fn(&http::Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> ValidateLayer {
        self.source = Some(Arc::new(source));
        self
    }
}

#[cfg(feature = "axum")]
fn connect_info(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

impl<S> tower_layer::Layer<S> for ValidateLayer {
    type Service = ValidateService<S>;

    fn layer(&self, inner: S) -> ValidateService<S> {
        ValidateService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ValidateLayer`] makes.
#[derive(Clone)]
pub struct ValidateService<S> {
    inner: S,
    layer: ValidateLayer,
}

impl<S, B, R> tower_service::Service<Request<B>> for ValidateService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        // What the check needs, read now: the request itself is not held
        // across the wait (its body need not be `Sync`).
        let asked = layer.asked(&request);
        Box::pin(async move {
            match layer.check(asked).await {
                Ok(identity) => {
                    request.extensions_mut().insert(Identity::clone(&identity));
                    inner.call(request).await
                }
                Err(refusal) => Ok(refused(&refusal)),
            }
        })
    }
}

/// What a request asks to be checked with.
struct Asked {
    presented: Result<String, sts_api::credential::AuthError>,
    source: Option<IpAddr>,
    method: http::Method,
    path: String,
}

impl ValidateLayer {
    fn asked<B>(&self, request: &Request<B>) -> Asked {
        Asked {
            presented: sts_api::credential::presented(request.headers()).map(str::to_owned),
            source: self
                .source
                .as_ref()
                .and_then(|source| source(request.extensions())),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        }
    }

    async fn check(&self, asked: Asked) -> Result<Arc<Identity>, Refusal> {
        let presented = asked.presented.map_err(Refusal::Invalid)?;
        let context = Context {
            source: asked.source,
            audience: self.audience.as_deref(),
            route: Some((asked.method.as_str(), &asked.path)),
        };
        let identity = self.validator.validate(&presented, &context).await?;
        if let Some(missing) = self.roles.iter().find(|role| !identity.has_role(role)) {
            self.validator.refused_role(&identity, asked.source);
            return Err(Refusal::MissingRole(missing.clone()));
        }
        Ok(identity)
    }
}

/// The answer to a refused request: its status, and the headers that say
/// what to do about it; no body (nothing about the token is echoed).
fn refused<R: Default>(refusal: &Refusal) -> Response<R> {
    let mut response = Response::new(R::default());
    *response.status_mut() = refusal.status();
    let headers = response.headers_mut();
    match refusal {
        Refusal::Invalid(_) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey realm=\"sts\""),
            );
        }
        Refusal::RateLimited {
            retry_after: Some(wait),
        } => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        _ => {}
    }
    response
}

#[cfg(feature = "axum")]
mod extract {
    //! The axum extractor: the [`Identity`] the layer put into the request.

    use axum::extract::FromRequestParts;
    use http::{StatusCode, request::Parts};

    use crate::Identity;

    impl<S: Send + Sync> FromRequestParts<S> for Identity {
        type Rejection = StatusCode;

        /// The identity the layer found; a handler reached without the
        /// layer in front is a server's mistake (500), never a pass.
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Identity, StatusCode> {
            parts
                .extensions
                .get::<Identity>()
                .cloned()
                .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
