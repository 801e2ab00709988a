//! The audit trail: every Create and Delete, and every refused or failed
//! management call, is one structured event (target `sts::audit`) saying
//! which call, its outcome, when, and who made it (the caller's token id and
//! name, when the caller could be identified). The secrets test covers that
//! no event holds a secret.

use serde_json::Value;
use sts::{
    proto::{DeleteRequest, ListRequest, token_service_client::TokenServiceClient},
    service::AUDIT,
};

use crate::support::ReadAnswer;
use crate::support::Rest;
use crate::{
    support::process::{ServerProcess, bootstrap},
    support::{channel, create_request, with_key},
};

#[tokio::test]
async fn every_management_call_leaves_an_audit_event_naming_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    let server = ServerProcess::start_with(dir.path(), &[("STS_LOG_FORMAT", "json")]).await;
    let mut grpc = TokenServiceClient::new(channel(server.addr).await);
    let http = reqwest::Client::new();

    let created = grpc
        .create(with_key(&admin, create_request("reader", &["reader"])))
        .await
        .unwrap()
        .into_inner();
    let reader = created.token;
    let reader_id = created.service_token.unwrap().id;
    grpc.create(with_key(&reader, create_request("x", &["r"])))
        .await
        .unwrap_err();
    grpc.create(create_request("x", &["r"])).await.unwrap_err();
    grpc.create(with_key(&admin, create_request("x", &["a b"])))
        .await
        .unwrap_err();
    let deleted = http
        .delete(format!(
            "http://{}/api/security/tokens/{reader_id}",
            server.addr
        ))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    grpc.delete(with_key(
        &admin,
        DeleteRequest {
            id: reader_id,
            ..Default::default()
        },
    ))
    .await
    .unwrap_err();
    grpc.list(with_key(&reader, ListRequest::default()))
        .await
        .unwrap_err();

    let (exit, log) = server.terminate().await;
    assert!(exit.success());
    let events: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == AUDIT)
        .collect();
    let admin_name = "bootstrap-admin";
    let expected = [
        ("Create", "OK", Some(admin_name)),
        ("Create", "PERMISSION_DENIED", Some("reader")),
        ("Create", "UNAUTHENTICATED", None),
        ("Create", "INVALID_ARGUMENT", Some(admin_name)),
        ("Delete", "OK", Some(admin_name)),
        ("Delete", "NOT_FOUND", Some(admin_name)),
        ("List", "UNAUTHENTICATED", None),
    ];
    assert_eq!(events.len(), expected.len(), "{events:#?}");
    let admin_id = events[0]["fields"]["caller.id"].clone();
    assert!(admin_id.is_u64(), "{:#?}", events[0]);
    for (event, (rpc, outcome, caller)) in events.iter().zip(expected) {
        let fields = &event["fields"];
        assert_eq!(fields["rpc"], rpc, "{event:#}");
        assert_eq!(fields["outcome"], outcome, "{event:#}");
        assert_eq!(fields["caller.name"].as_str(), caller, "{event:#}");
        assert!(event["timestamp"].is_string(), "{event:#}");
        if caller == Some(admin_name) {
            assert_eq!(fields["caller.id"], admin_id, "{event:#}");
        }
        if outcome != "OK" {
            assert!(fields["reason"].is_string(), "{event:#}");
        }
    }
    assert_eq!(events[0]["fields"]["token.name"], "reader");
    assert_eq!(events[0]["fields"]["token.roles"], "reader");
    assert_eq!(events[4]["fields"]["token.id"], reader_id);
}

/// Refused calls in the burst below, and what the whole log may grow by
/// meanwhile: a few events, where each call used to be a line of its own.
const BURST: usize = 1500;
const LOG_BUDGET_BYTES: usize = 8 * 1024;

