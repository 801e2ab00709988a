//! Last-used times: every successful check on any path records one, at most
//! one store write per token per resolution, written off the request path,
//! and kept across a graceful restart.

use crate::support::{within, within_some};
use std::time::Duration;
use sts::model::CheckContext;

use sts::{config::ServiceConfig, proto::GetRequest};

use crate::support::{TestRouter, spawn_app_with, spawn_router_with};

fn resolution(every: Duration) -> ServiceConfig {
    ServiceConfig {
        last_used_resolution: every,
        ..ServiceConfig::default()
    }
}

const WRITES: &str = "sts_last_used_writes_total";

impl TestRouter {
    /// Token `id`'s last use as REST shows it (epoch ms).
    async fn last_used(&self, id: u64) -> Option<i64> {
        let token = self
            .admin("GET", &format!("/api/security/tokens/{id}"), "")
            .await
            .json();
        token["lastUsedAt"].as_i64()
    }
}

/// The promise a client may rely on: with a 1 s resolution, a use is in
/// `Get` within 2 s (one window to be due, one for the batch).
#[tokio::test]
async fn with_a_one_second_resolution_a_use_shows_in_get_within_two_seconds() {
    let app = spawn_app_with(
        resolution(Duration::from_secs(1)),
        crate::support::server_config(),
    )
    .await;
    let (secret, created) = app.create("ci", &["reader"]).await;
    assert_eq!(created.last_used_at, None, "never used");
    assert!(app.validate(&secret).await.valid);
    within(Duration::from_secs(2), "the use recorded", || async {
        let token = app
            .client
            .clone()
            .get(app.admin(GetRequest { id: created.id }))
            .await
            .unwrap()
            .into_inner()
            .service_token
            .unwrap();
        token.last_used_at.is_some()
    })
    .await;
}

#[tokio::test]
async fn every_path_that_checks_a_token_records_its_use() {
    let app = spawn_router_with(resolution(Duration::from_secs(3600))).await;
    let (status, status_id) = app.create("status", &["r"]).await;
    let (auth, auth_id) = app.create("auth", &["r"]).await;
    let (rest, rest_id) = app.create("rest", &["stackstate-admin"]).await;
    let (grpc, grpc_id) = app.create("grpc", &["r"]).await;
    let (idle, idle_id) = app.create("idle", &["r"]).await;
    for (path, key) in [
        ("/api/server/status", &status),
        ("/api/auth", &auth),
        ("/api/security/tokens", &rest),
    ] {
        let answer = app
            .call("GET", path, &[("x-api-key", key.as_bytes())], "")
            .await;
        assert_eq!(answer.status, 200, "{path}");
    }
    assert!(matches!(
        app.service
            .validate(&grpc, &CheckContext::default())
            .await
            .unwrap(),
        sts::service::Validation::Valid(..)
    ));
    // A refused check records nothing.
    app.service
        .validate(&idle.replace('s', "t"), &CheckContext::default())
        .await
        .unwrap();
    app.service.write_last_used().await;
    let now = app.clock.now_millis();
    for id in [status_id, auth_id, rest_id, grpc_id] {
        assert_eq!(app.last_used(id).await, Some(now), "token {id}");
    }
    assert_eq!(app.last_used(idle_id).await, None);
}

#[tokio::test]
async fn ten_thousand_validations_in_one_window_cost_one_write() {
    let app = spawn_router_with(resolution(Duration::from_secs(60))).await;
    let (secret, id) = app.create("hot", &["r"]).await;
    let writes = app.metric(WRITES).await;
    for _ in 0..10_000 {
        app.service
            .validate(&secret, &CheckContext::default())
            .await
            .unwrap();
    }
    app.service.write_last_used().await;
    assert_eq!(
        app.metric(WRITES).await,
        writes + 1.0,
        "one write for the window"
    );
    let first = app.last_used(id).await.unwrap();
    // Still inside the window: nothing more to write.
    app.clock.advance(Duration::from_secs(30));
    for _ in 0..1_000 {
        app.service
            .validate(&secret, &CheckContext::default())
            .await
            .unwrap();
    }
    app.service.write_last_used().await;
    // (The admin token's own use, by the REST reads above, is one more.)
    let admin = 1.0;
    assert_eq!(app.metric(WRITES).await, writes + 1.0 + admin);
    assert_eq!(app.last_used(id).await, Some(first));
    // A new window: one more write, and a later time.
    app.clock.advance(Duration::from_secs(31));
    app.service
        .validate(&secret, &CheckContext::default())
        .await
        .unwrap();
    app.service.write_last_used().await;
    assert!(app.last_used(id).await.unwrap() > first);
}

