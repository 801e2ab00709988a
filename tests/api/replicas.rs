//! Two real `sts-server` replicas on one PostgreSQL behave as one service:
//! a token created on one validates on the other at once, a delete on one
//! is refused by the other within 100 ms even where it had the token cached
//! (and so is a change that takes access away: a disable, a removed role, a
//! shortened expiration, a rotation that ends the old secret),
//! creates on both never collide, and a database outage mid-traffic gives
//! UNAVAILABLE (never a wrong answer) and not-ready until the replicas
//! reconnect by themselves.
//!
//! Outages: a TCP proxy between the replicas and the shared database cuts
//! every connection and refuses new ones for as long as the test says; and
//! a private cluster (initdb, pg_ctl) is restarted for real mid-traffic,
//! since the machine's own database is shared with every other test.

use std::{sync::Arc, time::Duration};

use sts::proto::{
    CreateRequest, CreateResponse, DeleteRequest, InvalidReason, RotateRequest, ServiceToken,
    UpdateRequest, ValidateRequest, token_service_client::TokenServiceClient,
};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::support::ReadAnswer;
use crate::{
    support::pg::PrivateCluster,
    support::pg::{Proxy, TestDatabase},
    support::process::{ServerProcess, bootstrap_store},
    support::{channel, eventually, list_all, validate_on, with_key},
};

