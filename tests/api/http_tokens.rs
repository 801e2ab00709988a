//! StackState-compatible REST for tokens, at router level: the same rules,
//! the same admin check and the same errors as gRPC, in JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sts::model::CheckContext;

use sts::clock::Clock;

use crate::support::{TestRouter, spawn_router};

const TOKENS: &str = "/api/security/tokens";

async fn validate(app: &TestRouter, token: &str) -> bool {
    matches!(
        app.service
            .validate(token, &CheckContext::default())
            .await
            .unwrap(),
        sts::service::Validation::Valid(..)
    )
}

#[tokio::test]
async fn create_answers_the_secret_once_and_it_works() {
    let app = spawn_router().await;
    let expiry = app.clock.now() + Duration::from_secs(86_400);
    let expiry_ms = expiry.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let body = format!(
        r#"{{"name": " my-service-token ", "roles": ["stackstate-k8s-troubleshooter"], "expiryDate": {expiry_ms}}}"#
    );
    let response = app.admin("POST", TOKENS, &body).await;
    assert_eq!(response.status, 200, "{:?}", response.json());
    let created = response.json();
    assert_eq!(created["name"], "my-service-token");
    assert_eq!(created["expiration"], expiry_ms);
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("svctok-"));
    assert!(validate(&app, token).await);

    let listed = app.admin("GET", TOKENS, "").await.json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == created["id"])
        .unwrap()
        .clone();
    // StackState's fields first, as StackState has them; then the
    // lifecycle's, camel-cased like them.
    let keys: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys[..4],
        ["id", "name", "roles", "expiration"],
        "StackState's fields, in its order"
    );
    let created_at = entry["createdAt"].as_i64().unwrap();
    assert_eq!(
        entry,
        serde_json::json!({
            "id": created["id"],
            "name": "my-service-token",
            "roles": ["stackstate-k8s-troubleshooter"],
            "expiration": expiry_ms,
            "description": "",
            "labels": {},
            "disabled": false,
            "createdAt": created_at,
            "createdBy": entry["createdBy"],
            "updatedAt": created_at,
            "etag": entry["etag"],
        })
    );
    // Quoted, as HTTP's `ETag` and `If-Match` carry it.
    assert_eq!(entry["etag"].as_str().unwrap().len(), 34);
    assert!(
        entry["createdBy"]
            .as_str()
            .unwrap()
            .ends_with(" (test-admin)")
    );
    assert!(entry.get("token").is_none(), "list never shows a secret");
}

#[tokio::test]
async fn create_without_expiry_never_expires_and_accepts_any_content_type() {
    let app = spawn_router().await;
    // curl -d sends application/x-www-form-urlencoded unless told otherwise.
    let key = app.admin_token.clone();
    let response = app
        .call(
            "POST",
            TOKENS,
            &[
                ("x-api-key", key.as_bytes()),
                ("content-type", b"application/x-www-form-urlencoded"),
            ],
            r#"{"name": "ci", "roles": ["r"]}"#,
        )
        .await;
    assert_eq!(response.status, 200);
    let created = response.json();
    assert!(created.get("expiration").is_none());
    app.clock.advance(Duration::from_secs(100 * 365 * 86_400));
    assert!(validate(&app, created["token"].as_str().unwrap()).await);
}

