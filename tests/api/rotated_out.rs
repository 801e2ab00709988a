//! A secret rotated out with a grace period keeps passing checks until the
//! grace ends, but never manages: otherwise whoever leaked the old admin
//! secret could rotate the new one away (grace 0) and hold the only valid
//! secret, and the audit would read as an ordinary self-rotation.

use std::time::Duration;

use sts::{
    proto::{
        DeleteRequest, GetRequest, ListRequest, RotateRequest, UpdateRequest, ValidateRequest,
    },
    service::AUDIT,
};
use tonic::Code;

use crate::{
    support::logs::capture_logs,
    support::{TestApp, TestRouter, create_request, spawn_app, spawn_router, with_key},
};

impl TestRouter {
    /// The admin token's own id.
    async fn admin_id(&self) -> u64 {
        let status = self.admin("GET", "/api/server/status", "").await;
        status.json()["serviceToken"]["id"].as_u64().unwrap()
    }

    /// Rotates token `id` (as the admin, over REST) with `grace`; the new secret.
    async fn rotate(&self, id: u64, grace: Duration) -> String {
        let body = format!(r#"{{"gracePeriodSeconds":{}}}"#, grace.as_secs());
        let path = format!("/api/security/tokens/{id}/rotate");
        let answer = self.admin("POST", &path, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["token"].as_str().unwrap().to_owned()
    }
}

const REFUSAL: &str = "a rotated-out secret cannot manage tokens";

/// Rotates the admin token with an hour's grace: (the old secret, the new).
async fn rotate_admin(app: &TestApp) -> (String, String) {
    let id = app.admin_id().await;
    let rotated = app.rotate(id, Duration::from_secs(3600)).await.unwrap();
    (app.admin_token.clone(), rotated.token)
}

fn assert_refused<T: std::fmt::Debug>(answer: Result<T, tonic::Status>, call: &str) {
    let status = answer.expect_err(call);
    assert_eq!(status.code(), Code::Unauthenticated, "{call}: {status:?}");
    assert!(status.message().contains(REFUSAL), "{call}: {status:?}");
}

#[tokio::test]
async fn over_grpc_every_management_call_refuses_a_rotated_out_secret() {
    let (_guard, logs) = capture_logs();
    let app = spawn_app().await;
    let admin_id = app.admin_id().await;
    let (_, victim) = app.create("victim", &["r"]).await;
    let (old, new) = rotate_admin(&app).await;
    let client = || app.client.clone();

    assert_refused(
        client()
            .create(with_key(&old, create_request("x", &["r"])))
            .await,
        "Create",
    );
    assert_refused(
        client().list(with_key(&old, ListRequest::default())).await,
        "List",
    );
    assert_refused(
        client()
            .get(with_key(&old, GetRequest { id: victim.id }))
            .await,
        "Get",
    );
    let mut disabled = victim.clone();
    disabled.disabled = true;
    let update = UpdateRequest {
        service_token: Some(disabled),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    assert_refused(client().update(with_key(&old, update)).await, "Update");
    // The takeover: rotate the admin's own token with no grace.
    let takeover = RotateRequest {
        id: admin_id,
        grace_period: None,
    };
    assert_refused(client().rotate(with_key(&old, takeover)).await, "Rotate");
    assert_refused(
        client()
            .delete(with_key(
                &old,
                DeleteRequest {
                    id: victim.id,
                    ..Default::default()
                },
            ))
            .await,
        "Delete",
    );

    // The old secret still passes checks, and says it is the old one; the
    // operator's new secret was not touched.
    let check = |token: &str| ValidateRequest {
        token: token.to_owned(),
        ..Default::default()
    };
    let by_old = client().validate(check(&old)).await.unwrap().into_inner();
    assert!(by_old.valid && by_old.previous_secret);
    let by_new = client().validate(check(&new)).await.unwrap().into_inner();
    assert!(by_new.valid && !by_new.previous_secret);
    client()
        .get(with_key(&new, GetRequest { id: victim.id }))
        .await
        .expect("the current secret manages");

    // Each refusal is audited, naming the token whose old secret it was.
    let refusals: Vec<_> = logs
        .target(AUDIT)
        .into_iter()
        .filter(|e| {
            e["fields"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(REFUSAL))
        })
        .collect();
    assert!(!refusals.is_empty(), "{:#?}", logs.target(AUDIT));
    for event in &refusals {
        assert_eq!(event["fields"]["caller.id"], admin_id, "{event}");
        assert_eq!(event["fields"]["outcome"], "UNAUTHENTICATED", "{event}");
    }
}

#[tokio::test]
async fn over_http_management_refuses_it_and_checks_accept_it_saying_so() {
    let router = spawn_router().await;
    let (_, victim) = router.create("victim", &["r"]).await;
    let id = router.admin_id().await;
    let rotated = router.rotate(id, Duration::from_secs(3600)).await;
    let old = router.admin_token.clone();
    let key = |secret: &str| vec![("x-api-key", secret.as_bytes().to_vec())];
    let as_old = key(&old);
    let headers: Vec<(&str, &[u8])> = as_old.iter().map(|(n, v)| (*n, v.as_slice())).collect();

    let management = [
        (
            "POST",
            "/api/security/tokens".to_owned(),
            r#"{"name":"x","roles":["r"]}"#,
        ),
        ("GET", "/api/security/tokens".to_owned(), ""),
        ("GET", format!("/api/security/tokens/{victim}"), ""),
        (
            "PATCH",
            format!("/api/security/tokens/{victim}"),
            r#"{"disabled":true}"#,
        ),
        ("POST", format!("/api/security/tokens/{id}/rotate"), ""),
        ("DELETE", format!("/api/security/tokens/{victim}"), ""),
    ];
    for (method, path, body) in &management {
        let answer = router.call(method, path, &headers, body).await;
        answer.assert_unauthorized();
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(REFUSAL), "{method} {path}: {message}");
    }

    // Checks accept it, and every answer says it was a rotated-out secret.
    for path in [
        "/api/server/status",
        "/api/server/info",
        "/api/auth",
        "/api/auth/x?role=stackstate-admin",
    ] {
        let answer = router.call("GET", path, &headers, "").await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(
            answer.header("x-service-token-previous-secret"),
            Some("true"),
            "{path}"
        );
    }
    let as_new = key(&rotated);
    let new_headers: Vec<(&str, &[u8])> = as_new.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let answer = router
        .call("GET", "/api/server/status", &new_headers, "")
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-service-token-previous-secret"), None);
}

#[tokio::test]
async fn a_reviewers_rotated_out_secret_still_reviews_and_is_told_so() {
    let router = spawn_router().await;
    let (reviewer, reviewer_id) = router.create("reviewer", &["token-reviewer"]).await;
    let (reviewed, _) = router.create("reviewed", &["r"]).await;
    router.rotate(reviewer_id, Duration::from_secs(3600)).await;
    let headers: [(&str, &[u8]); 2] = [
        ("x-api-key", reviewer.as_bytes()),
        ("content-type", b"application/x-www-form-urlencoded"),
    ];
    let answer = router
        .call(
            "POST",
            "/oauth2/introspect",
            &headers,
            &format!("token={reviewed}"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["active"], true);
    assert_eq!(
        answer.header("x-service-token-previous-secret"),
        Some("true")
    );

    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": reviewed},
    });
    let headers: [(&str, &[u8]); 2] = [
        ("x-api-key", reviewer.as_bytes()),
        ("content-type", b"application/json"),
    ];
    let answer = router
        .call(
            "POST",
            "/api/kubernetes/tokenreview",
            &headers,
            &review.to_string(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["status"]["authenticated"], true);
    assert_eq!(
        answer.header("x-service-token-previous-secret"),
        Some("true")
    );

    // And a rotated-out secret is still enough to revoke its token.
    let (leaked, leaked_id) = router.create("leaked", &["r"]).await;
    router.rotate(leaked_id, Duration::from_secs(3600)).await;
    let answer = router
        .call(
            "POST",
            "/api/security/tokens/revoke",
            &[("content-type", b"application/json")],
            &serde_json::json!({"tokens": [leaked]}).to_string(),
        )
        .await;
    assert_eq!(answer.json()["results"][0], "revoked", "{}", answer.text());
}