#[tokio::test]
async fn an_unauthenticated_flood_is_summarized_in_a_bounded_log_and_counted_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    let server = ServerProcess::start_with(dir.path(), &[("STS_LOG_FORMAT", "json")]).await;
    let addr = server.addr;
    let http = reqwest::Client::new();
    let mut grpc = TokenServiceClient::new(channel(addr).await);
    let url = Rest::at(addr).url("/api/security/tokens");

    // Two-thirds REST without a credential, one third gRPC with an unknown
    // (well-formed) token, a few at a time.
    let unknown = sts::token::Secret::generate();
    for round in 0..BURST / 3 {
        let (a, b) = tokio::join!(http.get(&url).send(), http.get(&url).send());
        assert_eq!(a.unwrap().status(), 401);
        assert_eq!(b.unwrap().status(), 401);
        let refused = grpc
            .list(with_key(unknown.expose_secret(), ListRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{round}");
    }
    // An authenticated caller's refusal is still an event of its own.
    grpc.create(with_key(&admin, create_request("x", &["a b"])))
        .await
        .unwrap_err();

    let metrics = http.get(Rest::at(addr).url("/metrics")).text_body().await;
    // Summed over the transports (the flood came over gRPC and REST).
    let counted = |series: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|n| n.parse::<usize>().ok())
            .sum::<usize>()
    };
    assert_eq!(
        counted(r#"sts_management_calls_total{rpc="List",status="UNAUTHENTICATED",caller="none","#),
        BURST,
        "every refusal is counted: {metrics}"
    );

    let (exit, log) = server.terminate().await;
    assert!(exit.success());
    let bytes: usize = log.iter().map(|l| l.len() + 1).sum();
    assert!(
        bytes <= LOG_BUDGET_BYTES,
        "{BURST} refusals grew the log by {bytes} bytes: {log:#?}"
    );
    let events: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == AUDIT)
        .collect();
    // The first one in full, then counts by RPC, source and reason.
    let first = &events[0]["fields"];
    assert_eq!(first["outcome"], "UNAUTHENTICATED", "{events:#?}");
    assert_eq!(first["source"], "127.0.0.1", "{events:#?}");
    let summaries: Vec<&Value> = events
        .iter()
        .map(|e| &e["fields"])
        .filter(|f| f["count"].is_u64())
        .collect();
    let total: u64 = summaries.iter().map(|f| f["count"].as_u64().unwrap()).sum();
    assert_eq!(total as usize, BURST - 1, "{summaries:#?}");
    for summary in &summaries {
        assert_eq!(summary["source"], "127.0.0.1", "{summary:#}");
        assert!(
            matches!(
                (summary["rpc"].as_str(), summary["reason"].as_str()),
                (Some("List"), Some("missing" | "not_found"))
            ),
            "{summary:#}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["outcome"] == "INVALID_ARGUMENT"
                && e["fields"]["caller.name"] == "bootstrap-admin"),
        "{events:#?}"
    );
}

#[tokio::test]
async fn refusal_summaries_are_written_every_interval_without_waiting_for_shutdown() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let service = sts::config::ServiceConfig {
        refusal_summary_interval: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let app = crate::support::spawn_app_with(service, crate::support::server_config()).await;
    for _ in 0..5 {
        app.client
            .clone()
            .list(ListRequest::default())
            .await
            .unwrap_err();
    }
    // Each interval's first refusal in full, the rest counted into its
    // summary. How the five fall into 50 ms intervals depends on how fast
    // this machine runs them; that all five are accounted for, with at
    // least one summary written before shutdown, does not.
    let refused = |e: &serde_json::Value| e["fields"]["outcome"] == "UNAUTHENTICATED";
    let full = || {
        logs.target(AUDIT)
            .iter()
            .filter(|e| refused(e) && e["fields"]["count"].is_null())
            .count()
    };
    let summarized = || -> u64 {
        logs.target(AUDIT)
            .iter()
            .filter(|e| e["fields"]["reason"] == "missing")
            .filter_map(|e| e["fields"]["count"].as_u64())
            .sum()
    };
    crate::support::eventually("a summary of the further refusals", || async {
        summarized() > 0 && full() as u64 + summarized() == 5
    })
    .await;
    // A later refusal is accounted for too (in full when it opens a new
    // interval, else in that interval's summary), still without shutdown.
    app.client
        .clone()
        .list(ListRequest::default())
        .await
        .unwrap_err();
    crate::support::eventually("the sixth refusal accounted for", || async {
        full() as u64 + summarized() == 6
    })
    .await;
}

