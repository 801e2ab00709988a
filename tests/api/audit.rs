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

use crate::{
    helpers::{channel, create_request, with_key},
    process::{ServerProcess, bootstrap},
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
    grpc.delete(with_key(&admin, DeleteRequest { id: reader_id }))
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
