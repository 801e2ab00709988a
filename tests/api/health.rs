//! gRPC health: SERVING while up, NOT_SERVING from the start of shutdown;
//! shutdown lets in-flight calls finish and flushes the store.

use std::sync::{Arc, atomic::Ordering};

use sts::server::{LIVENESS, SERVICE_NAME};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    support::faults::FaultyStore,
    support::{channel, create_request, restart, spawn_app, spawn_app_on},
};

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn overall_and_service_health_are_serving() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", SERVICE_NAME, LIVENESS] {
        let response = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn liveness_stays_serving_while_the_store_is_away_and_readiness_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    store.failing.store(true, Ordering::SeqCst);
    crate::support::eventually("not ready while the store fails", || {
        let mut health = health.clone();
        async move {
            let answer = health
                .check(check(SERVICE_NAME))
                .await
                .unwrap()
                .into_inner();
            answer.status() == ServingStatus::NotServing
        }
    })
    .await;
    let answer = health.check(check(LIVENESS)).await.unwrap().into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);
    store.failing.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn watchers_see_not_serving_when_shutdown_begins() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);
    let mut watch = health
        .watch(check(SERVICE_NAME))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let (server, _dir) = app.begin_shutdown();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // The watch stream ends rather than holding the shutdown open.
    assert!(watch.message().await.map(|m| m.is_none()).unwrap_or(true));
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    store.gated.store(true, Ordering::SeqCst);

    let mut client = app.client.clone();
    let request = app.admin(create_request("in-flight", &["r"]));
    let in_flight = tokio::spawn(async move { client.create(request).await });
    store.entered.acquire().await.unwrap().forget();

    let (server, dir) = app.begin_shutdown();
    store.gate.add_permits(1);
    let created = in_flight
        .await
        .unwrap()
        .expect("the in-flight Create completes");
    server.await.unwrap().unwrap();
    drop(store);

    let app = restart(dir).await;
    assert!(app.validate(&created.into_inner().token).await.valid);
}
