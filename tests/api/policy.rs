//! The operator's token lifetime policy: a maximum every new token, new
//! expiration and new secret obeys, and a default for creates without an
//! expiration. Tokens made before the policy keep working and can still be
//! disabled, renamed and given an expiration.

use std::time::{Duration, UNIX_EPOCH};

use sts::{
    clock::Clock,
    config::{LifetimePolicy, ServiceConfig},
};
use tonic::Code;

use crate::support::{
    TestRouter, assert_code, create_request, server_config, spawn_app_with, spawn_router_with,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn policy(max: Option<u64>, default: Option<u64>) -> ServiceConfig {
    ServiceConfig {
        lifetime: LifetimePolicy::new(max.map(|d| DAY * d as u32), default.map(|d| DAY * d as u32))
            .unwrap(),
        ..ServiceConfig::default()
    }
}

impl TestRouter {
    /// Epoch milliseconds `days` from the router's (manual) clock's now.
    fn in_days(&self, days: u64) -> u128 {
        (self.clock.now() + DAY * days as u32)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    }
}

#[tokio::test]
async fn a_create_beyond_the_maximum_or_without_an_expiration_is_refused_naming_the_limit() {
    let app = spawn_router_with(policy(Some(90), None)).await;
    let create = |body: String| {
        let app = &app;
        async move { app.admin("POST", "/api/security/tokens", &body).await }
    };
    let never = create(r#"{"name": "ci", "roles": ["r"]}"#.into()).await;
    assert_eq!(never.status, 400);
    let message = never.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("expiryDate"), "{message}");
    assert!(
        message.contains("maximum token lifetime is 90d"),
        "{message}"
    );
    let beyond = create(format!(
        r#"{{"name": "ci", "roles": ["r"], "expiryDate": {}}}"#,
        app.in_days(91)
    ))
    .await;
    assert_eq!(beyond.status, 400);
    assert!(beyond.json()["message"].as_str().unwrap().contains("90d"));
    let within = create(format!(
        r#"{{"name": "ci", "roles": ["r"], "expiryDate": {}}}"#,
        app.in_days(90)
    ))
    .await;
    assert!(within.status.is_success(), "{}", within.text());
    // Refused creates changed nothing.
    let listed = app.admin("GET", "/api/security/tokens", "").await.json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the admin and `within`"
    );
}

#[tokio::test]
async fn the_default_lifetime_is_given_to_a_create_without_an_expiration() {
    let app = spawn_router_with(policy(Some(90), Some(30))).await;
    let created = app
        .admin(
            "POST",
            "/api/security/tokens",
            r#"{"name": "ci", "roles": ["r"]}"#,
        )
        .await;
    assert!(created.status.is_success(), "{}", created.text());
    assert_eq!(created.json()["expiration"], app.in_days(30) as u64);
    // An explicit one is kept.
    let body = format!(
        r#"{{"name": "cd", "roles": ["r"], "expiryDate": {}}}"#,
        app.in_days(5)
    );
    let created = app.admin("POST", "/api/security/tokens", &body).await;
    assert_eq!(created.json()["expiration"], app.in_days(5) as u64);
    // Without a maximum, the default applies all the same.
    let app = spawn_router_with(policy(None, Some(7))).await;
    let created = app
        .admin(
            "POST",
            "/api/security/tokens",
            r#"{"name": "ci", "roles": ["r"]}"#,
        )
        .await;
    assert_eq!(created.json()["expiration"], app.in_days(7) as u64);
}

