//! The Watch stream and ReportUses: SYNCED, every change by id, heartbeats,
//! RESYNC for a client that falls behind, the watcher role, the bound on
//! open streams (apart from requests in flight), shutdown, a watcher that
//! loses its token, and uses reported from a caller's cache.

use std::time::{Duration, SystemTime};

use sts::{
    config::{ServerConfig, ServiceConfig},
    proto::{
        ReportUsesRequest, ReportedUse, RotateRequest, ServiceToken, UpdateRequest, UseOutcome,
        WatchEvent, WatchRequest, WatchResponse, token_service_client::TokenServiceClient,
    },
};
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::support::{
    TestApp, assert_code, eventually, server_config, spawn_app, spawn_app_with, with_key,
};

pub const WATCHER_ROLE: &str = "token-watcher";

/// Long enough for anything the server does at once, a heartbeat's
/// second included; only a broken server waits it out.
const WITHIN: Duration = Duration::from_secs(10);

pub async fn open(
    client: &TokenServiceClient<Channel>,
    watcher: &str,
) -> Result<Streaming<WatchResponse>, Status> {
    Ok(client
        .clone()
        .watch(with_key(watcher, WatchRequest {}))
        .await?
        .into_inner())
}

/// The next message, or the stream's end (`None`) or error.
pub async fn next(stream: &mut Streaming<WatchResponse>) -> Result<Option<WatchResponse>, Status> {
    tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("the stream says something within the bound")
}

/// The next message that is not a heartbeat.
async fn next_event(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    loop {
        let message = next(stream).await.unwrap().expect("the stream goes on");
        if message.event() != WatchEvent::Heartbeat {
            return message;
        }
    }
}

fn changed(id: u64) -> WatchResponse {
    WatchResponse {
        event: WatchEvent::Changed as i32,
        token_id: id,
        heartbeat_interval: None,
    }
}

async fn update(app: &TestApp, token: ServiceToken, path: &str) {
    app.client
        .clone()
        .update(app.admin(UpdateRequest {
            // No etag: the last write wins.
            service_token: Some(ServiceToken {
                etag: String::new(),
                ..token
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.into()],
            }),
        }))
        .await
        .unwrap();
}

async fn synced(stream: &mut Streaming<WatchResponse>) {
    let first = next(stream).await.unwrap().unwrap();
    assert_eq!(first.event(), WatchEvent::Synced);
    assert_eq!(
        first.heartbeat_interval,
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 0
        })
    );
}

