//! A failure of the server's own reaches clients as a fixed message and an
//! incident id, never its detail: no database-driver text, path or record
//! in any gRPC or HTTP answer, whoever asks (`Validate` needs no
//! credential). The detail goes to the log, under the same incident id.

use std::sync::{Arc, atomic::Ordering};

use sts::proto::{DeleteRequest, ListRequest, token_service_client::TokenServiceClient};
use tonic::Code;

use crate::support::Rest;
use crate::{
    support::faults::{FaultyStore, INJECTED_CAUSE},
    support::logs::capture_logs,
    support::pg::{Proxy, TestDatabase},
    support::process::{ServerProcess, bootstrap_store},
    support::{channel, create_request, eventually_some, spawn_app_on, validate_on, with_key},
};

const UNAVAILABLE: &str = "the token store is unavailable; try again later";
const CORRUPT: &str = "the token store holds a corrupt record; an operator must repair it";

/// The incident id of a message that must be exactly `fixed` followed by
/// `(incident <16 hex digits>; the server's log has the details)`.
fn incident(message: &str, fixed: &str) -> String {
    let id = message
        .strip_prefix(fixed)
        .and_then(|rest| rest.strip_prefix(" (incident "))
        .and_then(|rest| rest.strip_suffix("; the server's log has the details)"))
        .unwrap_or_else(|| panic!("not the fixed text {fixed:?}: {message:?}"));
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{message:?}"
    );
    id.to_owned()
}

/// `GET /api/server/status` with `token`: the HTTP status and the JSON body.
async fn status_with(addr: std::net::SocketAddr, token: &str) -> (u16, serde_json::Value) {
    let response = Rest::at(addr)
        .get("/api/server/status")
        .header("x-api-key", token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn store_failures_reach_every_client_as_a_fixed_text_and_the_log_in_full() {
    let (_logging, logs) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    // Never validated, so never cached: checking it needs the store.
    let (secret, created) = app.create("ci", &["r"]).await;
    let http = reqwest::Client::new();
    let url = |path: &str| app.rest().url(path);
    let tokens = url("/api/security/tokens");
    let one_token = format!("{tokens}/{}", created.id);

    // (what was asked, the fixed text expected, the message answered)
    let mut answers: Vec<(String, &str, String)> = Vec::new();
    store.failing.store(true, Ordering::SeqCst);
    let mut client = app.client.clone();
    let grpc = [
        ("Validate", validate_on(&client, &secret).await.map(|_| ())),
        (
            "Create",
            client
                .create(app.admin(create_request("x", &["r"])))
                .await
                .map(|_| ()),
        ),
        (
            "List",
            client
                .list(app.admin(ListRequest::default()))
                .await
                .map(|_| ()),
        ),
        (
            "Delete",
            client
                .delete(app.admin(DeleteRequest {
                    id: created.id,
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
        ),
    ];
    for (rpc, answer) in grpc {
        let status = answer.expect_err(rpc);
        assert_eq!(status.code(), Code::Unavailable, "{rpc}: {status:?}");
        answers.push((rpc.into(), UNAVAILABLE, status.message().to_owned()));
    }
    let requests = [
        http.get(url("/api/server/status"))
            .header("x-api-key", &secret),
        http.get(url("/api/server/info"))
            .header("x-api-key", &secret),
        http.get(url("/api/auth")).header("x-api-key", &secret),
        http.get(&tokens).header("x-api-key", &app.admin_token),
        http.post(&tokens)
            .header("x-api-key", &app.admin_token)
            .body(r#"{"name": "x", "roles": ["r"]}"#),
        http.delete(&one_token)
            .header("x-api-key", &app.admin_token),
    ];
    for request in requests {
        let request = request.build().unwrap();
        let asked = format!("{} {}", request.method(), request.url().path());
        let response = http.execute(request).await.unwrap();
        assert_eq!(response.status(), 503, "{asked}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "UNAVAILABLE", "{asked}: {body}");
        let message = body["message"].as_str().unwrap().to_owned();
        answers.push((asked, UNAVAILABLE, message));
    }

    // An internal failure: the store finds a corrupt record.
    store.failing.store(false, Ordering::SeqCst);
    store.corrupt.store(true, Ordering::SeqCst);
    let status = validate_on(&client, &secret).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    answers.push(("Validate".into(), CORRUPT, status.message().to_owned()));
    let (code, body) = status_with(app.addr, &secret).await;
    assert_eq!(code, 500);
    assert_eq!(body["error"], "INTERNAL", "{body}");
    let message = body["message"].as_str().unwrap().to_owned();
    answers.push(("GET /api/server/status".into(), CORRUPT, message));

    let events = logs.events();
    let mut incidents = std::collections::HashSet::new();
    for (asked, fixed, message) in &answers {
        for detail in ["password", "10.0.0.7", "injected", "sled", "token 42"] {
            assert!(!message.contains(detail), "{asked}: {message:?}");
        }
        let id = incident(message, fixed);
        incidents.insert(id.clone());
        // The operator finds the whole story under that id, in one line
        // however many requests met the same failure.
        let logged: Vec<_> = events
            .iter()
            .filter(|event| {
                event["fields"]["incident"] == id.as_str() && event["fields"]["count"].is_null()
            })
            .collect();
        assert_eq!(logged.len(), 1, "{asked}: incident {id}: {logged:#?}");
        let error = logged[0]["fields"]["error"].as_str().unwrap();
        assert!(error.contains(INJECTED_CAUSE), "{asked}: {}", logged[0]);
    }
    // The same failure met by many requests is one incident, not one each.
    assert!(incidents.len() < answers.len(), "{incidents:?}");
}

// The proxy runs on this test's runtime, beside blocking process calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_driver_text_reaches_the_log_and_no_client() {
    let Some(database) = TestDatabase::create("disclosure").await else {
        return;
    };
    let proxy = Proxy::to(database.server_addr()).await;
    let store_url = database.url_through(&proxy);
    let admin = bootstrap_store(&store_url).await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &[("STS_STORE", &store_url)]).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    // Never validated, so never cached: checking it needs the database.
    let token = client
        .create(with_key(&admin, create_request("ci", &["r"])))
        .await
        .unwrap()
        .into_inner()
        .token;

    proxy.down();
    let status = eventually_some("Validate UNAVAILABLE", || async {
        match validate_on(&client, &token).await {
            Err(status) if status.code() == Code::Unavailable => Some(status),
            Err(status) => panic!("{status:?}"),
            Ok(answer) => {
                assert!(answer.valid, "{answer:?}");
                None
            }
        }
    })
    .await;
    let (code, body) = status_with(server.addr, &token).await;
    assert_eq!(code, 503);
    let answers = [
        status.message().to_owned(),
        body["message"].as_str().unwrap().to_owned(),
    ];
    let incidents: Vec<String> = answers
        .iter()
        .map(|message| incident(message, UNAVAILABLE))
        .collect();

    let (exit, log) = server.terminate().await;
    assert!(exit.success(), "{exit:?}");
    for id in &incidents {
        let line = log
            .iter()
            .find(|line| line.contains(id.as_str()))
            .unwrap_or_else(|| panic!("incident {id} is not in the log: {log:#?}"));
        // The context, then the driver's own words after it.
        let (_, driver) = line
            .split_once("PostgreSQL failed: ")
            .unwrap_or_else(|| panic!("no driver text: {line}"));
        assert!(!driver.trim().is_empty(), "{line}");
        for answer in &answers {
            assert!(
                !answer.contains(driver.trim()),
                "{answer:?} holds {driver:?}"
            );
        }
    }
    drop(proxy);
    database.drop().await;
}
