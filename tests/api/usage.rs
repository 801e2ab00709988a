//! A token's usage over time: its checks counted per UTC day by outcome,
//! written with the last-used batches, shown by gRPC `GetUsage`, REST and
//! `sts service-token usage`; off with last-used tracking.

use std::time::Duration;

use sts::proto::{CreateRequest, DailyUsage, GetUsageRequest, ValidateRequest};
use tonic::Code;

use crate::{
    cli::Terminal,
    support::{
        ReadAnswer, TestApp, assert_code, create_request, rate_limit, server_config, spawn_app,
        spawn_app_with,
    },
};

impl TestApp {
    async fn usage(&self, id: u64, days: u32) -> Result<Vec<DailyUsage>, tonic::Status> {
        self.client
            .clone()
            .get_usage(self.admin(GetUsageRequest { id, days }))
            .await
            .map(|answer| answer.into_inner().days)
    }

    async fn validate_for(&self, token: &str, audience: &str) -> bool {
        self.client
            .clone()
            .validate(ValidateRequest {
                token: token.into(),
                audience: audience.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .valid
    }
}

fn day(date: String, counts: [u64; 8]) -> DailyUsage {
    let [
        valid,
        rate_limited,
        expired,
        disabled,
        source_not_allowed,
        audience_not_allowed,
        route_not_allowed,
        missing_role,
    ] = counts;
    DailyUsage {
        date,
        valid,
        rate_limited,
        expired,
        disabled,
        source_not_allowed,
        audience_not_allowed,
        route_not_allowed,
        missing_role,
    }
}

fn date_of(app: &TestApp, days_ago: u64) -> String {
    let now = std::time::UNIX_EPOCH + Duration::from_millis(app.clock.now_millis() as u64);
    sts::model::Day::of(now - Duration::from_secs(days_ago * 86_400)).date()
}

#[tokio::test]
async fn every_check_of_a_token_is_counted_per_day_by_what_it_came_to() {
    let app = spawn_app().await;
    let (secret, created) = app
        .create_with(CreateRequest {
            audiences: vec!["ci".into()],
            rate_limits: vec![rate_limit("hour", 2, 3600)],
            ..create_request("counted", &["deployer"])
        })
        .await;
    // Two valid, one rate limited, one outside its audience.
    assert!(app.validate_for(&secret, "ci").await);
    assert!(app.validate_for(&secret, "ci").await);
    assert!(!app.validate_for(&secret, "ci").await);
    assert!(!app.validate_for(&secret, "elsewhere").await);
    // Forward-auth without a role the route needs.
    let missing_role = app
        .rest()
        .get("/api/auth?role=admin&audience=ci")
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(missing_role.status(), 403);
    // Nothing is written before the batch.
    let today = date_of(&app, 0);
    assert_eq!(
        app.usage(created.id, 1).await.unwrap(),
        [day(today.clone(), [0; 8])]
    );
    app.service.write_last_used().await;
    assert_eq!(
        app.usage(created.id, 1).await.unwrap(),
        [day(today.clone(), [2, 1, 0, 0, 0, 1, 0, 1])]
    );

    // A day on: yesterday's counts stay, today's start from zero; an
    // expired token's checks are counted as such.
    let (expiring, expiring_token) = app.create_expiring_in("expiring", &["r"], 60).await;
    app.clock.advance(Duration::from_secs(86_400));
    assert!(app.validate_for(&secret, "ci").await);
    assert!(!app.validate(&expiring).await.valid);
    app.service.write_last_used().await;
    let yesterday = today;
    let today = date_of(&app, 0);
    let days = app.usage(created.id, 3).await.unwrap();
    assert_eq!(
        days,
        [
            day(date_of(&app, 2), [0; 8]),
            day(yesterday.clone(), [2, 1, 0, 0, 0, 1, 0, 1]),
            day(today.clone(), [1, 0, 0, 0, 0, 0, 0, 0]),
        ]
    );
    assert_eq!(
        app.usage(expiring_token.id, 1).await.unwrap(),
        [day(today.clone(), [0, 0, 1, 0, 0, 0, 0, 0])]
    );
    // 30 days unless asked; at most 90; an unknown token is not found.
    assert_eq!(app.usage(created.id, 0).await.unwrap().len(), 30);
    assert_eq!(app.usage(created.id, 90).await.unwrap().len(), 90);
    assert_code(app.usage(created.id, 91).await, Code::InvalidArgument);
    assert_code(app.usage(7, 1).await, Code::NotFound);

    // REST: the same days.
    let rest = app.rest();
    let json = rest
        .get(&format!("/api/security/tokens/{}/usage?days=2", created.id))
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    assert_eq!(
        json,
        serde_json::json!({"id": created.id, "days": [
            {"date": yesterday, "valid": 2, "rateLimited": 1, "expired": 0, "disabled": 0,
             "sourceNotAllowed": 0, "audienceNotAllowed": 1, "routeNotAllowed": 0, "missingRole": 1},
            {"date": today, "valid": 1, "rateLimited": 0, "expired": 0, "disabled": 0,
             "sourceNotAllowed": 0, "audienceNotAllowed": 0, "routeNotAllowed": 0, "missingRole": 0},
        ]})
    );
    let refused = rest
        .get(&format!(
            "/api/security/tokens/{}/usage?days=abc",
            created.id
        ))
        .header("x-api-key", &app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let unauthenticated = rest
        .get(&format!("/api/security/tokens/{}/usage", created.id))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // The CLI: a row per day, every outcome with -o json.
    let terminal = Terminal::logged_in(&app).await;
    let id = created.id.to_string();
    let text = terminal
        .sts(&["service-token", "usage", &id, "--days", "2"])
        .await
        .ok();
    let rows: Vec<&str> = text.stdout.lines().map(str::trim_end).collect();
    assert!(
        rows.iter()
            .any(|row| row.starts_with(&format!("{yesterday} | 2     | 1            | 2"))),
        "{}",
        text.stdout
    );
    let json = terminal
        .sts(&["service-token", "usage", &id, "--days", "2", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["service-token-usage"]["days"][0]["missingRole"], 1);
    assert_eq!(json["service-token-usage"]["days"][1]["valid"], 1);
}

#[tokio::test]
async fn with_last_used_tracking_off_no_usage_is_kept() {
    let service = sts::config::ServiceConfig {
        last_used_resolution: Duration::ZERO,
        ..Default::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (secret, created) = app.create("untracked", &["r"]).await;
    assert!(app.validate(&secret).await.valid);
    app.service.write_last_used().await;
    let today = date_of(&app, 0);
    assert_eq!(
        app.usage(created.id, 1).await.unwrap(),
        [day(today, [0; 8])]
    );
}
