//! Reuse detection: a secret a rotation retired (or a previous one past its
//! grace), presented again, is refused as ever and announced as
//! `token.reuse_detected` (webhook, audit, metric) once a minute per token;
//! `--revoke-on-reuse` disables the token; on both stores and across two
//! replicas.

use std::time::Duration;

use sts::{
    config::ServiceConfig,
    proto::{InvalidReason, token_service_client::TokenServiceClient},
};

use crate::support::pg::TestDatabase;
use crate::support::process::{ServerProcess, bootstrap_store};
use crate::support::{
    TestApp, channel, create_request, eventually, server_config, spawn_app_with, validate_on,
    with_key,
};
use crate::webhooks::{Delivery, Receiver, SECRET, webhooks};

async fn app(receiver: &Receiver, revoke_on_reuse: bool) -> TestApp {
    let service = ServiceConfig {
        webhooks: Some(webhooks(&[&receiver.url])),
        revoke_on_reuse,
        ..ServiceConfig::default()
    };
    spawn_app_with(service, server_config()).await
}

fn reuses(deliveries: &[Delivery]) -> Vec<Delivery> {
    deliveries
        .iter()
        .filter(|d| d.json()["type"] == "token.reuse_detected")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_retired_secret_presented_again_is_refused_and_announced_once_a_minute() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let receiver = Receiver::start().await;
    let app = app(&receiver, false).await;
    let (first, made) = app.create("ci", &["deploy"]).await;
    let second = app.rotate(made.id, Duration::ZERO).await.unwrap().token;
    let before = receiver.wait_for(2).await.len();

    // First through the status endpoint, whose source is the client's.
    let status = app
        .rest()
        .get("/api/server/status")
        .header("x-api-key", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 401);
    for _ in 0..2 {
        let answer = app.validate(&first).await;
        assert!(!answer.valid);
        assert_eq!(answer.reason(), InvalidReason::NotFound, "refused as ever");
    }
    assert!(
        app.validate(&second).await.valid,
        "the current secret works on"
    );
    // One announcement for three presentations within the minute: the
    // next event (a rename) follows it directly.
    let mut renamed = app.get(made.id).await.unwrap();
    renamed.name = "ci-renamed".into();
    app.update(renamed, &["name"]).await.unwrap();
    let delivered = receiver.wait_for(before + 2).await;
    let announced = reuses(&delivered);
    assert_eq!(announced.len(), 1, "once a minute");
    let event = announced[0].json();
    announced[0].assert_signed(SECRET);
    assert_eq!(event["token"]["id"], made.id);
    assert_eq!(event["token"]["disabled"], false);
    assert_eq!(event["source"], "127.0.0.1");
    assert!(!String::from_utf8_lossy(&announced[0].body).contains(&first));
    assert_eq!(app.metric("sts_secret_reuses_total").await, 3.0);
    let audited = logs.target(sts::service::AUDIT);
    let reuse: Vec<_> = audited
        .iter()
        .filter(|e| e["fields"]["event"] == "token.reuse_detected")
        .collect();
    assert_eq!(reuse.len(), 1, "audited once: {audited:?}");
    assert_eq!(reuse[0]["fields"]["token.id"], made.id);
    assert!(
        !format!("{:?}", logs.events()).contains(&first),
        "never the secret"
    );

    // A minute on, announced again; and a previous secret past its grace
    // is a reuse too.
    app.clock.advance(Duration::from_secs(61));
    assert!(!app.validate(&first).await.valid);
    let third = app
        .rotate(made.id, Duration::from_secs(10))
        .await
        .unwrap()
        .token;
    // Past its grace, but within the minute of the last announcement:
    // counted, not announced.
    app.clock.advance(Duration::from_secs(11));
    assert!(!app.validate(&second).await.valid, "past its grace");
    let delivered = receiver.wait_for(before + 4).await;
    assert_eq!(reuses(&delivered).len(), 2);
    assert_eq!(app.metric("sts_secret_reuses_total").await, 5.0);
    app.clock.advance(Duration::from_secs(61));
    assert!(!app.validate(&second).await.valid);
    let delivered = receiver.wait_for(before + 5).await;
    assert_eq!(reuses(&delivered).len(), 3);
    assert!(app.validate(&third).await.valid);
}