#[tokio::test]
async fn undecodable_requests_are_counted_and_an_authenticated_one_audited() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let app = crate::support::spawn_app().await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // A gRPC frame whose payload is no protobuf message (a truncated varint).
    let frame = [0u8, 0, 0, 0, 3, 0x08, 0xff, 0xff];
    let call = |method: &str, key: Option<&str>| {
        let mut request = http
            .post(format!(
                "http://{}/stackstate.servicetoken.v1.TokenService/{method}",
                app.addr
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frame.to_vec());
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    for (method, key) in [
        ("List", Some(app.admin_token.as_str())),
        ("Create", None),
        ("Validate", None),
    ] {
        let answer = call(method, key).await.unwrap();
        let headers = answer.headers();
        assert_eq!(headers["grpc-status"], "13", "{method}: {headers:?}");
        let message = headers["grpc-message"]
            .to_str()
            .unwrap()
            .replace("%20", " ");
        assert!(
            message.starts_with("not a valid protobuf message of the expected type"),
            "{message}"
        );
    }
    let metrics = || async { app.rest().get("/metrics").text_body().await };
    crate::support::eventually("each undecodable call counted", || async {
        let metrics = metrics().await;
        ["List", "Create", "Validate"].iter().all(|rpc| {
            metrics.contains(&format!(
                "sts_undecodable_requests_total{{rpc=\"{rpc}\"}} 1"
            ))
        })
    })
    .await;
    // The admin's List in full, naming the admin; the anonymous Create as
    // the first unauthenticated refusal of its interval.
    let refused: Vec<Value> = crate::support::eventually_some("both audit events", || async {
        let refused: Vec<Value> = logs
            .target(AUDIT)
            .into_iter()
            .map(|e| e["fields"].clone())
            .filter(|f| f["outcome"] == "INTERNAL")
            .collect();
        (refused.len() == 2).then_some(refused)
    })
    .await;
    assert_eq!(refused[0]["rpc"], "List");
    assert_eq!(refused[0]["caller.name"], "test-admin");
    assert_eq!(refused[1]["rpc"], "Create");
    assert!(refused[1]["caller.name"].is_null());
}

#[tokio::test]
async fn an_authenticated_flood_is_summarized_per_caller_call_and_role() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    // One interval for the whole test; the summary is written at shutdown.
    let service = sts::config::ServiceConfig {
        refusal_summary_interval: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let app = crate::support::spawn_router_with(service).await;
    let (token, id) = app.create("ci", &["viewer"]).await;
    let key = [("x-api-key", token.as_bytes())];
    const N: usize = 500;
    for _ in 0..N {
        let refused = app.call("GET", "/api/auth?role=admin", &key, "").await;
        assert_eq!(refused.status, 403);
        let refused = app.call("GET", "/api/security/tokens", &key, "").await;
        assert_eq!(refused.status, 403);
    }
    // Another role is another kind: its first refusal is in full too.
    let refused = app.call("GET", "/api/auth?role=deployer", &key, "").await;
    assert_eq!(refused.status, 403);

    let mine = |event: &Value| event["fields"]["caller.id"] == id;
    let before_shutdown = logs.target(AUDIT).into_iter().filter(mine).count();
    assert_eq!(before_shutdown, 3, "only the first of each kind, at once");
    // Metrics count every one.
    assert_eq!(
        app.metric("sts_role_checks_total{outcome=\"refused\"}")
            .await,
        (N + 1) as f64
    );
    app.service.shutdown().await.unwrap();
    let events: Vec<Value> = logs.target(AUDIT).into_iter().filter(mine).collect();
    let counted: u64 = events
        .iter()
        .filter_map(|e| e["fields"]["count"].as_u64())
        .sum();
    assert_eq!(counted, 2 * (N as u64 - 1), "{events:#?}");
    // In full: the first of each (call, role); then one summary each.
    let full: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["fields"]["count"].is_null())
        .map(|e| {
            let f = &e["fields"];
            (
                f["rpc"].as_str().unwrap().into(),
                f["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("RoleCheck", "admin"),
        ("List", "stackstate-admin"),
        ("RoleCheck", "deployer"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(r, o)| (r.to_string(), o.to_string()))
        .collect();
    assert_eq!(full, expected, "{events:#?}");
    assert_eq!(events.len(), 5, "{events:#?}");
    for event in &events {
        assert_eq!(event["fields"]["caller.name"], "ci", "{event:#}");
        assert_eq!(event["fields"]["outcome"], "PERMISSION_DENIED", "{event:#}");
        assert_eq!(event["level"], "WARN");
    }
}

#[tokio::test]
async fn unauthenticated_reviews_and_revocations_that_revoke_nothing_are_summarized() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let service = sts::config::ServiceConfig {
        refusal_summary_interval: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let app = crate::support::spawn_router_with(service).await;
    let form = [(
        "content-type",
        b"application/x-www-form-urlencoded".as_slice(),
    )];
    let json = [("content-type", b"application/json".as_slice())];
    for _ in 0..4 {
        let answer = app
            .call("POST", "/oauth2/introspect", &form, "token=x")
            .await;
        assert_eq!(answer.status, 401);
        let answer = app
            .call("POST", "/api/kubernetes/tokenreview", &json, "{}")
            .await;
        assert_eq!(answer.status, 401);
    }
    let unknown = sts::token::Secret::generate().expose_secret().to_owned();
    let revoke = |secret: &str| format!(r#"{{"tokens": ["{secret}"]}}"#);
    for secret in [unknown.as_str(); 6].into_iter().chain(["nope"; 4]) {
        let answer = app
            .call(
                "POST",
                "/api/security/tokens/revoke",
                &json,
                &revoke(secret),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    for _ in 0..3 {
        let answer = app
            .call(
                "POST",
                "/api/security/tokens/revoke",
                &json,
                &revoke(&unknown),
            )
            .await;
        assert_eq!(answer.status, 429);
    }
    app.service.shutdown().await.unwrap();
    let mut events = logs.target(AUDIT);
    events.retain(|e| e["fields"]["rpc"] != "bootstrap");
    let count = |rpc: &str, reason: &str| -> u64 {
        events
            .iter()
            .filter(|e| e["fields"]["rpc"] == rpc && e["fields"]["reason"] == reason)
            .filter_map(|e| e["fields"]["count"].as_u64())
            .sum()
    };
    // The first (an introspection) in full, every other one counted.
    assert_eq!(events[0]["fields"]["rpc"], "Introspect", "{events:#?}");
    assert_eq!(count("Introspect", "missing"), 3, "{events:#?}");
    assert_eq!(count("TokenReview", "missing"), 4, "{events:#?}");
    assert_eq!(count("RevokeLeaked", "not_found"), 6, "{events:#?}");
    assert_eq!(count("RevokeLeaked", "malformed"), 4, "{events:#?}");
    assert_eq!(count("RevokeLeaked", "rate_limited"), 3, "{events:#?}");
    assert!(events.len() <= 6, "{events:#?}");
}

/// The ids of the audit events with `message`.
fn audited_ids(logs: &crate::support::logs::CapturedLogs, message: &str) -> Vec<u64> {
    logs.target(AUDIT)
        .iter()
        .filter(|e| e["fields"]["message"] == message)
        .map(|e| e["fields"]["token.id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn every_committed_change_is_audited_once_whatever_the_callers_deadline() {
    use std::{collections::BTreeSet, time::Duration};
    let (_guard, logs) = crate::support::logs::capture_logs();
    let app = crate::support::spawn_app().await;
    let admin_id = crate::support::list_all(&app.client, &app.admin_token).await[0].id;
    const CALLS: usize = 40;
    // Creates and deletes whose callers give up after 1 ms, a few at a
    // time: many give up while the store syncs, after it committed.
    let mut answered = 0;
    for n in 0..CALLS {
        let mut request = with_key(&app.admin_token, create_request(&format!("t{n}"), &["r"]));
        request.set_timeout(Duration::from_millis(1));
        answered += usize::from(app.client.clone().create(request).await.is_ok());
    }
    let stored = || async {
        let all = crate::support::list_all(&app.client, &app.admin_token).await;
        all.into_iter()
            .map(|t| t.id)
            .filter(|id| *id != admin_id)
            .collect::<BTreeSet<_>>()
    };
    crate::support::eventually("every committed create audited", || async {
        audited_ids(&logs, "service token created")
            .into_iter()
            .collect::<BTreeSet<_>>()
            == stored().await
    })
    .await;
    let created = audited_ids(&logs, "service token created");
    assert_eq!(created.len(), stored().await.len(), "one audit line each");
    assert!(
        answered < created.len(),
        "no caller gave up after a commit: the test shows nothing ({answered} answered, {} created)",
        created.len()
    );

    for id in &created {
        let mut request = with_key(
            &app.admin_token,
            DeleteRequest {
                id: *id,
                ..Default::default()
            },
        );
        request.set_timeout(Duration::from_millis(1));
        let _ = app.client.clone().delete(request).await;
    }
    crate::support::eventually("every committed delete audited", || async {
        let deleted: BTreeSet<u64> = audited_ids(&logs, "service token deleted")
            .into_iter()
            .collect();
        let remaining = stored().await;
        deleted.is_disjoint(&remaining) && deleted.len() + remaining.len() == created.len()
    })
    .await;
    let deleted = audited_ids(&logs, "service token deleted");
    let unique: BTreeSet<u64> = deleted.iter().copied().collect();
    assert_eq!(unique.len(), deleted.len(), "one audit line each");
}
