//! RFC 9112 section 3.2: an HTTP/1.1 request without exactly one `Host`
//! header is answered 400, as every conforming server does. hyper leaves
//! this to the application. A tower layer over the HTTP routes, written out
//! (not `middleware::from_fn`) so a request that passes costs no allocation.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::response::{IntoResponse, Response};
use http::{Request, Version, header::HOST};
use tower::{Layer, Service};

use crate::{error::Error, model::FieldError};

#[derive(Clone, Copy, Default)]
pub struct RequireHostLayer;

impl<S> Layer<S> for RequireHostLayer {
    type Service = RequireHost<S>;

    fn layer(&self, inner: S) -> RequireHost<S> {
        RequireHost { inner }
    }
}

#[derive(Clone)]
pub struct RequireHost<S> {
    inner: S,
}

/// Whether `request` breaks the rule: HTTP/1.1 with no `Host`, or several.
fn lacks_host<B>(request: &Request<B>) -> bool {
    if request.version() != Version::HTTP_11 {
        return false;
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    hosts.next().is_none() || hosts.next().is_some()
}

impl<S, B> Service<Request<B>> for RequireHost<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Checked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Checked<S::Future> {
        if lacks_host(&request) {
            let refused = Error::from(FieldError::new(
                "Host",
                "an HTTP/1.1 request must carry exactly one Host header (RFC 9112, section 3.2)",
            ));
            return Checked::Refused {
                response: Some(refused.into_response()),
            };
        }
        Checked::Passed {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's future, or the 400 already decided.
    #[project = CheckedProjection]
    pub enum Checked<F> {
        Refused { response: Option<Response> },
        Passed { #[pin] inner: F },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Checked<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckedProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a refused request is answered once"))),
            CheckedProjection::Passed { inner } => inner.poll(cx),
        }
    }
}