#[tokio::test]
async fn sources_cost_one_write_per_window_too_and_a_new_one_is_queued_at_once() {
    let app = spawn_router_with(resolution(Duration::from_secs(60))).await;
    let (secret, _) = app.create("hot", &["r"]).await;
    let from = |address: &str| CheckContext {
        source: Some(address.parse().unwrap()),
        ..CheckContext::default()
    };
    let (a, b) = (from("10.0.0.1"), from("10.0.0.2"));
    let writes = app.metric(WRITES).await;
    for i in 0..10_000 {
        let context = if i % 2 == 0 { &a } else { &b };
        app.service.validate(&secret, context).await.unwrap();
    }
    app.service.write_last_used().await;
    assert_eq!(app.metric(WRITES).await, writes + 1.0, "one batch");
    // Inside the window, a source already noted costs nothing; a new one
    // is a use to write.
    app.clock.advance(Duration::from_secs(10));
    for _ in 0..1_000 {
        app.service.validate(&secret, &a).await.unwrap();
    }
    app.service.write_last_used().await;
    assert_eq!(
        app.metric(WRITES).await,
        writes + 1.0,
        "nothing new to write"
    );
    app.service
        .validate(&secret, &from("10.0.0.3"))
        .await
        .unwrap();
    app.service.write_last_used().await;
    assert_eq!(app.metric(WRITES).await, writes + 2.0);
}

#[tokio::test]
async fn a_zero_resolution_turns_tracking_off() {
    let app = spawn_router_with(resolution(Duration::ZERO)).await;
    let (secret, id) = app.create("untracked", &["r"]).await;
    app.service
        .validate(&secret, &CheckContext::default())
        .await
        .unwrap();
    app.service.write_last_used().await;
    assert_eq!(app.last_used(id).await, None);
    assert_eq!(app.metric(WRITES).await, 0.0);
}

#[tokio::test]
async fn a_graceful_stop_writes_what_is_pending() {
    let app = spawn_app_with(
        resolution(Duration::from_secs(3600)),
        crate::support::server_config(),
    )
    .await;
    let (secret, created) = app.create("ci", &["reader"]).await;
    assert!(app.validate(&secret).await.valid);
    let app = crate::support::restart(app.stop().await).await;
    let tokens = app.list_all().await;
    let token = tokens.iter().find(|t| t.id == created.id).unwrap();
    assert!(token.last_used_at.is_some(), "written at shutdown");
}

/// The real binary with `STS_LAST_USED_RESOLUTION=1s`: a use is in `Get`
/// within 2 s, and once its batch is written a `kill -9` does not take it
/// away (a crash loses at most the window not yet written).
#[tokio::test]
async fn the_server_flag_sets_the_resolution_and_a_written_use_survives_a_crash() {
    use sts::proto::token_service_client::TokenServiceClient;

    use crate::{
        support::process::{ServerProcess, bootstrap},
        support::{channel, create_request, validate_on, with_key},
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    let env = [("STS_LAST_USED_RESOLUTION", "1s")];
    let server = ServerProcess::start_with(dir.path(), &env).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    let created = client
        .clone()
        .create(with_key(&admin, create_request("ci", &["r"])))
        .await
        .unwrap()
        .into_inner();
    let id = created.service_token.unwrap().id;
    assert!(validate_on(&client, &created.token).await.unwrap().valid);
    let get = |client: TokenServiceClient<tonic::transport::Channel>| {
        let request = with_key(&admin, GetRequest { id });
        async move {
            let mut client = client;
            client
                .get(request)
                .await
                .unwrap()
                .into_inner()
                .service_token
                .unwrap()
        }
    };
    let last_used = within_some(Duration::from_secs(2), "the use recorded", || async {
        get(client.clone()).await.last_used_at
    })
    .await;
    // `Get` reads sled, which shows a batch's write before the sync that
    // makes it durable has returned; the batch is counted after it has.
    // Two uses: the admin's (Create) and this token's, queued milliseconds
    // apart; the admin's next is a whole window later.
    let rest = server.rest();
    within(Duration::from_secs(5), "the batch written", || async {
        rest.metric(WRITES).await >= 2.0
    })
    .await;
    server.kill().await.unwrap();
    let server = ServerProcess::start_with(dir.path(), &env).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    assert_eq!(get(client).await.last_used_at, Some(last_used));
}