#[tokio::test]
async fn bad_bodies_are_400_and_change_nothing() {
    let app = spawn_router().await;
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1000;
    let cases = [
        ("", "body"),
        ("{not json", "body"),
        ("[]", "body"),
        (r#"{"roles": ["r"]}"#, "name: is required"),
        (r#"{"name": "n"}"#, "roles: is required"),
        (r#"{"name": "n", "roles": "r"}"#, "roles: must be an array"),
        (r#"{"name": "", "roles": ["r"]}"#, "name"),
        (r#"{"name": "n", "roles": []}"#, "roles"),
        (r#"{"name": "n", "roles": ["a b"]}"#, "roles[0]"),
        (
            r#"{"name": "n", "roles": ["r"], "expiryDate": "soon"}"#,
            "expiryDate: must be a whole number",
        ),
        (
            &format!(r#"{{"name": "n", "roles": ["r"], "expiryDate": {past}}}"#),
            "expiryDate: must be in the future",
        ),
        (
            r#"{"name": "n", "roles": ["r"], "expiryDate": 9223372036854775807}"#,
            "expiryDate",
        ),
    ];
    for (body, field) in cases {
        let response = app.admin("POST", TOKENS, body).await;
        assert_eq!(response.status, 400, "{body}");
        let error = response.json();
        assert_eq!(error["error"], "INVALID_ARGUMENT");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
    let listed = app.admin("GET", TOKENS, "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "only the admin token");
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let app = spawn_router().await;
    let body = format!(
        r#"{{"name": "{}", "roles": ["r"]}}"#,
        "n".repeat(1024 * 1024)
    );
    let response = app.admin("POST", TOKENS, &body).await;
    assert_eq!(response.status, 413);
    assert!(response.json()["message"].is_string());
}

#[tokio::test]
async fn a_rejected_body_is_answered_and_counted_like_any_error() {
    let app = spawn_router().await;
    let oversized = format!(r#"{{"name": "{}", "roles": ["r"]}}"#, "n".repeat(100_000));
    let too_large = app.admin("POST", TOKENS, &oversized).await;
    assert_eq!(too_large.status, 413);
    let error = too_large.json();
    assert_eq!(error["error"], "RESOURCE_EXHAUSTED", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("65536"),
        "{error}"
    );
    let not_json = app.admin("POST", TOKENS, "{not json").await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"], "INVALID_ARGUMENT");
    // The credential is checked first, whatever the body.
    app.call("POST", TOKENS, &[], &oversized)
        .await
        .assert_unauthorized();

    let metrics = app.call("GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8(metrics.body).unwrap();
    for (status, caller) in [
        ("RESOURCE_EXHAUSTED", "admin"),
        ("INVALID_ARGUMENT", "admin"),
        ("UNAUTHENTICATED", "none"),
    ] {
        let line = format!(
            r#"sts_management_calls_total{{rpc="Create",status="{status}",caller="{caller}",transport="rest"}} 1"#
        );
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn management_needs_the_admin_role() {
    let app = spawn_router().await;
    let (viewer, viewer_id) = app.create("viewer", &["viewer"]).await;
    let key = [("x-api-key", viewer.as_bytes())];
    let delete = format!("{TOKENS}/{viewer_id}");
    for (method, path, body) in [
        ("GET", TOKENS, ""),
        ("POST", TOKENS, r#"{"name": "x", "roles": ["r"]}"#),
        ("DELETE", delete.as_str(), ""),
    ] {
        let denied = app.call(method, path, &key, body).await;
        assert_eq!(denied.status, 403, "{method} {path}");
        assert_eq!(denied.json()["error"], "PERMISSION_DENIED");
        app.call(method, path, &[], body)
            .await
            .assert_unauthorized();
    }
    assert!(validate(&app, &viewer).await, "nothing was deleted");
}

#[tokio::test]
async fn delete_is_204_then_404() {
    let app = spawn_router().await;
    let (token, id) = app.create("ci", &["r"]).await;
    let path = format!("{TOKENS}/{id}");
    assert_eq!(app.admin("DELETE", &path, "").await.status, 204);
    assert!(!validate(&app, &token).await);
    let again = app.admin("DELETE", &path, "").await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["error"], "NOT_FOUND");
    for bad in ["abc", "0", "-1", "9007199254740992", "1.5"] {
        let response = app.admin("DELETE", &format!("{TOKENS}/{bad}"), "").await;
        assert_eq!(response.status, 400, "{bad}");
        assert!(response.json()["message"].as_str().unwrap().contains("id"));
    }
}

#[tokio::test]
async fn list_walks_past_one_page() {
    let app = spawn_router().await;
    let max = app.service.config().max_page_size;
    for i in 0..max + 5 {
        app.create(&format!("t{i}"), &["r"]).await;
    }
    let listed = app.admin("GET", TOKENS, "").await.json();
    let ids: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), max + 6);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "id order, no duplicates"
    );
}

#[tokio::test]
async fn create_refuses_fields_it_would_ignore_and_takes_expiration_as_get_names_it() {
    let app = spawn_router().await;
    let in_a_day = app.clock.now() + Duration::from_secs(86_400);
    let ms = in_a_day.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // `expiration`, what GET calls it, is taken: the token expires.
    let body = format!(r#"{{"name": "copied", "roles": ["r"], "expiration": {ms}}}"#);
    let created = app.admin("POST", TOKENS, &body).await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["expiration"], ms);
    let cases = [
        (
            format!(r#"{{"name": "n", "roles": ["r"], "expiryDate": {ms}, "expiration": {ms}}}"#),
            "expiryDate: is given twice",
        ),
        (
            r#"{"name": "n", "roles": ["r"], "expires": 1}"#.to_owned(),
            "expires: is not a field of a token request",
        ),
        (
            r#"{"id": 5, "name": "n", "roles": ["r"]}"#.to_owned(),
            "id: is set by the server",
        ),
        (
            r#"{"name": "n", "roles": ["r"], "createdAt": 5}"#.to_owned(),
            "createdAt: is set by the server",
        ),
        (
            r#"{"name": "n", "roles": ["r"], "disabled": true}"#.to_owned(),
            "disabled: is set by the server (or by a later update)",
        ),
    ];
    for (body, says) in cases {
        let refused = app.admin("POST", TOKENS, &body).await;
        assert_eq!(refused.status, 400, "{body}");
        let message = refused.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{body}: {message}");
    }
    let listed = app.admin("GET", TOKENS, "").await.json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the admin and `copied`"
    );
}

#[tokio::test]
async fn a_secret_in_a_bad_body_is_never_repeated_in_the_answer_or_the_log() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let app = spawn_router().await;
    let (secret, id) = app.create("victim", &["r"]).await;
    let reviewer = app.create("reviewer", &["token-reviewer"]).await.0;
    let s = &secret;
    let requests = [
        (
            "POST",
            TOKENS.to_owned(),
            format!(r#"{{"name": "n", "roles": "{s}"}}"#),
            "roles: must be an array",
        ),
        (
            "POST",
            TOKENS.to_owned(),
            format!(r#"{{"name": "n", "roles": ["r"], "expiryDate": "{s}"}}"#),
            "expiryDate: must be a whole number",
        ),
        (
            "POST",
            TOKENS.to_owned(),
            format!(r#"{{"name": "n", "roles": ["r"], "{s}": 1}}"#),
            "not a field of a token request",
        ),
        (
            "POST",
            TOKENS.to_owned(),
            format!(r#"{{"name": "{s}"#),
            "not valid JSON",
        ),
        (
            "POST",
            format!("{TOKENS}/{id}/rotate"),
            format!(r#"{{"gracePeriodSeconds": "{s}"}}"#),
            "gracePeriodSeconds: must be a whole number, 0 or more",
        ),
        (
            "POST",
            format!("{TOKENS}/{id}/rotate"),
            format!(r#"{{"{s}": 1}}"#),
            "not a field of a rotation request",
        ),
        (
            "PATCH",
            format!("{TOKENS}/{id}"),
            format!(r#"{{"expiryDate": "{s}"}}"#),
            "expiryDate: must be epoch milliseconds",
        ),
        (
            "PATCH",
            format!("{TOKENS}/{id}"),
            format!(r#"{{"{s}": 1}}"#),
            "cannot be changed",
        ),
        (
            "PATCH",
            format!("{TOKENS}/{id}"),
            format!(r#"{{"roles": ["{s}", 1]}}"#),
            "roles: must be an array of strings",
        ),
    ];
    for (method, path, body, says) in &requests {
        let answer = app.admin(method, path, body).await;
        assert_eq!(answer.status, 400, "{method} {path} {body}");
        let text = answer.text();
        assert!(text.contains(says), "{method} {path}: {text}");
        assert!(!text.contains(&secret[7..20]), "{method} {path}: {text}");
    }
    // TokenReview's body as well.
    let review = format!(r#"{{"apiVersion": "authentication.k8s.io/v1", "spec": {{"token": "{s}""#);
    let key = [("x-api-key", reviewer.as_bytes())];
    let answer = app
        .call("POST", "/api/kubernetes/tokenreview", &key, &review)
        .await;
    assert_eq!(answer.status, 400);
    assert!(!answer.text().contains(&secret[7..20]), "{}", answer.text());
    let logged = serde_json::to_string(&logs.events()).unwrap();
    assert!(!logged.contains(&secret[7..20]), "the log holds the secret");
    // The first refusal of its kind is in the audit in full.
    assert!(
        logged.contains("roles: must be an array"),
        "the refusals were audited"
    );
}
