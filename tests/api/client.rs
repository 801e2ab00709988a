//! The client crate end to end: its example service (`ValidateLayer` over
//! axum) in front of the real server. A deleted, disabled or rotated-out
//! token is refused within 100 ms (p99) on sled and across two PostgreSQL
//! replicas; the layer answers as the server would; cached uses are
//! reported; a killed server, a restarted one and a stalled stream keep
//! the promised bounds.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sts::proto::{
    CreateRequest, DeleteRequest, RotateRequest, ServiceToken, UpdateRequest,
    token_service_client::TokenServiceClient,
};
use tonic::transport::Channel;

use crate::{
    support::{
        channel, create_request, eventually,
        example::ExampleService,
        pg::{Proxy, TestDatabase},
        process::{ServerProcess, bootstrap, bootstrap_store},
        spawn_app, with_key,
    },
    watch::WATCHER_ROLE,
};

/// The promise: a revoked token refused this soon after the revoking call
/// returned, at the 99th percentile.
const REVOKED_WITHIN: Duration = Duration::from_millis(100);

/// Trials per store in the default run; `STS_REVOCATION_TRIALS` for more
/// (the benchmark runs 500).
fn trials() -> usize {
    std::env::var("STS_REVOCATION_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

async fn create(
    client: &TokenServiceClient<Channel>,
    admin: &str,
    request: CreateRequest,
) -> (String, ServiceToken) {
    let created = client
        .clone()
        .create(with_key(admin, request))
        .await
        .unwrap()
        .into_inner();
    (created.token, created.service_token.unwrap())
}

/// The three ways a valid token stops being valid at once.
async fn revoke(
    client: &TokenServiceClient<Channel>,
    admin: &str,
    token: ServiceToken,
    how: usize,
) {
    let mut client = client.clone();
    match how % 3 {
        0 => {
            let request = DeleteRequest {
                id: token.id,
                etag: String::new(),
            };
            client.delete(with_key(admin, request)).await.unwrap();
        }
        1 => {
            let request = UpdateRequest {
                service_token: Some(ServiceToken {
                    disabled: true,
                    etag: String::new(),
                    ..token
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["disabled".into()],
                }),
            };
            client.update(with_key(admin, request)).await.unwrap();
        }
        _ => {
            let request = RotateRequest {
                id: token.id,
                grace_period: None,
            };
            client.rotate(with_key(admin, request)).await.unwrap();
        }
    }
}

/// `trials` tokens, each accepted by the example from its cache, then
/// revoked through `client` (delete, disable, rotate without grace in
/// turn) and asked for until refused: how long each refusal took after the
/// revoking call returned.
async fn revocations(
    example: &ExampleService,
    client: &TokenServiceClient<Channel>,
    admin: &str,
    trials: usize,
) -> Vec<Duration> {
    example.synced().await;
    let mut took = Vec::with_capacity(trials);
    for n in 0..trials {
        let (secret, token) = create(
            client,
            admin,
            create_request(&format!("trial-{n}"), &["ci"]),
        )
        .await;
        for _ in 0..3 {
            assert!(example.accepts(&secret).await, "trial {n}");
        }
        assert!(
            !example.health().await.contains("cached=0"),
            "trial {n}: answered from the cache"
        );
        revoke(client, admin, token, n).await;
        let acknowledged = Instant::now();
        while example.accepts(&secret).await {
            assert!(
                acknowledged.elapsed() < Duration::from_secs(10),
                "trial {n}: still accepted 10 s after its revocation"
            );
        }
        took.push(acknowledged.elapsed());
    }
    took
}

/// The 99th percentile of `took`, printed with the median.
fn p99(store: &str, mut took: Vec<Duration>) -> Duration {
    took.sort();
    let at = |q: f64| took[((q * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
    eprintln!(
        "{store}: {} revocations, refused after p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        at(0.5),
        at(0.99),
        took[took.len() - 1]
    );
    at(0.99)
}

#[tokio::test]
async fn on_sled_a_revoked_token_is_refused_by_the_example_within_100_ms() {
    let app = spawn_app().await;
    let (watcher, _) = app.create("example", &[WATCHER_ROLE]).await;
    let example = ExampleService::start(app.addr, &watcher, &[]).await;
    let took = revocations(&example, &app.client, &app.admin_token, trials()).await;
    assert!(p99("sled", took) <= REVOKED_WITHIN);
}

#[tokio::test]
async fn on_two_postgres_replicas_a_token_revoked_on_one_is_refused_within_100_ms() {
    let Some(database) = TestDatabase::create("client_revocation").await else {
        return;
    };
    let env = [("STS_STORE", database.url.as_str())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_with(dir_a.path(), &env).await;
    let b = ServerProcess::start_with(dir_b.path(), &env).await;
    let admin = bootstrap_store(&database.url).await;
    let client_a = TokenServiceClient::new(channel(a.addr).await);
    let (watcher, _) = create(
        &client_a,
        &admin,
        create_request("example", &[WATCHER_ROLE]),
    )
    .await;
    // The example watches B; every change is made through A.
    let example = ExampleService::start(b.addr, &watcher, &[]).await;
    let took = revocations(&example, &client_a, &admin, trials()).await;
    assert!(p99("postgres", took) <= REVOKED_WITHIN);
    drop(example);
    drop((a, b));
    database.drop().await;
}

#[tokio::test]
async fn the_layer_reads_credentials_as_the_server_does_checks_roles_and_reports_cached_uses() {
    let app = spawn_app().await;
    let (watcher, _) = app.create("example", &[WATCHER_ROLE]).await;
    let example = ExampleService::start(app.addr, &watcher, &["--require-role", "deploy"]).await;
    example.synced().await;
    let (deployer, _) = app.create("deployer", &["deploy", "ci"]).await;
    let (reader, _) = app.create("reader", &["read"]).await;

    let http = reqwest::Client::new();
    let hello = format!("http://{}/hello", example.addr);
    let ask = |headers: &[(&str, &str)]| {
        let mut request = http.get(&hello);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // The forms the server reads, and nothing else.
    for headers in [
        vec![("authorization", format!("ApiKey {deployer}"))],
        vec![("authorization", format!("Bearer {deployer}"))],
        vec![("x-api-key", deployer.clone())],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = ask(&headers).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.text().await.unwrap(), "hello deployer (deploy,ci)\n");
    }
    let other = format!("ApiKey {reader}");
    let basic = "Basic dTp0".to_owned();
    for (headers, status) in [
        (vec![], StatusCode::UNAUTHORIZED),
        (
            vec![("authorization", basic.as_str())],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![("x-api-key", "svctok-mistyped")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![
                ("x-api-key", deployer.as_str()),
                ("authorization", other.as_str()),
            ],
            StatusCode::UNAUTHORIZED,
        ),
        (vec![("x-api-key", reader.as_str())], StatusCode::FORBIDDEN),
    ] {
        let answer = ask(&headers).await.unwrap();
        assert_eq!(answer.status(), status, "{headers:?}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(answer.headers()["www-authenticate"], "ApiKey realm=\"sts\"");
        }
        assert_eq!(answer.text().await.unwrap(), "", "nothing is echoed");
    }
    // An unknown token is asked once a second at most, whatever the flood.
    let unknown = sts::token::Secret::generate();
    const NOT_FOUND: &str = r#"sts_validations_total{outcome="not_found"}"#;
    let checks = app.metric(NOT_FOUND).await;
    for _ in 0..20 {
        assert!(!example.accepts(unknown.expose_secret()).await);
    }
    let asked = app.metric(NOT_FOUND).await - checks;
    assert!(
        (1.0..=3.0).contains(&asked),
        "{asked} checks reached the server"
    );

    // Uses answered from the cache reach the server's records.
    eventually("cached uses reported", || async {
        app.metrics_text()
            .await
            .contains(r#"sts_reported_uses_total{outcome="valid"}"#)
    })
    .await;
    eventually("the refused role reported", || async {
        app.metrics_text()
            .await
            .contains(r#"sts_reported_uses_total{outcome="missing_role"}"#)
    })
    .await;
}

/// The server killed under load: cached tokens keep passing only within
/// `--max-staleness`, then checks fail closed; once it is back (same port,
/// same data), the example resyncs, and a token deleted meanwhile is never
/// accepted past the promised window.
#[tokio::test]
async fn a_server_killed_and_restarted_under_load_fails_closed_then_resyncs() {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    let server = ServerProcess::start(data_dir.path()).await;
    let addr = server.addr;
    let client = TokenServiceClient::new(channel(addr).await);
    let (watcher, _) = create(&client, &admin, create_request("example", &[WATCHER_ROLE])).await;
    let (kept, _) = create(&client, &admin, create_request("kept", &["ci"])).await;
    let (doomed, doomed_token) = create(&client, &admin, create_request("doomed", &["ci"])).await;
    let example =
        std::sync::Arc::new(ExampleService::start(addr, &watcher, &["--max-staleness", "1"]).await);
    example.synced().await;
    assert!(example.accepts(&kept).await && example.accepts(&doomed).await);

    // Load on both tokens throughout, every answer kept with its time.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn({
        let example = example.clone();
        let doomed = doomed.clone();
        async move {
            let mut answers = Vec::new();
            while !*stopped.borrow() {
                let status = example.hello(Some(&doomed)).await.0;
                answers.push((Instant::now(), status));
            }
            answers
        }
    });

    let _log = server.kill().await;
    eventually("checks fail closed without the server", || async {
        example.hello(Some(&kept)).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let server = ServerProcess::start_on(
        crate::support::process::sts_server(),
        data_dir.path(),
        &addr.to_string(),
    )
    .await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    revoke(&client, &admin, doomed_token, 0).await;
    let deleted = Instant::now();
    example.synced().await;
    assert!(example.accepts(&kept).await);
    assert!(!example.accepts(&doomed).await);
    stop.send_replace(true);
    let answers = load.await.unwrap();
    let late: Vec<_> = answers
        .iter()
        .filter(|(at, status)| *status == StatusCode::OK && *at > deleted + REVOKED_WITHIN)
        .collect();
    assert!(late.is_empty(), "accepted after its delete: {late:?}");
    assert!(
        answers
            .iter()
            .any(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "the load saw the outage"
    );
}

/// With `serve_stale_for`, cached tokens keep passing while the server is
/// away (past `max_staleness`, up to that long after the last heartbeat,
/// then no more), and tokens never seen fail closed.
#[tokio::test]
async fn with_serve_stale_for_cached_tokens_outlive_the_server_for_that_long() {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    let server = ServerProcess::start(data_dir.path()).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    let (watcher, _) = create(&client, &admin, create_request("example", &[WATCHER_ROLE])).await;
    let (cached, _) = create(&client, &admin, create_request("cached", &["ci"])).await;
    let (unseen, _) = create(&client, &admin, create_request("unseen", &["ci"])).await;
    let args = ["--max-staleness", "1", "--serve-stale-for", "3"];
    let example = ExampleService::start(server.addr, &watcher, &args).await;
    example.synced().await;
    assert!(example.accepts(&cached).await);
    let _log = server.kill().await;
    eventually("the cache no longer fresh", || async {
        example.health().await.contains("fresh=false")
    })
    .await;
    assert!(example.accepts(&cached).await, "stale, as configured");
    assert_eq!(
        example.hello(Some(&unseen)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually("the stale answer runs out", || async {
        example.hello(Some(&cached)).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
}

/// A stream stalled by a proxy that stops forwarding (open, silent): the
/// client stops answering from its cache within `max_staleness` of the
/// last heartbeat, and, the server unreachable too, fails closed.
#[tokio::test]
async fn a_stalled_stream_is_noticed_within_max_staleness() {
    let app = spawn_app().await;
    let (watcher, _) = app.create("example", &[WATCHER_ROLE]).await;
    let (cached, _) = app.create("cached", &["ci"]).await;
    let proxy = Proxy::to(app.addr).await;
    let example = ExampleService::start(proxy.addr, &watcher, &["--max-staleness", "1"]).await;
    example.synced().await;
    assert!(example.accepts(&cached).await);
    proxy.stall();
    let stalled = Instant::now();
    eventually("the cache no longer fresh", || async {
        example.health().await.contains("fresh=false")
    })
    .await;
    // The last heartbeat came at most a second before the stall.
    let noticed = stalled.elapsed();
    assert!(noticed <= Duration::from_secs(3), "{noticed:?}");
    assert_eq!(
        example.hello(Some(&cached)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Tokens with rate limits or bindings are never answered from the
/// example's cache: every check of them reaches the server, so its rules
/// hold exactly.
#[tokio::test]
async fn limited_and_bound_tokens_are_checked_by_the_server_every_time() {
    let app = spawn_app().await;
    let (watcher, _) = app.create("example", &[WATCHER_ROLE]).await;
    let example = ExampleService::start(app.addr, &watcher, &[]).await;
    example.synced().await;
    let limited = CreateRequest {
        rate_limits: vec![crate::support::rate_limit("burst", 3, 3600)],
        ..create_request("limited", &["ci"])
    };
    let (limited, _) = create(&app.client, &app.admin_token, limited).await;
    let bound = CreateRequest {
        allowed_sources: vec!["127.0.0.1/32".into()],
        ..create_request("bound", &["ci"])
    };
    let (bound, _) = create(&app.client, &app.admin_token, bound).await;
    let (plain, _) = app.create("plain", &["ci"]).await;

    const VALID: &str = r#"sts_validations_total{outcome="valid"}"#;
    let before = app.metric(VALID).await;
    for _ in 0..5 {
        assert!(example.accepts(&bound).await);
        assert!(example.accepts(&plain).await);
    }
    // Five of the bound token, one of the plain one (then cached).
    assert_eq!(app.metric(VALID).await - before, 6.0);
    for _ in 0..3 {
        assert!(example.accepts(&limited).await);
    }
    let (status, _) = example.hello(Some(&limited)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the fourth check is over its limit"
    );
    assert!(
        example.health().await.contains("cached=1"),
        "only the plain token"
    );
}

/// A cached answer never outlives its token's expiration, nor a previous
/// secret's grace (a server with a real clock).
#[tokio::test]
async fn a_cached_answer_ends_with_its_expiration_and_its_previous_secrets_grace() {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    let server = ServerProcess::start(data_dir.path()).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    let (watcher, _) = create(&client, &admin, create_request("example", &[WATCHER_ROLE])).await;
    let example = ExampleService::start(server.addr, &watcher, &[]).await;
    example.synced().await;

    let expires = std::time::SystemTime::now() + Duration::from_secs(2);
    let expiring = CreateRequest {
        expiration: Some(expires.into()),
        ..create_request("expiring", &["ci"])
    };
    let (expiring, _) = create(&client, &admin, expiring).await;
    let (rotated, token) = create(&client, &admin, create_request("rotated", &["ci"])).await;
    let request = RotateRequest {
        id: token.id,
        grace_period: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
    };
    let rotation = client.clone().rotate(with_key(&admin, request)).await;
    let grace_ends = rotation
        .unwrap()
        .into_inner()
        .service_token
        .unwrap()
        .previous_secret_expiration
        .map(|t| std::time::SystemTime::try_from(t).unwrap())
        .unwrap();
    // Both cached (an answer that raced the rotation's event is not kept,
    // so the next ask keeps it).
    eventually("both answers cached", || async {
        assert!(example.accepts(&expiring).await && example.accepts(&rotated).await);
        example.health().await.contains("cached=2")
    })
    .await;
    // Asked until both are refused: none accepted past its end.
    let mut accepted_late = Vec::new();
    loop {
        let (a, b) = (
            example.accepts(&expiring).await,
            example.accepts(&rotated).await,
        );
        let now = std::time::SystemTime::now();
        if a && now > expires + REVOKED_WITHIN {
            accepted_late.push("expired token");
        }
        if b && now > grace_ends + REVOKED_WITHIN {
            accepted_late.push("previous secret");
        }
        if !a && !b {
            break;
        }
        assert!(
            now < expires + Duration::from_secs(10),
            "still accepted long after"
        );
    }
    assert!(accepted_late.is_empty(), "{accepted_late:?}");
}
