//! OAuth 2.0 token introspection (RFC 7662) as gateways call it: a
//! form-encoded `token`, the caller authenticated.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::json;
use sts::{clock::Clock, token::Secret};

use crate::support::{TestResponse, TestRouter, spawn_router};

const PATH: &str = "/oauth2/introspect";
const FORM: (&str, &[u8]) = ("content-type", b"application/x-www-form-urlencoded");

impl TestRouter {
    async fn introspect(&self, caller: &[(&str, &[u8])], form: &str) -> TestResponse {
        let mut headers = caller.to_vec();
        headers.push(FORM);
        self.call("POST", PATH, &headers, form).await
    }
}

fn form(token: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish()
}

#[tokio::test]
async fn an_active_token_is_described_as_rfc_7662_says() {
    let app = spawn_router().await;
    let (reviewer, _) = app.create("kong", &["token-reviewer"]).await;
    let expires = app.clock.now() + Duration::from_secs(3600);
    let (secret, id) = app
        .create_expiring("ci-runner", &["builder", "deployer"], Some(expires))
        .await;
    let answer = app
        .introspect(&[("x-api-key", reviewer.as_bytes())], &form(&secret))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let now = app
        .clock
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(
        answer.json(),
        json!({
            "active": true,
            "token_type": "service_token",
            "sub": id.to_string(),
            "client_id": id.to_string(),
            "username": "ci-runner",
            "scope": "builder deployer",
            "iat": now,
            "exp": now + 3600,
        })
    );
    // Without an expiration there is no `exp`.
    let (forever, _) = app.create("forever", &["r"]).await;
    let answer = app
        .introspect(&[("x-api-key", reviewer.as_bytes())], &form(&forever))
        .await;
    assert!(answer.json().get("exp").is_none());
}

#[tokio::test]
async fn anything_not_valid_is_exactly_inactive() {
    let app = spawn_router().await;
    let (reviewer, _) = app.create("kong", &["token-reviewer"]).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let expires = app.clock.now() + Duration::from_secs(60);
    let (expiring, _) = app.create_expiring("expiring", &["r"], Some(expires)).await;
    let (disabled, disabled_id) = app.create("disabled", &["r"]).await;
    let patch = app
        .admin(
            "PATCH",
            &format!("/api/security/tokens/{disabled_id}"),
            r#"{"disabled": true}"#,
        )
        .await;
    assert_eq!(patch.status, 200);
    app.clock.advance(Duration::from_secs(61));
    for token in ["", "svctok-nope", &unknown, &expiring, &disabled] {
        let answer = app
            .introspect(&[("x-api-key", reviewer.as_bytes())], &form(token))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(answer.text(), r#"{"active":false}"#);
    }
}

#[tokio::test]
async fn the_caller_authenticates_in_any_form_oauth_clients_use() {
    let app = spawn_router().await;
    let (reviewer, _) = app.create("kong", &["token-reviewer"]).await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let bearer = format!("Bearer {reviewer}");
    let api_key = format!("ApiKey {reviewer}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("kong:{reviewer}"))
    );
    for caller in [
        ("authorization", bearer.as_bytes()),
        ("authorization", api_key.as_bytes()),
        ("authorization", basic.as_bytes()),
        ("x-api-key", reviewer.as_bytes()),
    ] {
        let answer = app.introspect(&[caller], &form(&secret)).await;
        assert_eq!(answer.json()["active"], true, "{}", caller.0);
    }
}

#[tokio::test]
async fn a_caller_without_the_reviewer_role_cannot_scan_for_tokens() {
    let app = spawn_router().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    app.introspect(&[], &form(&secret))
        .await
        .assert_unauthorized();
    app.introspect(&[("x-api-key", unknown.as_bytes())], &form(&secret))
        .await
        .assert_unauthorized();
    // A token introspecting itself still needs the role.
    let answer = app
        .introspect(&[("x-api-key", secret.as_bytes())], &form(&secret))
        .await;
    assert_eq!(answer.status, 403);
    assert!(!answer.text().contains("active"));
}

#[tokio::test]
async fn a_form_without_one_token_is_a_bad_request() {
    let app = spawn_router().await;
    let (reviewer, _) = app.create("kong", &["token-reviewer"]).await;
    let key = ("x-api-key", reviewer.as_bytes());
    for body in ["", "token_type_hint=access_token", "token=a&token=b"] {
        let answer = app.introspect(&[key], body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(
            answer.json()["message"].as_str().unwrap().contains("token"),
            "{body}"
        );
    }
    // Only POST, as RFC 7662 has it.
    let answer = app
        .call("GET", &format!("{PATH}?token=x"), &[key], "")
        .await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn the_reviewer_role_is_the_configured_one() {
    let app = crate::support::spawn_router_with(sts::config::ServiceConfig {
        reviewer_role: sts::model::Role::parse("introspector").unwrap(),
        ..Default::default()
    })
    .await;
    let (default_reviewer, _) = app.create("a", &["token-reviewer"]).await;
    let (introspector, _) = app.create("b", &["introspector"]).await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let answer = app
        .introspect(
            &[("x-api-key", default_reviewer.as_bytes())],
            &form(&secret),
        )
        .await;
    assert_eq!(answer.status, 403);
    let answer = app
        .introspect(&[("x-api-key", introspector.as_bytes())], &form(&secret))
        .await;
    assert_eq!(answer.json()["active"], true);
}
