//! Request bodies, bounded in time as well as in size: [`Deadline`], which
//! `Front` puts around every request's body (gRPC's too), and [`read`],
//! which handlers call only after the credential in the headers was
//! judged, so an unauthenticated caller never gets a body read at all.
//!
//! Why a deadline for the whole body, not per chunk: a peer that sends one
//! byte every little while would pass any per-chunk timer and hold its
//! connection (and a descriptor) for as long as it likes.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError};
use tokio::time::{Instant, Sleep};

use crate::{error::Error, model::FieldError};

/// A body that must arrive whole by a fixed time: past it, the next poll
/// that would wait fails with [`BodyTimeout`]. The timer is made only when
/// the body is not all there at once, which a small request always is, so
/// the common case costs no timer at all.
pub struct Deadline<B> {
    inner: B,
    at: Instant,
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    /// `inner`, due `after` from `started` (when the request arrived).
    pub fn new(inner: B, started: std::time::Instant, after: Duration) -> Deadline<B> {
        let at = Instant::from_std(started)
            .checked_add(after)
            .unwrap_or_else(far_future);
        Deadline {
            inner,
            at,
            after,
            timer: None,
        }
    }
}

/// What tokio's own `Instant::far_future` is (about 30 years ahead).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// The body did not arrive whole in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
pub struct BodyTimeout(pub Duration);

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.after))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The whole of a body `Front` bounded to `limit` bytes and its deadline:
/// 413 past the size, 408 past the time, 400 if the peer broke it off.
pub async fn read(body: Body, limit: usize) -> Result<Bytes, Error> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(unreadable(&error.into_inner(), limit)),
    }
}

fn unreadable(error: &axum::BoxError, limit: usize) -> Error {
    // Limited wraps the inner body's errors in a box of their own.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return Error::TooLarge { limit };
        }
        if let Some(BodyTimeout(after)) = error.downcast_ref::<BodyTimeout>() {
            return Error::BodyTimeout(*after);
        }
        cause = error.source();
    }
    FieldError::new("body", "could not be read: the client broke it off").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never sends anything.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline_with_the_time_it_had() {
        let after = Duration::from_secs(30);
        let body = Body::new(Deadline::new(Silent, std::time::Instant::now(), after));
        let read = tokio::spawn(read(body, 1024));
        tokio::time::sleep(after - Duration::from_millis(1)).await;
        assert!(!read.is_finished(), "not before the deadline");
        let error = read.await.unwrap().unwrap_err();
        assert!(
            matches!(error, Error::BodyTimeout(d) if d == after),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the request body did not arrive within 30s: send it whole, at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_there_at_once_is_read_and_an_oversized_one_refused() {
        let now = std::time::Instant::now();
        let after = Duration::from_secs(1);
        let body = Body::new(Deadline::new(Body::from("{}"), now, after));
        assert_eq!(read(body, 16).await.unwrap(), Bytes::from("{}"));
        let big = Body::new(http_body_util::Limited::new(
            Deadline::new(Body::from(vec![b'x'; 17]), now, after),
            16,
        ));
        assert!(matches!(
            read(big, 16).await,
            Err(Error::TooLarge { limit: 16 })
        ));
    }
}
