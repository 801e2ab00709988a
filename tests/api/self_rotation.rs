//! A token rotating itself (gRPC `RotateSelf`, REST, `sts service-token
//! rotate --self`): renewed for its lifetime within policy and its owners,
//! one previous secret at a time, one winner of two at once on both
//! stores, and a year of daily rotations under a 90-day maximum without
//! the admin.

use std::{sync::Arc, time::Duration};

use sts::{
    config::{LifetimePolicy, ServiceConfig},
    proto::{RotateSelfRequest, RotateSelfResponse, ServiceToken},
};
use tonic::{Code, Status};

use crate::cli::Terminal;
use crate::support::{
    ReadAnswer, TestApp, assert_code, create_request, server_config, spawn_app, spawn_app_with,
    with_key,
};

const DAY: Duration = Duration::from_secs(86_400);

fn grace(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn rotate_self(
    app: &TestApp,
    secret: &str,
    grace_seconds: i64,
) -> Result<RotateSelfResponse, Status> {
    let request = RotateSelfRequest {
        grace_period: grace(grace_seconds),
        expiration: None,
    };
    let answer = app
        .client
        .clone()
        .rotate_self(with_key(secret, request))
        .await;
    answer.map(|r| r.into_inner())
}

fn seconds(token: &ServiceToken) -> i64 {
    token.expiration.as_ref().unwrap().seconds
}

fn policy(max_days: u32, max_age_days: Option<u32>) -> ServiceConfig {
    ServiceConfig {
        lifetime: LifetimePolicy::new(Some(DAY * max_days), None)
            .unwrap()
            .with_max_age(max_age_days.map(|d| DAY * d))
            .unwrap(),
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn a_token_rotates_itself_keeping_one_previous_secret_for_its_grace() {
    let app = spawn_app().await;
    let (first, made) = app.create_expiring_in("ci", &["deploy"], 30 * 86_400).await;
    app.clock.advance(DAY);
    let rotated = rotate_self(&app, &first, 60).await.unwrap();
    let second = rotated.token;
    let renewed = rotated.service_token.unwrap();
    assert_eq!(renewed.id, made.id);
    // Its lifetime (30 days, as made) from now.
    assert_eq!(seconds(&renewed), seconds(&made) + 86_400);
    assert!(app.validate(&second).await.valid);
    assert!(app.validate(&first).await.valid, "in its grace");

    // The rotated-out secret manages nothing, itself included.
    let status = assert_code(rotate_self(&app, &first, 0).await, Code::Unauthenticated);
    assert!(status.message().contains("rotated"), "{}", status.message());
    // One previous secret at a time: no retry loop ends a live one.
    let status = assert_code(
        rotate_self(&app, &second, 0).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("grace"), "{}", status.message());
    assert!(app.validate(&first).await.valid);

    app.clock.advance(Duration::from_secs(61));
    assert!(!app.validate(&first).await.valid, "its grace is over");
    let third = rotate_self(&app, &second, 0).await.unwrap().token;
    assert!(!app.validate(&second).await.valid, "grace 0 ends it now");
    assert!(app.validate(&third).await.valid);

    let metrics = app.metrics_text().await;
    for line in [
        r#"sts_management_calls_total{rpc="RotateSelf",status="OK",caller="self",transport="grpc"} 2"#,
        r#"sts_management_calls_total{rpc="RotateSelf",status="FAILED_PRECONDITION",caller="self",transport="grpc"} 1"#,
        r#"sts_management_calls_total{rpc="RotateSelf",status="UNAUTHENTICATED",caller="self",transport="grpc"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_ci_job_rotating_its_token_daily_for_a_year_under_a_90_day_maximum_never_needs_the_admin()
{
    let app = spawn_app_with(policy(90, None), server_config()).await;
    let (mut secret, made) = app
        .create_expiring_in("nightly", &["deploy"], 90 * 86_400)
        .await;
    let mut expiration = seconds(&made);
    for day in 1..=365 {
        app.clock.advance(DAY);
        let rotated = rotate_self(&app, &secret, 0)
            .await
            .unwrap_or_else(|e| panic!("day {day}: {e:?}"));
        let renewed = rotated.service_token.unwrap();
        // Ninety days from now, every day: a day later than yesterday's.
        assert_eq!(seconds(&renewed), expiration + 86_400, "day {day}");
        expiration = seconds(&renewed);
        assert!(
            !app.validate(&secret).await.valid,
            "day {day}: the old secret ended"
        );
        secret = rotated.token;
        assert!(app.validate(&secret).await.valid, "day {day}");
    }
    // The admin made it, and did nothing else.
    let metrics = app.metrics_text().await;
    let admin_calls: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sts_management_calls_total") && l.contains(r#"caller="admin""#))
        .collect();
    assert_eq!(
        admin_calls,
        [
            r#"sts_management_calls_total{rpc="Create",status="OK",caller="admin",transport="grpc"} 1"#
        ]
    );
    assert!(
        metrics.contains(
            r#"sts_management_calls_total{rpc="RotateSelf",status="OK",caller="self",transport="grpc"} 365"#
        )
    );
}

#[tokio::test]
async fn a_renewal_stays_within_the_maximum_lifetime_age_and_its_managers_expiration() {
    let app = spawn_app_with(policy(90, Some(120)), server_config()).await;
    let (secret, made) = app
        .create_expiring_in("aging", &["deploy"], 90 * 86_400)
        .await;
    let created = made.created_at.as_ref().unwrap().seconds;
    // Asked for more than the maximum lifetime: refused, by name.
    let too_late = RotateSelfRequest {
        grace_period: grace(0),
        expiration: Some(prost_types::Timestamp {
            seconds: app.clock.now_millis() / 1000 + 91 * 86_400,
            nanos: 0,
        }),
    };
    let refused = app
        .client
        .clone()
        .rotate_self(with_key(&secret, too_late))
        .await;
    let status = assert_code(refused, Code::InvalidArgument);
    assert!(
        status.message().contains("--max-token-lifetime"),
        "{}",
        status.message()
    );
    // Sixty days on, the default renewal is cut to the maximum age.
    app.clock.advance(DAY * 60);
    let rotated = rotate_self(&app, &secret, 0).await.unwrap();
    assert_eq!(
        seconds(rotated.service_token.as_ref().unwrap()),
        created + 120 * 86_400
    );
    // Renewed again near its end, it gains nothing; then it expires, for
    // good: no rotation outlives the maximum age.
    app.clock.advance(DAY * 59);
    let again = rotate_self(&app, &rotated.token, 0).await.unwrap();
    assert_eq!(
        seconds(again.service_token.as_ref().unwrap()),
        created + 120 * 86_400
    );
    app.clock.advance(DAY);
    let status = assert_code(
        rotate_self(&app, &again.token, 0).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("expired"), "{}", status.message());

    // A manager's token renews no later than its manager.
    let (manager, _) = app
        .create_expiring_in("team", &["token-manager", "deploy"], 10 * 86_400)
        .await;
    let made = app
        .client
        .clone()
        .create(with_key(&manager, create_request("job", &["deploy"])))
        .await
        .unwrap()
        .into_inner();
    let managed = made.service_token.unwrap();
    app.clock.advance(DAY);
    let rotated = rotate_self(&app, &made.token, 0).await.unwrap();
    assert_eq!(
        seconds(rotated.service_token.as_ref().unwrap()),
        seconds(&managed)
    );
}

/// Eight calls at once with one secret and no grace: exactly one wins.
async fn one_winner_of_eight(app: &TestApp) {
    let (secret, _) = app.create("contested", &["deploy"]).await;
    let calls = (0..8).map(|_| {
        let (client, secret) = (app.client.clone(), secret.clone());
        tokio::spawn(async move {
            let request = RotateSelfRequest {
                grace_period: grace(0),
                expiration: None,
            };
            client.clone().rotate_self(with_key(&secret, request)).await
        })
    });
    let mut winners = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(answer) => winners.push(answer.into_inner().token),
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one winner");
    assert!(app.validate(&winners[0]).await.valid);
    assert!(!app.validate(&secret).await.valid);
}

#[tokio::test]
async fn of_concurrent_self_rotations_exactly_one_wins_on_sled_and_postgres() {
    one_winner_of_eight(&spawn_app().await).await;
    let Some(database) = crate::support::pg::TestDatabase::create("self_rotation").await else {
        return;
    };
    let url = sts::config::StoreUrl::parse(&database.url).unwrap();
    let store = sts::store::PostgresStore::connect(&url).await.unwrap();
    let app = crate::support::spawn_app_on(tempfile::tempdir().unwrap(), Arc::new(store)).await;
    one_winner_of_eight(&app).await;
    app.stop().await;
    database.drop().await;
}

#[tokio::test]
async fn rest_and_the_cli_rotate_the_calling_token_and_the_cli_keeps_its_context() {
    let app = spawn_app().await;
    let (secret, made) = app.create("ci", &["deploy"]).await;
    let rest = app.rest();
    let path = "/api/security/tokens/self/rotate";
    let unauthenticated = rest.post(path).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let rotated = rest
        .post(path)
        .header("x-api-key", &secret)
        .body(r#"{"gracePeriodSeconds": 0}"#)
        .json_body()
        .await;
    assert_eq!(rotated["id"], made.id, "{rotated}");
    let second = rotated["token"].as_str().unwrap().to_owned();
    assert!(app.validate(&second).await.valid);
    assert!(!app.validate(&secret).await.valid);

    let terminal = Terminal::new();
    terminal.log_in_with(&app, &second).await;
    let run = terminal
        .sts(&[
            "service-token",
            "rotate",
            "--self",
            "--grace",
            "0s",
            "-o",
            "json",
        ])
        .await
        .ok();
    let third = run.json()["service-token"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.validate(&third).await.valid);
    assert!(!app.validate(&second).await.valid);
    // The context now holds the new secret, still readable by its owner only.
    let contexts = std::fs::read_to_string(terminal.contexts()).unwrap();
    assert!(contexts.contains(&third) && !contexts.contains(&second));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(terminal.contexts())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // And the next command runs with it.
    terminal
        .sts(&["service-token", "rotate", "--self", "--grace", "0s"])
        .await
        .ok();
}
