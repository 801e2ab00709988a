//! Events delivered to webhooks: a receiver in the test checks each
//! delivery's signature with its own HMAC-SHA256 (not the server's code),
//! what each change sends, retries while the receiver is down, a full
//! outbox, a `kill -9` between a change and its delivery (the real binary),
//! and two PostgreSQL replicas delivering each event once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sts::{
    config::{ServiceConfig, WebhookConfig, WebhookSecret, WebhookUrl},
    proto::{ServiceToken, token_service_client::TokenServiceClient},
};
use tokio::net::TcpListener;

use crate::{
    support::pg::TestDatabase,
    support::process::{ServerProcess, bootstrap, bootstrap_store},
    support::{
        TestApp, channel, create_request, eventually, server_config, spawn_app_with, with_key,
    },
};

pub const SECRET: &str = "a webhook secret for the tests";

/// HMAC-SHA256 as RFC 2104 defines it, written here so the test does not
/// check the server's signature with the server's own code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered.
    pub status: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }

    /// The signature checks out against `secret`, and the headers agree
    /// with the body.
    pub fn assert_signed(&self, secret: &str) {
        let expected = format!(
            "sha256={}",
            hex::encode(hmac_sha256(secret.as_bytes(), &self.body))
        );
        assert_eq!(self.header("x-sts-signature-256"), expected);
        let json = self.json();
        assert_eq!(self.header("x-sts-event"), json["type"].as_str().unwrap());
        assert_eq!(self.header("x-sts-delivery"), json["id"].as_str().unwrap());
        assert_eq!(self.header("content-type"), "application/json");
    }
}

/// A webhook receiver on loopback that keeps what it is sent and answers
/// with the status the test sets.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
    status: Arc<AtomicU16>,
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let status = receiver.status.load(Ordering::SeqCst);
    receiver.received.lock().unwrap().push(Delivery {
        headers,
        body,
        status,
    });
    axum::http::StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn on(listener: TcpListener) -> Receiver {
        let receiver = Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            received: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far, failed ones included.
    pub fn requests(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }

    /// The deliveries it accepted (answered 2xx), in order.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.requests()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status))
            .collect()
    }

    /// Waits until it accepted `n` deliveries; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        eventually(&format!("{n} webhook deliveries"), || async {
            self.accepted().len() >= n
        })
        .await;
        self.accepted()
    }
}

impl TestApp {
    async fn delete(&self, id: u64) {
        let request = self.admin(sts::proto::DeleteRequest {
            id,
            ..Default::default()
        });
        self.client.clone().delete(request).await.unwrap();
    }
}

pub fn webhooks(urls: &[&str]) -> WebhookConfig {
    WebhookConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        poll_interval: Duration::from_millis(20),
        ..WebhookConfig::new(
            urls.iter().map(|u| WebhookUrl::parse(u).unwrap()).collect(),
            WebhookSecret::parse(SECRET).unwrap(),
        )
    }
}

async fn app_with_webhooks(config: WebhookConfig) -> TestApp {
    let service = ServiceConfig {
        webhooks: Some(config),
        ..ServiceConfig::default()
    };
    spawn_app_with(service, server_config()).await
}