/// A replica: the real binary on the shared database.
struct Replica {
    server: ServerProcess,
    client: TokenServiceClient<Channel>,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    async fn start(store_url: &str) -> Replica {
        // --data-dir is unused with --store; a private one keeps it tidy.
        let data_dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with(data_dir.path(), &[("STS_STORE", store_url)]).await;
        let client = TokenServiceClient::new(channel(server.addr).await);
        Replica {
            server,
            client,
            _data_dir: data_dir,
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        self.server.rest().metric(name).await
    }

    async fn create(&self, admin: &str, name: &str) -> CreateResponse {
        let answer = self.client.clone().create(create(admin, name)).await;
        answer.unwrap().into_inner()
    }

    /// Deletes `created` through this replica; returns when it was acknowledged.
    async fn delete(&self, admin: &str, created: &CreateResponse) -> Instant {
        let id = created.service_token.as_ref().unwrap().id;
        self.client
            .clone()
            .delete(with_key(
                admin,
                DeleteRequest {
                    id,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        Instant::now()
    }

    /// `/readyz` answers 200 and gRPC health says SERVING.
    async fn ready(&self) -> bool {
        self.readiness().await == (true, true)
    }

    /// Both `/readyz` and gRPC health say not ready.
    async fn unready(&self) -> bool {
        self.readiness().await == (false, false)
    }

    /// gRPC health says the process is alive (what a liveness probe asks).
    async fn alive(&self) -> bool {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let request = HealthCheckRequest {
            service: sts::server::LIVENESS.into(),
        };
        HealthClient::new(channel(self.server.addr).await)
            .check(request)
            .await
            .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
    }

    async fn readiness(&self) -> (bool, bool) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let http = self
            .server
            .rest()
            .get("/readyz")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        let request = HealthCheckRequest {
            service: sts::server::SERVICE_NAME.into(),
        };
        let grpc = HealthClient::new(channel(self.server.addr).await)
            .check(request)
            .await
            .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving);
        (http, grpc)
    }
}

fn create(admin: &str, name: &str) -> tonic::Request<CreateRequest> {
    with_key(
        admin,
        CreateRequest {
            name: name.into(),
            roles: vec!["reader".into(), "writer".into()],
            expiration: None,
            ..Default::default()
        },
    )
}

/// The admin token bootstrapped into the store at `url`, and two replicas on it.
async fn replicas_on(url: &str) -> (String, Replica, Replica) {
    let admin = bootstrap_store(url).await;
    (admin, Replica::start(url).await, Replica::start(url).await)
}

/// After an outage, B caches again (its feed vouches for it), and a delete
/// of `doomed` on A reaches B's cache within the promised 100 ms.
async fn the_delete_feed_is_back(a: &Replica, b: &Replica, admin: &str, doomed: &CreateResponse) {
    let hits = b.metric("sts_validation_cache_hits_total").await;
    eventually("B's cache in use again", || async {
        assert!(validate_on(&b.client, &doomed.token).await.unwrap().valid);
        b.metric("sts_validation_cache_hits_total").await > hits
    })
    .await;
    let acknowledged = a.delete(admin, doomed).await;
    // The promised window, not a wait for anything.
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    assert!(!validate_on(&b.client, &doomed.token).await.unwrap().valid);
}

/// Two replicas on a fresh schema, and the admin token bootstrapped there.
async fn two_replicas(test: &str) -> Option<(TestDatabase, String, Replica, Replica)> {
    let database = TestDatabase::create(test).await?;
    let (admin, a, b) = replicas_on(&database.url).await;
    Some((database, admin, a, b))
}

#[tokio::test]
async fn a_token_made_on_one_replica_works_on_the_other_and_a_delete_reaches_it_within_100_ms() {
    let Some((database, admin, a, b)) = two_replicas("replicas_one_service").await else {
        return;
    };
    let mut delays = Vec::new();
    for i in 0..20 {
        let created = a.create(&admin, &format!("t{i}")).await;
        // At once on the other replica, with its roles; over HTTP too.
        let on_b = validate_on(&b.client, &created.token).await.unwrap();
        assert!(on_b.valid, "created on A, refused by B");
        assert_eq!(on_b.service_token.unwrap().roles, ["reader", "writer"]);
        let http = b
            .server
            .rest()
            .get("/api/auth")
            .header("x-api-key", &created.token)
            .send()
            .await
            .unwrap();
        assert_eq!(http.status(), 200);
        // B now has it cached; the delete goes through A.
        for _ in 0..3 {
            assert!(validate_on(&b.client, &created.token).await.unwrap().valid);
        }
        let acknowledged = a.delete(&admin, &created).await;
        // Measured: how long B still said valid.
        loop {
            let answer = validate_on(&b.client, &created.token).await.unwrap();
            if !answer.valid {
                assert_eq!(answer.reason(), InvalidReason::NotFound);
                break;
            }
            assert!(acknowledged.elapsed() < Duration::from_secs(1));
        }
        delays.push(acknowledged.elapsed());
        // The promise: from 100 ms after the acknowledgement, refused. (Not
        // a timing guess: past the bound a replica cannot answer from cache.)
        tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
        assert!(!validate_on(&b.client, &created.token).await.unwrap().valid);
        assert!(!validate_on(&a.client, &created.token).await.unwrap().valid);
    }
    delays.sort();
    eprintln!(
        "delete on A to refused on B: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays.last().unwrap()
    );
    assert!(
        b.metric("sts_validation_cache_hits_total").await > 0.0,
        "B's cache was in play"
    );
    drop((a, b));
    database.drop().await;
}

/// `token` is valid on `replica` (and so now in its cache).
async fn cached_on(replica: &Replica, token: &str) {
    for _ in 0..3 {
        assert!(validate_on(&replica.client, token).await.unwrap().valid);
    }
}

#[tokio::test]
async fn a_change_that_takes_access_away_reaches_the_other_replica_within_100_ms() {
    let Some((database, admin, a, b)) = two_replicas("replicas_changes").await else {
        return;
    };
    let update = |token: ServiceToken, paths: &[&str]| {
        with_key(
            &admin,
            UpdateRequest {
                service_token: Some(token),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        )
    };
    // Disabled on A: refused by B (which had it cached) within the bound.
    let created = a.create(&admin, "disabled").await;
    let token = created.service_token.clone().unwrap();
    cached_on(&b, &created.token).await;
    let disabled = ServiceToken {
        disabled: true,
        ..token.clone()
    };
    a.client
        .clone()
        .update(update(disabled, &["disabled"]))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    let answer = validate_on(&b.client, &created.token).await.unwrap();
    assert_eq!(answer.reason(), InvalidReason::Disabled);

    // A role removed on A: B's answer lacks it, and forward-auth refuses it.
    let created = a.create(&admin, "demoted").await;
    cached_on(&b, &created.token).await;
    let demoted = ServiceToken {
        roles: vec!["reader".into()],
        ..created.service_token.clone().unwrap()
    };
    a.client
        .clone()
        .update(update(demoted, &["roles"]))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    let answer = validate_on(&b.client, &created.token).await.unwrap();
    assert_eq!(answer.service_token.unwrap().roles, ["reader"]);
    let gated = b
        .server
        .rest()
        .get("/api/auth?role=writer")
        .header("x-api-key", &created.token)
        .send()
        .await
        .unwrap();
    assert_eq!(gated.status(), 403);

    // Bound on A to sources the check does not come from: B refuses it
    // within the bound, and lets it through from one of them.
    let created = a.create(&admin, "narrowed").await;
    cached_on(&b, &created.token).await;
    let narrowed = ServiceToken {
        allowed_sources: vec!["192.0.2.0/24".into(), "2001:db8::/32".into()],
        ..created.service_token.clone().unwrap()
    };
    a.client
        .clone()
        .update(update(narrowed, &["allowed_sources"]))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    let answer = validate_on(&b.client, &created.token).await.unwrap();
    assert_eq!(answer.reason(), InvalidReason::SourceNotAllowed);
    let from = |source: &str| ValidateRequest {
        token: created.token.clone(),
        source_address: source.into(),
        ..Default::default()
    };
    for (source, valid) in [
        ("192.0.2.9", true),
        ("2001:db8::9", true),
        ("198.51.100.1", false),
    ] {
        let answer = b
            .client
            .clone()
            .validate(from(source))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.valid, valid, "{source}: {answer:?}");
    }

    // An expiration brought forward on A: B refuses from then on.
    let created = a.create(&admin, "shortened").await;
    cached_on(&b, &created.token).await;
    let soon = std::time::SystemTime::now() + Duration::from_millis(300);
    let shortened = ServiceToken {
        expiration: Some(soon.into()),
        ..created.service_token.clone().unwrap()
    };
    a.client
        .clone()
        .update(update(shortened, &["expiration"]))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_millis(400);
    tokio::time::sleep_until(until).await;
    let answer = validate_on(&b.client, &created.token).await.unwrap();
    assert_eq!(answer.reason(), InvalidReason::Expired);

    // Rotated on A without grace: the old secret is refused by B.
    let created = a.create(&admin, "rotated").await;
    cached_on(&b, &created.token).await;
    let id = created.service_token.as_ref().unwrap().id;
    let rotated = a
        .client
        .clone()
        .rotate(with_key(
            &admin,
            RotateRequest {
                id,
                grace_period: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let acknowledged = Instant::now();
    tokio::time::sleep_until(acknowledged + Duration::from_millis(100)).await;
    let old = validate_on(&b.client, &created.token).await.unwrap();
    assert_eq!(old.reason(), InvalidReason::NotFound);
    let new = validate_on(&b.client, &rotated.token).await.unwrap();
    assert!(new.valid);
    assert_eq!(new.service_token.unwrap().id, id, "the same token");
    assert!(
        b.metric("sts_validation_cache_hits_total").await > 0.0,
        "B's cache was in play"
    );
    drop((a, b));
    database.drop().await;
}

#[tokio::test]
async fn replicas_starting_together_on_an_empty_database_both_come_up() {
    let Some(database) = TestDatabase::create("replicas_start_together").await else {
        return;
    };
    // Both migrate the empty schema at the same moment.
    let (a, b) = tokio::join!(Replica::start(&database.url), Replica::start(&database.url));
    let admin = bootstrap_store(&database.url).await;
    for replica in [&a, &b] {
        assert!(validate_on(&replica.client, &admin).await.unwrap().valid);
        assert!(replica.ready().await);
    }
    use sqlx::Row;
    let migrations = database
        .query("SELECT count(*) AS n FROM _sqlx_migrations")
        .await;
    assert_eq!(
        migrations[0].get::<i64, _>("n"),
        crate::upgrade::migration_count(),
        "each migration ran once"
    );
    drop((a, b));
    database.drop().await;
}

#[tokio::test]
async fn creates_on_both_replicas_at_once_never_collide() {
    let Some((database, admin, a, b)) = two_replicas("replicas_concurrent_creates").await else {
        return;
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..60 {
        let mut client = if i % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        let request = create(&admin, &format!("t{i}"));
        calls.spawn(async move { client.create(request).await.unwrap().into_inner() });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(created) = calls.join_next().await {
        assert!(ids.insert(created.unwrap().service_token.unwrap().id));
    }
    assert_eq!(ids.len(), 60);
    let on_a: Vec<u64> = list_all(&a.client, &admin)
        .await
        .iter()
        .map(|t| t.id)
        .collect();
    let on_b: Vec<u64> = list_all(&b.client, &admin)
        .await
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.len(), 61, "60 and the admin");
    drop((a, b));
    database.drop().await;
}

// The proxy runs on this test's runtime, beside blocking process calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_and_not_ready_until_the_replicas_reconnect() {
    let Some(database) = TestDatabase::create("replicas_outage").await else {
        return;
    };
    let proxy = Proxy::to(database.server_addr()).await;
    let (admin, a, b) = replicas_on(&database.url_through(&proxy)).await;
    let kept = a.create(&admin, "kept").await;
    let doomed = a.create(&admin, "doomed").await;
    for replica in [&a, &b] {
        assert!(
            validate_on(&replica.client, &kept.token)
                .await
                .unwrap()
                .valid
        );
        assert!(
            validate_on(&replica.client, &doomed.token)
                .await
                .unwrap()
                .valid
        );
        assert!(replica.ready().await);
    }

    proxy.down();
    // Every answer now is UNAVAILABLE or a correct "valid" (never a refusal
    // that is wrong, never a "valid" for something else) until the caches
    // are dropped; then only UNAVAILABLE.
    for replica in [&a, &b] {
        eventually("UNAVAILABLE for a token that cannot be checked", || async {
            match validate_on(&replica.client, &kept.token).await {
                Err(status) => status.code() == Code::Unavailable,
                Ok(answer) => {
                    assert!(answer.valid, "a kept token refused during the outage");
                    false
                }
            }
        })
        .await;
        eventually("not ready (HTTP and gRPC health)", || async {
            replica.unready().await
        })
        .await;
        // Alive all the same: a liveness probe must not restart every
        // replica because the database is away.
        assert!(replica.alive().await);
        let create = replica
            .client
            .clone()
            .create(create(&admin, "during"))
            .await;
        assert_eq!(create.unwrap_err().code(), Code::Unavailable);
    }

    proxy.up();
    for replica in [&a, &b] {
        eventually("ready again", || async { replica.ready().await }).await;
        eventually("valid again", || async {
            validate_on(&replica.client, &kept.token)
                .await
                .is_ok_and(|answer| answer.valid)
        })
        .await;
    }
    // And the delete feed is back.
    the_delete_feed_is_back(&a, &b, &admin, &doomed).await;

    for replica in [a, b] {
        let (status, log) = replica.server.terminate().await;
        assert!(status.success(), "{status:?}");
        assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    }
    drop(proxy);
    database.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_database_restart_mid_traffic_gives_no_wrong_answer_and_heals_itself() {
    // Runs where the PostgreSQL tests run, on a cluster of its own.
    if std::env::var(crate::support::pg::DATABASE_URL_VAR).is_err() {
        eprintln!(
            "skipping the real restart: {} is not set",
            crate::support::pg::DATABASE_URL_VAR
        );
        return;
    }
    let Some(cluster) = PrivateCluster::start(None).await else {
        return;
    };
    let (admin, a, b) = replicas_on(&cluster.url()).await;
    let kept = a.create(&admin, "kept").await;
    let doomed = a.create(&admin, "doomed").await;

    // Traffic on both replicas all through the restart: every answer is a
    // correct "valid" or UNAVAILABLE.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut traffic = tokio::task::JoinSet::new();
    for client in [a.client.clone(), b.client.clone()] {
        let (stop, token) = (stop.clone(), kept.token.clone());
        traffic.spawn(async move {
            let (mut valid, mut unavailable) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match validate_on(&client, &token).await {
                    Ok(answer) => {
                        assert!(answer.valid, "a kept token refused: {answer:?}");
                        valid += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        unavailable += 1;
                    }
                }
            }
            (valid, unavailable)
        });
    }
    cluster.pg_ctl("restart").await;
    for replica in [&a, &b] {
        eventually("ready after the restart", || async {
            replica.ready().await
        })
        .await;
    }
    // The delete feed came back too.
    the_delete_feed_is_back(&a, &b, &admin, &doomed).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(counts) = traffic.join_next().await {
        let (valid, unavailable) = counts.unwrap();
        eprintln!("through the restart: {valid} valid, {unavailable} UNAVAILABLE");
        assert!(valid > 0);
    }
    for replica in [a, b] {
        let (status, log) = replica.server.terminate().await;
        assert!(status.success(), "{status:?}");
        assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
        // The restart was seen: the feed lost its connection and dropped the cache.
        assert!(
            log.iter().any(|l| l.contains("validation cache cleared")),
            "{log:#?}"
        );
    }
    cluster.pg_ctl("stop").await;
}

#[tokio::test]
async fn a_database_outage_is_known_within_a_second_and_calls_then_fail_at_once() {
    let Some(database) = TestDatabase::create("replicas_outage_bound").await else {
        return;
    };
    let proxy = Proxy::to(database.server_addr()).await;
    let url = database.url_through(&proxy);
    let _admin = bootstrap_store(&url).await;
    let replica = Replica::start(&url).await;
    assert!(replica.ready().await);
    let unknown = sts::token::Secret::generate().expose_secret().to_owned();

    // Gone without a word: connections to it hang rather than fail.
    proxy.silent();
    let cut = Instant::now();
    eventually("not ready", || async { replica.unready().await }).await;
    // The stated bound (a check every 500 ms, each given 500 ms), with
    // room for this shared machine's scheduling.
    let known = cut.elapsed();
    assert!(
        known < Duration::from_millis(1500),
        "not ready after {known:?}"
    );
    // Known away: a call that needs the store fails at once, not after
    // the pool's acquire timeout (2 s) each.
    for _ in 0..5 {
        let asked = Instant::now();
        let refused = validate_on(&replica.client, &unknown).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
    }
    proxy.up();
    eventually("ready again", || async { replica.ready().await }).await;
    assert!(!validate_on(&replica.client, &unknown).await.unwrap().valid);
    drop(proxy);
    database.drop().await;
}

/// Resumes a PostgreSQL backend stopped with SIGSTOP when dropped, so a
/// failing test leaves none stopped in the machine's shared cluster.
struct Stopped(i32);

impl Stopped {
    /// Stops backend `pid` (the cluster runs on this machine, and the tests
    /// as a user who may signal it): its socket stays open and silent.
    fn stop(pid: i32) -> Stopped {
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(stopped.success(), "cannot stop PostgreSQL backend {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test]
async fn a_change_feed_that_goes_silent_is_logged_counted_shown_and_listened_again() {
    let Some(database) = TestDatabase::create("replicas_feed_stall").await else {
        return;
    };
    let name = format!("sts-feed-{}", database.schema);
    let url = format!("{}&application_name={name}", database.url);
    let admin = bootstrap_store(&url).await;
    let replica = Replica::start(&url).await;
    let feed_state = || async {
        let body: serde_json::Value = replica.server.rest().get("/readyz").json_body().await;
        body["change_feed"].as_str().unwrap_or("absent").to_owned()
    };
    let listener = format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = '{name}' AND query LIKE 'LISTEN%'"
    );
    let listening = || async {
        let rows = database.query(&listener).await;
        let pids: Vec<i32> = rows.iter().map(|row| sqlx::Row::get(row, "pid")).collect();
        pids
    };
    eventually("the feed is live", || async {
        feed_state().await == "live" && replica.metric("sts_store_feed_live ").await == 1.0
    })
    .await;
    let first = crate::support::eventually_some("the feed's backend", || async {
        listening().await.first().copied()
    })
    .await;

    // The feed's connection goes quiet without closing.
    let stopped = Stopped::stop(first);
    eventually("the stall is counted", || async {
        replica.metric("sts_store_feed_stalls_total ").await >= 1.0
    })
    .await;
    // Listening again on a new connection, and live.
    eventually("live again on a new connection", || async {
        feed_state().await == "live" && listening().await.iter().any(|pid| *pid != first)
    })
    .await;
    // Checks were right throughout, and still are.
    let created = replica.create(&admin, "after").await;
    assert!(
        validate_on(&replica.client, &created.token)
            .await
            .unwrap()
            .valid
    );
    drop(stopped);
    let (_, log) = replica.server.terminate().await;
    let silent = log
        .iter()
        .filter(|l| l.contains("change feed went silent"))
        .count();
    assert_eq!(silent, 1, "{log:#?}");
    database.drop().await;
}
