//! Rate limits shared through Redis (`--rate-limit-store`): three real
//! replicas on one PostgreSQL and one Redis hold a limit exactly, a change
//! of limits reaches every replica within the revocation bound, and a
//! Redis stopped mid-load is an outage the checks ride out by the policy
//! (open: each replica counts alone; closed: refused), logged once,
//! counted, readiness unchanged, and shared again once it is back.

use std::time::Duration;

use sts::{
    proto::{
        CreateRequest, InvalidReason, ServiceToken, UpdateRequest, ValidateRequest,
        ValidateResponse, token_service_client::TokenServiceClient,
    },
    rate_limit::{Limiter, OnStoreError, Shared},
};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::support::{
    ReadAnswer, assert_code, channel, create_request,
    logs::capture_logs,
    pg::TestDatabase,
    process::{ServerProcess, bootstrap_store},
    rate_limit as limit,
    redis::{PrivateRedis, redis_url},
    spawn_app_limited_by, with_key,
};

async fn validate(client: &TokenServiceClient<Channel>, token: &str) -> ValidateResponse {
    client
        .clone()
        .validate(ValidateRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A replica: the real binary on the shared database and the shared Redis.
struct Replica {
    /// Kept for its lifetime: dropping it stops the server.
    _server: ServerProcess,
    client: TokenServiceClient<Channel>,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    async fn start(store_url: &str, redis_url: &str) -> Replica {
        let data_dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with(
            data_dir.path(),
            &[
                ("STS_STORE", store_url),
                ("STS_RATE_LIMIT_STORE", redis_url),
            ],
        )
        .await;
        let client = TokenServiceClient::new(channel(server.addr).await);
        Replica {
            _server: server,
            client,
            _data_dir: data_dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_hold_a_limit_exactly_and_share_its_changes() {
    let Some(redis) = redis_url("three_replicas_on_one_redis") else {
        return;
    };
    let Some(database) = TestDatabase::create("shared_limits").await else {
        return;
    };
    let admin = bootstrap_store(&database.url).await;
    let (a, b, c) = tokio::join!(
        Replica::start(&database.url, &redis),
        Replica::start(&database.url, &redis),
        Replica::start(&database.url, &redis),
    );
    let replicas = [&a, &b, &c];
    let created = a
        .client
        .clone()
        .create(with_key(
            &admin,
            CreateRequest {
                rate_limits: vec![limit("shared", 30, 3600)],
                ..create_request("busy", &["r"])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let token = created.token;

    // 90 checks at once, 30 on each replica: 30 pass, wherever they land.
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        for replica in replicas {
            let client = replica.client.clone();
            let token = token.clone();
            checks.spawn(async move { validate(&client, &token).await });
        }
    }
    let mut passed = 0;
    while let Some(answer) = checks.join_next().await {
        let answer = answer.unwrap();
        if answer.valid {
            passed += 1;
        } else {
            assert_eq!(answer.reason(), InvalidReason::RateLimited, "{answer:?}");
        }
    }
    assert_eq!(passed, 30, "the documented bound: no check over the limit");
    for replica in replicas {
        let answer = validate(&replica.client, &token).await;
        assert_eq!(answer.reason(), InvalidReason::RateLimited);
        assert_eq!(answer.rate_limits[0].remaining, 0);
    }

    // A change on one replica: on every other within the revocation bound.
    let id = created.service_token.unwrap().id;
    a.client
        .clone()
        .update(with_key(
            &admin,
            UpdateRequest {
                service_token: Some(ServiceToken {
                    id,
                    rate_limits: vec![limit("shared", 40, 3600)],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["rate_limits".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    let on_c = validate(&c.client, &token).await;
    assert!(on_c.valid, "new terms start whole: {on_c:?}");
    assert_eq!(on_c.rate_limits[0].limit, 40);
    assert_eq!(on_c.rate_limits[0].remaining, 39);
    let on_b = validate(&b.client, &token).await;
    assert_eq!(on_b.rate_limits[0].remaining, 38, "one count, shared");
    drop((a, b, c));
    database.drop().await;
}

#[tokio::test]
async fn redis_stopped_mid_load_is_ridden_out_by_each_replica_alone_then_shared_again() {
    if redis_url("redis_stopped_mid_load").is_none() {
        return;
    }
    let mut redis = PrivateRedis::start().await;
    let (_guard, logs) = capture_logs();
    let shared = Shared::new(&redis.url(), &redis.url(), OnStoreError::Open).unwrap();
    let app = spawn_app_limited_by(Limiter::Shared(Box::new(shared))).await;
    let (token, _) = app
        .create_with(CreateRequest {
            rate_limits: vec![limit("minute", 10, 60)],
            ..create_request("steady", &["r"])
        })
        .await;
    for remaining in (7..10).rev() {
        let answer = app.validate(&token).await;
        assert_eq!(answer.rate_limits[0].remaining, remaining);
    }

    // Redis goes away mid-load: every check is still answered, by this
    // replica's own counters (which start whole: it never counted alone).
    redis.stop();
    let mut answers = Vec::new();
    for _ in 0..15 {
        answers.push(app.validate(&token).await);
    }
    let passed = answers.iter().filter(|a| a.valid).count();
    assert_eq!(passed, 10, "counted alone, still limited: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.valid || a.reason() == InvalidReason::RateLimited)
    );
    assert_eq!(
        app.metric("sts_rate_limit_store_errors_total{policy=\"open\"}")
            .await,
        15.0
    );
    assert_eq!(
        app.rest().get("/readyz").send().await.unwrap().status(),
        200
    );
    let warned = logs
        .events()
        .into_iter()
        .filter(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the rate-limit store is away"))
        })
        .count();
    assert_eq!(warned, 1, "one line per outage");

    // Back (empty: it kept nothing): shared again after its pause.
    redis.restart().await;
    crate::support::eventually("the checks use Redis again", || async {
        app.validate(&token).await;
        logs.events().iter().any(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("answers again"))
        })
    })
    .await;
    let errors = app
        .metric("sts_rate_limit_store_errors_total{policy=\"open\"}")
        .await;
    let answer = app.validate(&token).await;
    assert!(answer.valid, "{answer:?}");
    assert_eq!(
        app.metric("sts_rate_limit_store_errors_total{policy=\"open\"}")
            .await,
        errors
    );
}

#[tokio::test]
async fn with_the_closed_policy_a_limited_token_is_refused_unavailable_while_redis_is_away() {
    if redis_url("closed_policy").is_none() {
        return;
    }
    let mut redis = PrivateRedis::start().await;
    let shared = Shared::new(&redis.url(), &redis.url(), OnStoreError::Closed).unwrap();
    let app = spawn_app_limited_by(Limiter::Shared(Box::new(shared))).await;
    let (limited, _) = app
        .create_with(CreateRequest {
            rate_limits: vec![limit("minute", 10, 60)],
            ..create_request("limited", &["r"])
        })
        .await;
    let (unlimited, _) = app.create("unlimited", &["r"]).await;
    assert!(app.validate(&limited).await.valid);
    redis.stop();
    let refused = app
        .client
        .clone()
        .validate(ValidateRequest {
            token: limited.clone(),
            ..Default::default()
        })
        .await;
    let status = assert_code(refused, Code::Unavailable);
    assert!(status.message().contains("rate-limit store"), "{status:?}");
    let http = app
        .rest()
        .get("/api/server/status")
        .header("x-api-key", &limited)
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 503);
    // A token without limits never needs Redis.
    assert!(app.validate(&unlimited).await.valid);
    assert_eq!(
        app.metric("sts_rate_limit_store_errors_total{policy=\"closed\"}")
            .await,
        2.0
    );
    // The admin, managing, needs no limit either.
    let listed = app
        .rest()
        .get("/api/security/tokens")
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
}

/// Redis' script and this process compute the same answers, step by step:
/// random limits (the largest terms included), costs (0, above a limit)
/// and times (the clock held, moved, moved back).
#[tokio::test]
async fn the_script_in_redis_answers_exactly_as_the_local_arithmetic() {
    use rand::Rng;
    use sts::model::{RateLimits, TokenId};
    use sts::rate_limit::{Local, Spent};
    let Some(url) = redis_url("the_script_answers_as_local") else {
        return;
    };
    let shared = Shared::new(&url, &url, OnStoreError::Closed).unwrap();
    let mut rng = rand::rng();
    for _ in 0..20 {
        let local = Local::default();
        let id = TokenId::random();
        let count = rng.random_range(1..=4);
        let texts: Vec<String> = (0..count)
            .map(|i| {
                let (limit, period) = if rng.random_bool(0.1) {
                    (100_000_000, "24h".to_owned())
                } else {
                    (
                        rng.random_range(1..=50u64),
                        format!("{}s", rng.random_range(1..=120u64)),
                    )
                };
                format!("l{i}={limit}/{period}")
            })
            .collect();
        let limits = RateLimits::parse_texts("rate_limits", &texts).unwrap();
        let mut now: u64 = 1_800_000_000_000 + rng.random_range(0..1_000_000);
        for _ in 0..40 {
            let cost = match rng.random_range(0..10) {
                0 => 0,
                1 => rng.random_range(40..200_000_000),
                _ => rng.random_range(1..4),
            };
            now = match rng.random_range(0..10) {
                0 => now - rng.random_range(0..2_000),
                1..=4 => now,
                _ => now + rng.random_range(0..20_000),
            };
            let expected = local.spend(id, &limits, cost, now);
            let Spent::Counted(answer) = shared.spend(id, &limits, cost, now).await else {
                panic!("Redis at {url} did not answer");
            };
            assert_eq!(answer, expected, "{texts:?}, cost {cost} at {now}");
        }
    }
}

/// The password a `--rate-limit-store` URL below carries; never printed.
const PASSWORD: &str = "r3dispw0rd";

#[tokio::test]
async fn a_rate_limit_store_url_is_never_printed_with_its_password() {
    // Refused at start-up: not a redis:// URL.
    for via_env in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = crate::support::process::sts_server();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path());
        let url = format!("http://u:{PASSWORD}@127.0.0.1:1");
        if via_env {
            command.env("STS_RATE_LIMIT_STORE", &url);
        } else {
            command.arg("--rate-limit-store").arg(&url);
        }
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("expected a redis:// URL, got http://u:***@127.0.0.1:1/"),
            "{stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    // Served with a Redis that is not there: the outage's log line and the
    // start-up line name it without the password.
    let dir = tempfile::tempdir().unwrap();
    let admin = crate::support::process::bootstrap(dir.path());
    let url = format!("redis://:{PASSWORD}@127.0.0.1:1");
    let server =
        ServerProcess::start_with(dir.path(), &[("STS_RATE_LIMIT_STORE", url.as_str())]).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    let created = client
        .clone()
        .create(with_key(
            &admin,
            CreateRequest {
                rate_limits: vec![limit("m", 5, 60)],
                ..create_request("limited", &["r"])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(validate(&client, &created.token).await.valid);
    let (_, log) = server.terminate().await;
    let log = log.join("\n");
    assert!(log.contains("redis://:***@127.0.0.1:1"), "{log}");
    assert!(log.contains("the rate-limit store is away"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn replicas_counting_alone_say_so_at_start_up_once_a_token_has_limits() {
    let Some(database) = TestDatabase::create("limits_without_a_shared_store").await else {
        return;
    };
    let admin = bootstrap_store(&database.url).await;
    const WARNING: &str = "each counting alone";
    let start = |extra: Option<(&'static str, &'static str)>| {
        let url = database.url.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut env = vec![("STS_STORE", url.as_str())];
            env.extend(extra);
            let server = ServerProcess::start_with(dir.path(), &env).await;
            (server, dir)
        }
    };
    let (plain, _dir) = start(None).await;
    let client = TokenServiceClient::new(channel(plain.addr).await);
    client
        .clone()
        .create(with_key(
            &admin,
            CreateRequest {
                rate_limits: vec![limit("m", 5, 60)],
                ..create_request("limited", &["r"])
            },
        ))
        .await
        .unwrap();
    let (_, log) = plain.terminate().await;
    assert!(!log.join("\n").contains(WARNING), "no token had limits yet");
    let (again, _dir) = start(None).await;
    let (_, log) = again.terminate().await;
    assert!(log.join("\n").contains(WARNING), "{}", log.join("\n"));
    database.drop().await;
}