fn types(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_change_is_delivered_signed_and_without_a_secret() {
    let receiver = Receiver::start().await;
    let app = app_with_webhooks(webhooks(&[&receiver.url])).await;
    let admin_id = app.admin_id().await;
    let mut request = create_request("ci", &["deploy"]);
    request.description = "the pipeline".into();
    request.labels = [("team".to_owned(), "ci".to_owned())].into();
    let (secret, created) = app.create_with(request).await;
    let renamed = app
        .update(
            ServiceToken {
                name: "ci-2".into(),
                ..created.clone()
            },
            &["name"],
        )
        .await
        .unwrap();
    let disabled = app
        .update(
            ServiceToken {
                disabled: true,
                ..renamed.clone()
            },
            &["disabled"],
        )
        .await
        .unwrap();
    app.update(
        ServiceToken {
            disabled: false,
            ..disabled
        },
        &["disabled"],
    )
    .await
    .unwrap();
    let rotated = app
        .rotate(created.id, Duration::from_secs(60))
        .await
        .unwrap();
    let (_, doomed) = app.create("doomed", &["deploy"]).await;
    app.delete(doomed.id).await;
    // A leaked token, revoked by its value alone.
    let new_secret = rotated.token.clone();
    let revoked = app
        .rest()
        .post("/api/security/tokens/revoke")
        .json(&serde_json::json!({ "tokens": [new_secret] }))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);

    let deliveries = receiver.wait_for(8).await;
    assert_eq!(
        types(&deliveries),
        [
            "token.created",
            "token.updated",
            "token.disabled",
            "token.enabled",
            "token.rotated",
            "token.created",
            "token.deleted",
            "token.leaked",
        ]
    );
    let mut ids = Vec::new();
    for delivery in &deliveries {
        delivery.assert_signed(SECRET);
        // No secret of any kind, and no hash of one.
        let text = String::from_utf8(delivery.body.to_vec()).unwrap();
        for secret in [&secret, &rotated.token, &app.admin_token] {
            assert!(!text.contains(secret.as_str()), "{text}");
        }
        assert!(!text.contains("hash"), "{text}");
        let json = delivery.json();
        ids.push(json["id"].as_str().unwrap().to_owned());
        assert!(json["occurred_at"].as_str().unwrap().ends_with('Z'));
        let kind = json["type"].as_str().unwrap();
        if kind == "token.leaked" {
            assert!(json.get("actor").is_none());
            assert_eq!(json["source"], "127.0.0.1");
        } else {
            assert_eq!(json["actor"]["id"], admin_id, "{kind}");
            assert_eq!(json["actor"]["name"], "test-admin");
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 8, "every event has its own id");
    let first = deliveries[0].json();
    assert_eq!(first["token"]["id"], created.id);
    assert_eq!(first["token"]["name"], "ci");
    assert_eq!(first["token"]["roles"], serde_json::json!(["deploy"]));
    assert_eq!(first["token"]["description"], "the pipeline");
    assert_eq!(first["token"]["labels"]["team"], "ci");
    assert_eq!(first["token"]["expiration"], Value::Null);
    assert_eq!(first["token"]["disabled"], false);
    assert_eq!(deliveries[1].json()["token"]["name"], "ci-2");
    assert_eq!(deliveries[2].json()["token"]["disabled"], true);
    assert!(deliveries[4].json()["token"]["previous_secret_expiration"].is_string());

    eventually("the outbox to empty", || async {
        app.metric("sts_events_pending").await == 0.0
    })
    .await;
    assert_eq!(
        app.metric("sts_webhook_deliveries_total{outcome=\"sent\"}")
            .await,
        8.0
    );
}

#[tokio::test]
async fn expiry_is_announced_at_30_7_and_1_days_and_when_it_passes() {
    let receiver = Receiver::start().await;
    let app = app_with_webhooks(webhooks(&[&receiver.url])).await;
    let day = Duration::from_secs(86_400);
    let (_, created) = app
        .create_expiring_in("expiring", &["r"], 40 * 86_400)
        .await;
    receiver.wait_for(1).await;
    // The server looks too (at start, then every minute): whoever looks
    // first announces a step, and the store lets it be announced once.
    app.service.signal_expiries().await.unwrap();
    let mut expected = vec!["token.created".to_owned()];
    for (advance, threshold) in [
        (11 * day, Some("30d")),
        (23 * day, Some("7d")),
        (day * 11 / 2, Some("1d")),
        (day, None),
    ] {
        app.clock.advance(advance);
        // Once per step, however often it is looked for.
        for _ in 0..3 {
            app.service.signal_expiries().await.unwrap();
        }
        expected.push(match threshold {
            Some(_) => "token.expiring".into(),
            None => "token.expired".into(),
        });
        let deliveries = receiver.wait_for(expected.len()).await;
        assert_eq!(types(&deliveries), expected);
        assert_eq!(app.service.signal_expiries().await.unwrap(), 0);
        let last = deliveries.last().unwrap();
        last.assert_signed(SECRET);
        assert_eq!(last.json()["threshold"].as_str(), threshold);
        assert_eq!(last.json()["token"]["id"], created.id);
        assert!(last.json().get("actor").is_none());
    }
}

#[tokio::test]
async fn purged_tokens_are_announced() {
    let receiver = Receiver::start().await;
    let service = ServiceConfig {
        webhooks: Some(webhooks(&[&receiver.url])),
        purge_expired_after: Some(Duration::from_secs(3600)),
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (_, created) = app.create_expiring_in("short", &["r"], 60).await;
    app.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(app.service.purge_expired().await.unwrap(), 1);
    // The server's own look for expiry steps may announce some meanwhile.
    let changes = || {
        receiver
            .accepted()
            .into_iter()
            .filter(|d| {
                !d.json()["type"]
                    .as_str()
                    .unwrap()
                    .starts_with("token.expir")
            })
            .collect::<Vec<_>>()
    };
    eventually("the purge's event", || async { changes().len() >= 2 }).await;
    let deliveries = changes();
    assert_eq!(types(&deliveries), ["token.created", "token.purged"]);
    assert_eq!(deliveries[1].json()["token"]["id"], created.id);
    assert!(deliveries[1].json().get("actor").is_none());
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_every_event_in_order_when_it_is_back() {
    let (down, up) = (Receiver::start().await, Receiver::start().await);
    // A URL where nothing listens yet: connections are refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_url = format!("http://{}/hook", closed.local_addr().unwrap());
    let port = closed.local_addr().unwrap();
    drop(closed);
    down.answer(503);
    let app = app_with_webhooks(webhooks(&[&down.url, &up.url, &refused_url])).await;
    let mut names = Vec::new();
    for n in 0..5 {
        let name = format!("t{n}");
        app.create(&name, &["r"]).await;
        names.push(name);
    }
    // The URL that works gets everything meanwhile, once.
    let delivered = up.wait_for(5).await;
    eventually("failed deliveries to be retried", || async {
        down.requests().len() >= 3
    })
    .await;
    assert!(down.accepted().is_empty());
    assert!(
        app.metric("sts_webhook_deliveries_total{outcome=\"failed\"}")
            .await
            >= 3.0
    );
    assert_eq!(app.metric("sts_events_pending").await, 5.0);
    let text = app.metrics_text().await;
    for series in crate::signals::EVENT_SERIES {
        assert!(text.contains(&format!("\n{series}")), "{series}: {text}");
    }
    // An hour later (by the clock that dated the events) they still wait.
    app.clock.advance(Duration::from_secs(3600));
    eventually("the oldest event's age", || async {
        app.metric("sts_events_oldest_pending_age_seconds").await >= 3600.0
    })
    .await;

    // Both come back.
    down.answer(200);
    let late = Receiver::on(TcpListener::bind(port).await.unwrap());
    for receiver in [&down, &late] {
        let got = receiver.wait_for(5).await;
        let created: Vec<String> = got
            .iter()
            .map(|d| d.json()["token"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(created, names, "in the order they happened");
        for delivery in &got {
            delivery.assert_signed(SECRET);
        }
    }
    eventually("the outbox to empty", || async {
        app.metric("sts_events_pending").await == 0.0
    })
    .await;
    assert_eq!(
        app.metric("sts_events_oldest_pending_age_seconds").await,
        0.0
    );
    // The URL that never failed got no event twice.
    let ids: Vec<Value> = up
        .accepted()
        .iter()
        .map(|d| d.json()["id"].clone())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(
        delivered
            .iter()
            .map(|d| d.json()["id"].clone())
            .collect::<Vec<_>>(),
        ids
    );
}

#[tokio::test]
async fn a_full_outbox_drops_events_but_never_the_change() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let config = WebhookConfig {
        outbox_capacity: 2,
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        ..webhooks(&[&receiver.url])
    };
    let app = app_with_webhooks(config).await;
    let mut created = Vec::new();
    for n in 0..4 {
        created.push(app.create(&format!("t{n}"), &["r"]).await.1);
    }
    for token in &created {
        assert!(app.get(token.id).await.is_ok());
    }
    app.delete(created[0].id).await;
    assert_eq!(app.metric("sts_events_dropped_total").await, 3.0);
    eventually("the outbox count", || async {
        app.metric("sts_events_pending").await == 2.0
    })
    .await;
}

/// The outbox's count is held exactly while changes race the delivery
/// loop's looks at the store: every event that had room is kept (none
/// dropped early by being counted twice), and none is kept past the
/// capacity (none missed by a look).
#[tokio::test]
async fn concurrent_changes_fill_the_outbox_exactly_to_its_capacity() {
    const CAPACITY: u64 = 400;
    const WRITERS: usize = 8;
    const EACH: usize = 100;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let config = WebhookConfig {
        outbox_capacity: CAPACITY,
        // Each event fails once, and each failure is followed by a look
        // at the store, while the other writers go on.
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        ..webhooks(&[&receiver.url])
    };
    let app = app_with_webhooks(config).await;
    let writers = (0..WRITERS).map(|w| {
        let app = &app;
        async move {
            for n in 0..EACH {
                app.create(&format!("w{w}-{n}"), &["r"]).await;
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let total = (WRITERS * EACH) as f64;
    assert_eq!(
        app.metric("sts_events_dropped_total").await,
        total - CAPACITY as f64
    );
    eventually("the outbox count", || async {
        app.metric("sts_events_pending").await == CAPACITY as f64
    })
    .await;
}

/// Real binary: events written with their change survive a `kill -9`
/// before delivery, and go out after the restart.
#[tokio::test]
async fn a_kill_9_between_a_change_and_its_delivery_loses_no_event() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    let env = [
        ("STS_WEBHOOK_URL", receiver.url.as_str()),
        ("STS_WEBHOOK_SECRET", SECRET),
    ];
    let server = ServerProcess::start_with(data_dir.path(), &env).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    let mut ids = Vec::new();
    for n in 0..5 {
        let request = with_key(&admin, create_request(&format!("t{n}"), &["r"]));
        let created = client.create(request).await.unwrap().into_inner();
        ids.push(created.service_token.unwrap().id);
    }
    // Delivery was tried (and refused) at least once: the events exist,
    // and none has been delivered.
    eventually("a delivery attempt", || async {
        !receiver.requests().is_empty()
    })
    .await;
    server.kill().await.unwrap();
    assert!(receiver.accepted().is_empty());

    receiver.answer(200);
    let restarted = ServerProcess::start_with(data_dir.path(), &env).await;
    let deliveries = receiver.wait_for(5).await;
    let got: Vec<u64> = deliveries
        .iter()
        .map(|d| d.json()["token"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, ids);
    for delivery in &deliveries {
        delivery.assert_signed(SECRET);
    }
    drop(restarted);
}

#[tokio::test]
async fn the_server_refuses_webhooks_it_could_not_sign() {
    let data_dir = tempfile::tempdir().unwrap();
    for (env, says) in [
        (
            vec![("STS_WEBHOOK_URL", "http://127.0.0.1:9/hook")],
            "--webhook-url needs --webhook-secret",
        ),
        (
            vec![
                ("STS_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
                ("STS_WEBHOOK_SECRET", "short"),
            ],
            "at least 16 bytes",
        ),
        (
            vec![
                ("STS_WEBHOOK_URL", "ftp://example.com/hook"),
                ("STS_WEBHOOK_SECRET", SECRET),
            ],
            "must be an http or https URL",
        ),
    ] {
        let output = crate::support::process::sts_server()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    // A secret too short, given as a flag or in the environment, is not
    // printed back.
    const SHORT: &str = "shortsecret42";
    for (args, env) in [
        (vec!["--webhook-secret", SHORT], vec![]),
        (vec![], vec![("STS_WEBHOOK_SECRET", SHORT)]),
    ] {
        let output = crate::support::process::sts_server()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(["--webhook-url", "http://127.0.0.1:9/hook"])
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--webhook-secret"), "{stderr}");
        assert!(stderr.contains("at least 16 bytes"), "{stderr}");
        assert!(!stderr.contains(SHORT), "{stderr}");
    }
}

#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let Some(database) = TestDatabase::create("webhooks_two_replicas").await else {
        return;
    };
    let receiver = Receiver::start().await;
    let env = [
        ("STS_STORE", database.url.as_str()),
        ("STS_WEBHOOK_URL", receiver.url.as_str()),
        ("STS_WEBHOOK_SECRET", SECRET),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_with(dir_a.path(), &env).await;
    let b = ServerProcess::start_with(dir_b.path(), &env).await;
    let admin = bootstrap_store(&database.url).await;
    let mut clients = [
        TokenServiceClient::new(channel(a.addr).await),
        TokenServiceClient::new(channel(b.addr).await),
    ];
    const EVENTS: usize = 40;
    for n in 0..EVENTS {
        let request = with_key(&admin, create_request(&format!("t{n}"), &["r"]));
        clients[n % 2].create(request).await.unwrap();
    }
    receiver.wait_for(EVENTS).await;
    // Settled everywhere: nothing left that either could still send.
    eventually("the outbox to empty", || async {
        use sqlx::Row;
        let rows = database.query("SELECT count(*) AS n FROM sts_outbox").await;
        rows[0].get::<i64, _>("n") == 0
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for delivery in receiver.requests() {
        delivery.assert_signed(SECRET);
        *seen
            .entry(delivery.json()["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), EVENTS);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    drop((a, b));
    database.drop().await;
}

#[tokio::test]
async fn an_update_that_changes_nothing_is_neither_written_delivered_nor_audited() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let receiver = Receiver::start().await;
    let app = app_with_webhooks(webhooks(&[&receiver.url])).await;
    let mut request = create_request("ci", &["deploy"]);
    request.description = "the pipeline".into();
    request.labels = [("team".to_owned(), "ci".to_owned())].into();
    let (_, created) = app.create_with(request).await;
    // Every field set to what it is, over gRPC and REST.
    let same = app
        .update(
            created.clone(),
            &[
                "name",
                "roles",
                "description",
                "labels",
                "disabled",
                "expiration",
            ],
        )
        .await
        .unwrap();
    assert_eq!(same.updated_at, created.updated_at);
    let patched = reqwest::Client::new()
        .patch(app.rest().url(&format!("/api/security/tokens/{}", created.id)))
        .header("x-api-key", &app.admin_token)
        .body(r#"{"name": "ci", "labels": {"team": "ci"}, "description": "the pipeline", "disabled": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(
        app.get(created.id).await.unwrap().updated_at,
        created.updated_at
    );
    // A real change after them: delivered in order, so had the no-ops
    // made events, they would have arrived first.
    app.update(
        ServiceToken {
            name: "ci-2".into(),
            ..created.clone()
        },
        &["name"],
    )
    .await
    .unwrap();
    let delivered = receiver.wait_for(2).await;
    assert_eq!(types(&delivered), ["token.created", "token.updated"]);
    let updates = logs
        .target(sts::service::AUDIT)
        .into_iter()
        .filter(|e| e["fields"]["message"] == "service token updated")
        .count();
    assert_eq!(updates, 1, "only the rename is audited");
}

/// A receiver that takes connections and never answers: its URL, and the
/// connections it holds.
async fn hanging_receiver() -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    (url, held)
}

#[tokio::test]
async fn a_url_that_hangs_holds_up_only_itself() {
    let (hanging_url, held) = hanging_receiver().await;
    let healthy = Receiver::start().await;
    let config = WebhookConfig {
        // Far longer than the test: were the healthy URL to wait for the
        // hanging one, it would get nothing in time.
        timeout: Duration::from_secs(120),
        ..webhooks(&[&hanging_url, &healthy.url])
    };
    let app = app_with_webhooks(config).await;
    // One at a time: each later one is claimed while the hanging URL still
    // holds the first.
    for name in ["a", "b", "c", "d"] {
        app.create(name, &["r"]).await;
    }
    let delivered = healthy.wait_for(4).await;
    assert_eq!(types(&delivered), ["token.created"; 4]);
    assert_eq!(
        app.metric("sts_webhook_deliveries_total{outcome=\"failed\"}")
            .await,
        0.0
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the hanging URL was tried"
    );
    // Owed to the hanging URL still.
    assert_eq!(app.metric("sts_events_pending").await, 4.0);
}

#[tokio::test]
async fn the_pending_gauge_is_current_while_a_url_hangs() {
    let (hanging_url, held) = hanging_receiver().await;
    let config = WebhookConfig {
        // Far longer than the test: the first round waits on it throughout.
        timeout: Duration::from_secs(120),
        ..webhooks(&[&hanging_url])
    };
    let app = app_with_webhooks(config).await;
    for name in ["a", "b", "c"] {
        app.create(name, &["r"]).await;
    }
    eventually("the hanging URL is tried", || async {
        !held.lock().unwrap().is_empty()
    })
    .await;
    // Every event is owed while the round waits: the gauge says so now,
    // not when the round ends.
    assert_eq!(app.metric("sts_events_pending").await, 3.0);
}

#[tokio::test]
async fn a_token_used_from_a_new_source_is_announced_signed_once_per_window() {
    let receiver = Receiver::start().await;
    let app = app_with_webhooks(webhooks(&[&receiver.url])).await;
    let (secret, created) = app.create("ci", &["deploy"]).await;
    let from = |source: &str| sts::proto::ValidateRequest {
        token: secret.clone(),
        source_address: source.into(),
        ..Default::default()
    };
    let validate = |source: &str| {
        let (client, request) = (app.client.clone(), from(source));
        async move {
            let answer = client.clone().validate(request).await.unwrap();
            assert!(answer.into_inner().valid);
        }
    };
    // Its first source is its baseline; a second one is news.
    validate("10.0.0.1").await;
    app.service.write_last_used().await;
    app.clock.advance(Duration::from_secs(61));
    validate("2001:db8::7").await;
    // Within that window another new one is recorded, not announced.
    validate("192.0.2.1").await;
    app.service.write_last_used().await;
    let news = || {
        receiver
            .accepted()
            .into_iter()
            .filter(|d| d.json()["type"] == "token.new_source")
            .collect::<Vec<_>>()
    };
    eventually("the new source's event", || async { !news().is_empty() }).await;
    let delivered = news();
    assert_eq!(delivered.len(), 1);
    delivered[0].assert_signed(SECRET);
    let body = delivered[0].json();
    assert_eq!(body["token"]["id"], created.id);
    assert!(
        body["source"] == "2001:db8::7" || body["source"] == "192.0.2.1",
        "{body}"
    );
    assert_eq!(body["recent_sources"][0]["address"], "10.0.0.1", "{body}");
    assert!(!body.to_string().contains(&secret[7..]), "never the secret");
}
