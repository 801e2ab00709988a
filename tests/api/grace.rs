//! A rotation's grace period is bounded: above `--max-rotation-grace` it is
//! refused, naming the maximum, and changes nothing (a grace ending past
//! year 9999 used to panic the request, inside the store transaction when
//! webhooks were on); it never outlives the token; no time the server
//! answers with lies outside protobuf's Timestamp range.

use std::time::Duration;

use sts::{
    config::{ServiceConfig, WebhookConfig, WebhookSecret, WebhookUrl},
    proto::{InvalidReason, ListRequest, RotateRequest},
};
use tonic::Code;

use crate::support::{TestApp, server_config, spawn_app, spawn_app_with, spawn_router};

const DAY: u64 = 86_400;
/// The largest grace the API can carry: about 292 billion years.
const ENDLESS: i64 = i64::MAX;

async fn rotate_by(app: &TestApp, id: u64, seconds: i64) -> Result<String, tonic::Status> {
    let request = RotateRequest {
        id,
        grace_period: Some(prost_types::Duration { seconds, nanos: 0 }),
    };
    let answer = app.client.clone().rotate(app.admin(request)).await?;
    Ok(answer.into_inner().token)
}

/// Every grace over the maximum is refused with the maximum named, and the
/// token keeps its secret and gets no previous one.
async fn refuses_long_graces(app: &TestApp) {
    let (secret, created) = app.create("ci", &["r"]).await;
    for seconds in [30 * DAY as i64 + 1, 10_000 * 365 * DAY as i64, ENDLESS] {
        let status = rotate_by(app, created.id, seconds).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{seconds}: {status:?}"
        );
        assert!(
            status.message().contains("maximum rotation grace of 30d"),
            "{status:?}"
        );
    }
    assert!(app.validate(&secret).await.valid, "the secret was kept");
    let token = app.get(created.id).await.unwrap();
    assert_eq!(
        token.previous_secret_expiration, None,
        "and no rotation happened"
    );

    // The maximum itself is allowed.
    let new = rotate_by(app, created.id, 30 * DAY as i64).await.unwrap();
    assert!(app.validate(&new).await.valid);
    assert!(app.validate(&secret).await.previous_secret);

    // Every time List answers with is one protobuf's Timestamp can carry.
    let listed = app
        .client
        .clone()
        .list(app.admin(ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for token in listed.service_tokens {
        for time in [
            token.created_at,
            token.expiration,
            token.previous_secret_expiration,
        ]
        .into_iter()
        .flatten()
        {
            assert!(time.seconds <= 253_402_300_799, "{token:?}");
        }
    }
}

#[tokio::test]
async fn a_grace_above_the_maximum_is_refused_naming_it_and_changes_nothing() {
    refuses_long_graces(&spawn_app().await).await;
}

#[tokio::test]
async fn with_webhooks_on_too_a_long_grace_is_refused_not_a_panic_in_the_store() {
    let webhooks = WebhookConfig::new(
        vec![WebhookUrl::parse("http://127.0.0.1:9/events").unwrap()],
        WebhookSecret::parse("0123456789abcdef0123").unwrap(),
    );
    let service = ServiceConfig {
        webhooks: Some(webhooks),
        ..ServiceConfig::default()
    };
    refuses_long_graces(&spawn_app_with(service, server_config()).await).await;
}

#[tokio::test]
async fn the_maximum_is_the_servers_setting_and_rest_names_its_own_field() {
    let service = ServiceConfig {
        max_rotation_grace: Duration::from_secs(3600),
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (old, created) = app.create("ci", &["r"]).await;
    let status = rotate_by(&app, created.id, 3601).await.unwrap_err();
    assert!(
        status.message().contains("maximum rotation grace of 1h"),
        "{status:?}"
    );
    assert!(rotate_by(&app, created.id, 3600).await.is_ok());
    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(app.validate(&old).await.reason(), InvalidReason::NotFound);

    let router = spawn_router().await;
    let (_, id) = router.create("ci", &["r"]).await;
    let path = format!("/api/security/tokens/{id}/rotate");
    let answer = router
        .admin(
            "POST",
            &path,
            r#"{"gracePeriodSeconds":18446744073709551615}"#,
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("gracePeriodSeconds"), "{message}");
    assert!(message.contains("30d"), "{message}");
}