#[tokio::test]
async fn a_stream_says_synced_then_every_change_by_id_and_beats_each_second() {
    let app = spawn_app().await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    let mut stream = open(&app.client, &watcher).await.unwrap();
    synced(&mut stream).await;

    let (_, token) = app.create("ci", &["ci"]).await;
    let id = token.id;
    update(
        &app,
        ServiceToken {
            disabled: true,
            ..token.clone()
        },
        "disabled",
    )
    .await;
    assert_eq!(next_event(&mut stream).await, changed(id));
    update(
        &app,
        ServiceToken {
            roles: vec!["other".into()],
            ..token.clone()
        },
        "roles",
    )
    .await;
    assert_eq!(next_event(&mut stream).await, changed(id));
    app.client
        .clone()
        .rotate(app.admin(RotateRequest {
            id,
            grace_period: None,
        }))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await, changed(id));
    // Revoked as leaked, by whoever holds the secret.
    let (leaked, leaked_token) = app.create("leaked", &["ci"]).await;
    app.client
        .clone()
        .revoke_leaked(sts::proto::RevokeLeakedRequest {
            tokens: vec![leaked],
        })
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await, changed(leaked_token.id));
    app.client
        .clone()
        .delete(app.admin(sts::proto::DeleteRequest {
            id,
            etag: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await, changed(id));

    // Quiet now: heartbeats, and nothing else.
    for _ in 0..2 {
        let beat = next(&mut stream).await.unwrap().unwrap();
        assert_eq!(beat.event(), WatchEvent::Heartbeat);
        assert_eq!((beat.token_id, beat.heartbeat_interval), (0, None));
    }
    let metrics = app.metrics_text().await;
    for line in [
        "sts_watch_streams 1",
        r#"sts_watch_events_total{event="synced"} 1"#,
        r#"sts_watch_events_total{event="changed"} 5"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    drop(stream);
    eventually("the stream is counted closed", || async {
        app.metrics_text().await.contains("sts_watch_streams 0")
    })
    .await;
}

#[tokio::test]
async fn watching_and_reporting_need_a_valid_token_with_the_watcher_role() {
    let app = spawn_app().await;
    let anonymous = app.client.clone().watch(WatchRequest {}).await;
    assert_code(anonymous, Code::Unauthenticated);
    let status = assert_code(
        open(&app.client, &app.admin_token).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains(WATCHER_ROLE), "{status:?}");
    let (checker, _) = app.create("checker", &["ci"]).await;
    assert_code(open(&app.client, &checker).await, Code::PermissionDenied);
    let report = |key: &str| {
        let mut client = app.client.clone();
        let request = with_key(key, ReportUsesRequest { uses: vec![] });
        async move { client.report_uses(request).await }
    };
    assert_code(report(&checker).await, Code::PermissionDenied);
    assert_code(report("svctok-notatokenatall").await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_watcher_whose_token_is_deleted_or_loses_the_role_loses_its_stream() {
    let app = spawn_app().await;
    let (watcher, token) = app.create("watcher", &[WATCHER_ROLE]).await;
    let mut stream = open(&app.client, &watcher).await.unwrap();
    synced(&mut stream).await;
    update(
        &app,
        ServiceToken {
            roles: vec!["ci".into()],
            ..token
        },
        "roles",
    )
    .await;
    let ended = loop {
        match next(&mut stream).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_code(ended, Code::PermissionDenied);

    let (watcher, token) = app.create("watcher-2", &[WATCHER_ROLE]).await;
    let mut stream = open(&app.client, &watcher).await.unwrap();
    synced(&mut stream).await;
    app.client
        .clone()
        .delete(app.admin(sts::proto::DeleteRequest {
            id: token.id,
            etag: String::new(),
        }))
        .await
        .unwrap();
    let ended = loop {
        match next(&mut stream).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_code(ended, Code::Unauthenticated);
}

#[tokio::test]
async fn streams_past_the_bound_are_refused_and_never_count_as_requests_in_flight() {
    let mut server = server_config();
    server.connection_limits.max_requests_in_flight = 1;
    let service = ServiceConfig {
        max_watch_streams: 2,
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server).await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    let mut first = open(&app.client, &watcher).await.unwrap();
    let mut second = open(&app.client, &watcher).await.unwrap();
    synced(&mut first).await;
    synced(&mut second).await;
    // Two streams open, one request allowed in flight: requests still pass.
    for _ in 0..3 {
        assert!(app.validate(&watcher).await.valid);
    }
    let status = assert_code(open(&app.client, &watcher).await, Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-watch-streams"),
        "{status:?}"
    );
    drop(first);
    let mut third = crate::support::eventually_some("a place frees up", || async {
        open(&app.client, &watcher).await.ok()
    })
    .await;
    synced(&mut third).await;
}

#[tokio::test]
async fn a_client_that_falls_behind_is_told_to_resync_and_the_stream_ends() {
    let service = ServiceConfig {
        watch_backlog: 16,
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    // A client with a tiny window: it stops taking messages at once.
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(256))
        .connect()
        .await
        .unwrap();
    let mut stream = open(&TokenServiceClient::new(channel), &watcher)
        .await
        .unwrap();
    synced(&mut stream).await;
    let (_, token) = app.create("busy", &["ci"]).await;
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let client = app.client.clone();
            let admin = app.admin_token.clone();
            let token = token.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    let description = format!("writer {writer}, change {n}");
                    client
                        .clone()
                        .update(with_key(
                            &admin,
                            UpdateRequest {
                                service_token: Some(ServiceToken {
                                    description,
                                    etag: String::new(),
                                    ..token.clone()
                                }),
                                update_mask: Some(prost_types::FieldMask {
                                    paths: vec!["description".into()],
                                }),
                            },
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // What it holds, then RESYNC, then the end: never a gap passed over.
    let mut heard = Vec::new();
    while let Some(message) = next(&mut stream).await.unwrap() {
        heard.push(message.event());
    }
    assert_eq!(heard.last(), Some(&WatchEvent::Resync), "{heard:?}");
    assert!(
        heard[..heard.len() - 1]
            .iter()
            .all(|e| matches!(e, WatchEvent::Changed | WatchEvent::Heartbeat)),
        "{heard:?}"
    );
    assert!(heard.len() < 1200, "{} messages", heard.len());
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sts_watch_resyncs_total{reason="lagged"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_ends_watch_streams_unavailable_instead_of_waiting_for_them() {
    let server = ServerConfig {
        shutdown_grace: Duration::from_secs(60),
        ..server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    let mut stream = open(&app.client, &watcher).await.unwrap();
    synced(&mut stream).await;
    let (server, _dir) = app.begin_shutdown();
    let ended = loop {
        match next(&mut stream).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = assert_code(ended, Code::Unavailable);
    assert!(status.message().contains("shutting down"), "{status:?}");
    // Well before the 60 s grace: the stream held nothing up.
    tokio::time::timeout(WITHIN, server)
        .await
        .expect("the server stops without waiting out the grace")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reported_uses_set_last_used_sources_and_usage_and_bad_ones_change_nothing() {
    let service = ServiceConfig {
        record_sources: true,
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    let (_, token) = app.create("cached", &["ci"]).await;
    let now = SystemTime::now();
    let at = prost_types::Timestamp::from(now);
    let used = |outcome: UseOutcome, source: &str| ReportedUse {
        token_id: token.id,
        at: Some(at),
        source_address: source.into(),
        outcome: outcome as i32,
        count: 0,
    };
    let report = |uses: Vec<ReportedUse>| {
        let mut client = app.client.clone();
        let request = with_key(&watcher, ReportUsesRequest { uses });
        async move { client.report_uses(request).await }
    };

    // Refused whole: nothing of a bad batch is noted.
    let status = assert_code(
        report(vec![
            used(UseOutcome::Valid, "10.1.2.3"),
            ReportedUse {
                token_id: 0,
                ..used(UseOutcome::Valid, "")
            },
        ])
        .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("uses[1].token_id"), "{status:?}");
    for bad in [
        used(UseOutcome::Unspecified, ""),
        used(UseOutcome::Valid, "10.1.2.3:80"),
        ReportedUse {
            at: None,
            ..used(UseOutcome::Valid, "")
        },
    ] {
        assert_code(report(vec![bad]).await, Code::InvalidArgument);
    }
    let too_many = vec![used(UseOutcome::Valid, ""); sts::service::MAX_REPORTED_USES + 1];
    assert_code(report(too_many).await, Code::InvalidArgument);
    app.service.write_last_used().await;
    let got = app.get(token.id).await.unwrap();
    assert_eq!(got.last_used_at, None);

    report(vec![
        used(UseOutcome::Valid, "10.1.2.3"),
        ReportedUse {
            count: 40,
            ..used(UseOutcome::Valid, "10.1.2.3")
        },
        used(UseOutcome::MissingRole, ""),
    ])
    .await
    .unwrap();
    app.service.write_last_used().await;
    let got = app.get(token.id).await.unwrap();
    assert!(got.last_used_at.is_some());
    let sources: Vec<&str> = got
        .recent_sources
        .iter()
        .map(|s| s.address.as_str())
        .collect();
    assert_eq!(sources, ["10.1.2.3"]);
    let usage = app
        .client
        .clone()
        .get_usage(app.admin(sts::proto::GetUsageRequest {
            id: token.id,
            days: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    let today = usage.days.last().unwrap();
    assert_eq!((today.valid, today.missing_role), (41, 1));
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sts_reported_uses_total{outcome="valid"} 41"#),
        "{metrics}"
    );
}

/// On PostgreSQL, a stream on one replica hears what is changed through
/// another (the change feed that keeps the replicas' caches true), and
/// beats while that feed is live.
#[tokio::test]
async fn on_postgres_a_stream_hears_changes_made_through_another_replica() {
    let Some(database) = crate::support::pg::TestDatabase::create("watch_replicas").await else {
        return;
    };
    let url = sts::config::StoreUrl::parse(&database.url).unwrap();
    let replica = || async {
        let store = sts::store::PostgresStore::connect(&url).await.unwrap();
        crate::support::spawn_app_on(tempfile::tempdir().unwrap(), std::sync::Arc::new(store)).await
    };
    let (a, b) = (replica().await, replica().await);
    let (watcher, _) = a.create("watcher", &[WATCHER_ROLE]).await;
    let mut stream = open(&b.client, &watcher).await.unwrap();
    synced(&mut stream).await;
    let (_, token) = a.create("ci", &["ci"]).await;
    update(
        &a,
        ServiceToken {
            disabled: true,
            ..token.clone()
        },
        "disabled",
    )
    .await;
    assert_eq!(next_event(&mut stream).await, changed(token.id));
    a.client
        .clone()
        .delete(a.admin(sts::proto::DeleteRequest {
            id: token.id,
            etag: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await, changed(token.id));
    let beat = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(beat.event(), WatchEvent::Heartbeat);
    drop(stream);
    a.stop().await;
    b.stop().await;
    database.drop().await;
}

/// On PostgreSQL, a replica whose change feed goes silent (its database
/// connection stalls) stops the heartbeats and tells its streams to
/// RESYNC: changes made meanwhile may never reach it.
#[tokio::test]
async fn a_replica_whose_change_feed_goes_silent_stops_beating_and_says_resync() {
    let Some(database) = crate::support::pg::TestDatabase::create("watch_feed_lost").await else {
        return;
    };
    let proxy = crate::support::pg::Proxy::to(database.server_addr()).await;
    let url = sts::config::StoreUrl::parse(&database.url_through(&proxy)).unwrap();
    let store = sts::store::PostgresStore::connect(&url).await.unwrap();
    let app =
        crate::support::spawn_app_on(tempfile::tempdir().unwrap(), std::sync::Arc::new(store))
            .await;
    let (watcher, _) = app.create("watcher", &[WATCHER_ROLE]).await;
    let mut stream = open(&app.client, &watcher).await.unwrap();
    synced(&mut stream).await;
    let beat = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(beat.event(), WatchEvent::Heartbeat);
    proxy.stall();
    let mut heard = Vec::new();
    while let Some(message) = next(&mut stream).await.unwrap() {
        heard.push(message.event());
    }
    // At most a beat already vouched for before the silence, then RESYNC.
    assert_eq!(heard.last(), Some(&WatchEvent::Resync), "{heard:?}");
    assert!(heard.len() <= 2, "{heard:?}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sts_watch_resyncs_total{reason="feed"} 1"#),
        "{metrics}"
    );
    drop(proxy);
    drop(app);
    database.drop().await;
}
