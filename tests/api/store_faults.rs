//! When the store fails: clear UNAVAILABLE / INTERNAL statuses, never a
//! wrong "valid", never a panic, and service resumes when the store does.

use std::sync::{Arc, atomic::Ordering};

use sts::{
    config::Config,
    proto::{DeleteRequest, InvalidReason, ListRequest, ValidateRequest},
    token::Token,
};
use tonic::Code;

use crate::helpers::{FaultyStore, assert_code, create_request, restart, spawn_app, spawn_app_on};

#[tokio::test]
async fn a_failing_store_is_unavailable_not_a_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone(), Config::default()).await;
    let (secret, created) = app.create("ci", &["r"]).await;

    store.failing.store(true, Ordering::SeqCst);
    let mut client = app.client.clone();
    let validate = |token: &str| ValidateRequest {
        token: token.into(),
    };
    assert_code(client.validate(validate(&secret)).await, Code::Unavailable);
    assert_code(
        client.create(app.admin(create_request("x", &["r"]))).await,
        Code::Unavailable,
    );
    assert_code(
        client.list(app.admin(ListRequest::default())).await,
        Code::Unavailable,
    );
    assert_code(
        client
            .delete(app.admin(DeleteRequest { id: created.id }))
            .await,
        Code::Unavailable,
    );
    // A malformed token needs no store to be rejected.
    let malformed = client.validate(validate("garbage")).await.unwrap();
    assert_eq!(malformed.into_inner().reason(), InvalidReason::Malformed);

    store.failing.store(false, Ordering::SeqCst);
    assert!(app.validate(&secret).await.valid);
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_in_lists_and_internal_on_lookup() {
    let app = spawn_app().await;
    let (damaged, damaged_record) = app.create("damaged", &["r"]).await;
    let (intact, _) = app.create("intact", &["r"]).await;
    let dir = app.stop().await;

    {
        let db = sled::open(dir.path()).unwrap();
        let tokens = db.open_tree("tokens").unwrap();
        tokens
            .insert(
                damaged_record.id.to_be_bytes(),
                &b"\xff\xff not a record"[..],
            )
            .unwrap();
        db.flush().unwrap();
    }

    let app = restart(dir).await;
    let names: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"intact".to_owned()), "{names:?}");
    assert!(!names.contains(&"damaged".to_owned()), "{names:?}");
    assert!(app.validate(&intact).await.valid);
    let status = assert_code(
        app.client
            .clone()
            .validate(ValidateRequest { token: damaged })
            .await,
        Code::Internal,
    );
    assert!(status.message().contains("corrupt"), "{status:?}");
    // Unknown tokens still answer normally.
    let unknown = app.validate(Token::generate().expose_secret()).await;
    assert_eq!(unknown.reason(), InvalidReason::NotFound);
}

#[tokio::test]
async fn http_answers_503_when_the_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = crate::helpers::spawn_router_on(dir, store.clone()).await;
    let key = app.admin_token.clone();
    store.failing.store(true, Ordering::SeqCst);
    for (method, path) in [
        ("GET", "/api/server/status"),
        ("GET", "/api/auth"),
        ("GET", "/api/security/tokens"),
        ("GET", "/metrics"),
    ] {
        let response = app
            .call(method, path, &[("x-api-key", key.as_bytes())], "")
            .await;
        assert_eq!(response.status, 503, "{method} {path}");
        assert_eq!(response.json()["error"], "UNAVAILABLE");
    }
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(app.admin("GET", "/api/server/status", "").await.status, 200);
}