#[tokio::test]
async fn a_token_keeps_its_last_five_retired_secrets() {
    let receiver = Receiver::start().await;
    let app = app(&receiver, false).await;
    let (first, made) = app.create("ci", &["deploy"]).await;
    let mut secrets = vec![first];
    for _ in 0..6 {
        secrets.push(app.rotate(made.id, Duration::ZERO).await.unwrap().token);
    }
    // The oldest of six retired is forgotten: unknown, not a reuse.
    assert!(!app.validate(&secrets[0]).await.valid);
    assert_eq!(app.metric("sts_secret_reuses_total").await, 0.0);
    for (n, old) in secrets[1..6].iter().enumerate() {
        assert!(!app.validate(old).await.valid);
        assert_eq!(app.metric("sts_secret_reuses_total").await, (n + 1) as f64);
    }
}

#[tokio::test]
async fn with_revoke_on_reuse_a_reused_secret_disables_its_token_at_once() {
    let receiver = Receiver::start().await;
    let app = app(&receiver, true).await;
    let (first, made) = app.create("ci", &["deploy"]).await;
    let second = app.rotate(made.id, Duration::ZERO).await.unwrap().token;
    assert!(!app.validate(&first).await.valid);
    let answer = app.validate(&second).await;
    assert!(!answer.valid);
    assert_eq!(answer.reason(), InvalidReason::Disabled);
    eventually("the reuse's event", || async {
        let announced = reuses(&receiver.accepted());
        announced.len() == 1 && announced[0].json()["token"]["disabled"] == true
    })
    .await;
    // The last admin token is never disabled so (the lockout rule): its
    // reuse is announced all the same.
    let admin = app.admin_id().await;
    let rotated = app.rotate(admin, Duration::ZERO).await.unwrap().token;
    assert!(!app.validate(&app.admin_token).await.valid);
    assert!(app.validate(&rotated).await.valid, "still enabled");
    eventually("the admin's reuse announced", || async {
        reuses(&receiver.accepted()).len() == 2
    })
    .await;
}

/// On PostgreSQL, the real binary twice: a secret retired through one
/// replica is recognized on the other, announced once, and with
/// `--revoke-on-reuse` the token is disabled on both.
#[tokio::test]
async fn a_reuse_is_seen_across_two_replicas_on_postgres() {
    let Some(database) = TestDatabase::create("reuse_two_replicas").await else {
        return;
    };
    let receiver = Receiver::start().await;
    let env = [
        ("STS_STORE", database.url.as_str()),
        ("STS_WEBHOOK_URL", receiver.url.as_str()),
        ("STS_WEBHOOK_SECRET", SECRET),
        ("STS_REVOKE_ON_REUSE", "true"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_with(dir_a.path(), &env).await;
    let b = ServerProcess::start_with(dir_b.path(), &env).await;
    let admin = bootstrap_store(&database.url).await;
    let (client_a, client_b) = (
        TokenServiceClient::new(channel(a.addr).await),
        TokenServiceClient::new(channel(b.addr).await),
    );
    let created = client_a
        .clone()
        .create(with_key(&admin, create_request("ci", &["deploy"])))
        .await
        .unwrap()
        .into_inner();
    let id = created.service_token.unwrap().id;
    // Checked on B first, so B holds it in its cache.
    assert!(validate_on(&client_b, &created.token).await.unwrap().valid);
    let rotate = sts::proto::RotateRequest {
        id,
        grace_period: None,
    };
    let second = client_a
        .clone()
        .rotate(with_key(&admin, rotate))
        .await
        .unwrap()
        .into_inner()
        .token;
    eventually("B to see the rotation and the reuse", || async {
        !validate_on(&client_b, &created.token).await.unwrap().valid
            && b.rest().metric("sts_secret_reuses_total").await >= 1.0
    })
    .await;
    eventually("the token disabled on A", || async {
        validate_on(&client_a, &second).await.unwrap().reason() == InvalidReason::Disabled
    })
    .await;
    eventually("one token.reuse_detected", || async {
        reuses(&receiver.accepted()).len() == 1
    })
    .await;
    assert_eq!(reuses(&receiver.accepted())[0].json()["token"]["id"], id);
    drop((a, b));
    database.drop().await;
}