#[tokio::test]
async fn tokens_from_before_the_policy_keep_working_and_are_held_to_it_when_changed() {
    let app = spawn_router_with(policy(Some(90), None)).await;
    // Made before the policy (straight through the store): never expires.
    let (legacy, id) = app.create("legacy", &["r"]).await;
    let path = format!("/api/security/tokens/{id}");
    let key = [("x-api-key", legacy.as_bytes())];
    assert_eq!(
        app.call("GET", "/api/server/status", &key, "").await.status,
        200
    );

    // What takes nothing away from the policy stays possible.
    for patch in [
        r#"{"name": "renamed"}"#,
        r#"{"disabled": true}"#,
        r#"{"disabled": false}"#,
    ] {
        let answer = app.admin("PATCH", &path, patch).await;
        assert_eq!(answer.status, 200, "{patch}: {}", answer.text());
    }
    // A new expiration obeys it; so does a new secret.
    for patch in [
        r#"{"expiryDate": null}"#.to_string(),
        format!(r#"{{"expiryDate": {}}}"#, app.in_days(120)),
    ] {
        let answer = app.admin("PATCH", &path, &patch).await;
        assert_eq!(answer.status, 400, "{patch}");
        assert!(answer.json()["message"].as_str().unwrap().contains("90d"));
    }
    let rotate = app.admin("POST", &format!("{path}/rotate"), "").await;
    assert_eq!(rotate.status, 400, "{}", rotate.text());
    assert!(
        rotate.json()["message"]
            .as_str()
            .unwrap()
            .contains("expiryDate")
    );
    // Still valid, unchanged by the refusals.
    assert_eq!(
        app.call("GET", "/api/server/status", &key, "").await.status,
        200
    );

    let patch = format!(r#"{{"expiryDate": {}}}"#, app.in_days(60));
    assert_eq!(app.admin("PATCH", &path, &patch).await.status, 200);
    let rotate = app.admin("POST", &format!("{path}/rotate"), "").await;
    assert_eq!(rotate.status, 200, "{}", rotate.text());
}

#[tokio::test]
async fn grpc_creates_are_held_to_the_same_policy() {
    let app = spawn_app_with(policy(Some(1), None), server_config()).await;
    let status = assert_code(
        app.client
            .clone()
            .create(app.admin(create_request("ci", &["r"])))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("maximum token lifetime is 1d"),
        "{status:?}"
    );
    let (_, created) = app.create_expiring_in("ci", &["r"], 3600).await;
    assert!(created.expiration.is_some());
}

#[test]
fn a_policy_that_could_never_be_met_is_refused() {
    assert!(LifetimePolicy::new(Some(DAY), Some(DAY * 2)).is_err());
    assert!(LifetimePolicy::new(Some(Duration::ZERO), None).is_err());
    assert!(LifetimePolicy::new(None, Some(Duration::ZERO)).is_err());
    assert!(LifetimePolicy::new(Some(DAY * 2), Some(DAY)).is_ok());
}

#[tokio::test]
async fn tokens_over_the_policy_are_listed_on_request_over_rest_and_the_cli() {
    let app = spawn_router_with(policy(Some(90), None)).await;
    let (_, legacy) = app.create("legacy", &["r"]).await;
    let far = app.clock.now() + DAY * 120;
    let (_, far) = app.create_expiring("far", &["r"], Some(far)).await;
    let body = format!(
        r#"{{"name": "within", "roles": ["r"], "expiryDate": {}}}"#,
        app.in_days(30)
    );
    assert!(
        app.admin("POST", "/api/security/tokens", &body)
            .await
            .status
            .is_success()
    );
    let listed = app
        .admin("GET", "/api/security/tokens?overPolicy=true", "")
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let mut names: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    // The bootstrap admin token never expires either.
    assert_eq!(names, ["far", "legacy", "test-admin"], "{legacy} {far}");

    // A server without a maximum says so rather than answering nothing.
    let app = crate::support::spawn_router().await;
    let listed = app
        .admin("GET", "/api/security/tokens?overPolicy=true", "")
        .await;
    assert_eq!(listed.status, 400);
    assert!(
        listed.json()["message"]
            .as_str()
            .unwrap()
            .contains("--max-token-lifetime")
    );
}

#[tokio::test]
async fn the_cli_lists_tokens_over_the_policy() {
    let app = spawn_app_with(policy(Some(1), None), server_config()).await;
    app.create_expiring_in("within", &["r"], 3600).await;
    let terminal = crate::cli::Terminal::new();
    terminal.log_in(&app).await;
    let names =
        crate::cli_lifecycle::names(&terminal, &["service-token", "list", "--over-policy"]).await;
    // Only the bootstrap admin token, which never expires.
    assert_eq!(names.len(), 1, "{names:?}");
    let all = crate::cli_lifecycle::names(&terminal, &["service-token", "list"]).await;
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn tokens_expired_long_enough_ago_are_purged_and_counted() {
    let service = ServiceConfig {
        purge_expired_after: Some(DAY),
        token_summary_interval: Duration::from_millis(20),
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (expiring, _) = app.create_expiring_in("expiring", &["r"], 60).await;
    let (kept, _) = app.create("kept", &["r"]).await;
    // Expired a minute ago: kept (the counts, taken in the same pass as
    // the purge, see it), and says so.
    app.clock.advance(Duration::from_secs(61));
    crate::support::eventually("the expired token is counted", || async {
        app.metric(r#"sts_tokens{state="expired"}"#).await == 1.0
    })
    .await;
    let answer = app.validate(&expiring).await;
    assert_eq!(answer.reason(), sts::proto::InvalidReason::Expired);
    // Expired more than a day ago: gone.
    app.clock.advance(DAY);
    crate::support::eventually("the expired token is purged", || async {
        app.metric(r#"sts_management_calls_total{rpc="Purge",status="OK",caller="system",transport="internal"}"#)
            .await
            == 1.0
    })
    .await;
    assert_eq!(
        app.validate(&expiring).await.reason(),
        sts::proto::InvalidReason::NotFound
    );
    assert!(app.validate(&kept).await.valid);
    assert_eq!(app.list_all().await.len(), 2, "the admin and kept");
}
