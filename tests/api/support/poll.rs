//! `eventually`: how tests wait for something to become true, polling
//! within a bound instead of sleeping.

use std::time::Duration;

/// How long [`eventually`] waits before it gives up.
const EVENTUALLY_WITHIN: Duration = Duration::from_secs(20);
/// How often it asks.
const EVENTUALLY_EVERY: Duration = Duration::from_millis(10);

/// Asks `attempt` every 10 ms until it gives a value, for up to 20 s; fails
/// the test naming `what` if it never does. The one bounded poll, for what
/// a test cannot be told about: another process's state (a replica's
/// readiness, its descriptors), a lock sled's own threads release.
pub async fn eventually_some<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within_some(EVENTUALLY_WITHIN, what, attempt).await
}

/// [`eventually_some`] with a bound of the test's own: for a test whose
/// point is how soon something happens (a use recorded within 2 s).
pub async fn within_some<T, F, Fut>(bound: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {bound:?}"
        );
        tokio::time::sleep(EVENTUALLY_EVERY).await;
    }
}

/// [`within_some`] for a condition.
pub async fn within<F, Fut>(bound: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within_some(bound, what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// [`eventually_some`] for a condition.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}
