//! Kubernetes webhook token authentication: TokenReview requests as
//! kube-apiserver sends them (v1 and v1beta1), answered in kind.

use std::time::Duration;

use serde_json::json;
use sts::{clock::Clock, token::Secret};

use crate::support::{TestResponse, TestRouter, spawn_router};

const PATH: &str = "/api/kubernetes/tokenreview";

/// A review of `token` as kube-apiserver sends it.
fn review(version: &str, token: &str, audiences: Option<&[&str]>) -> String {
    let mut spec = json!({ "token": token });
    if let Some(audiences) = audiences {
        spec["audiences"] = json!(audiences);
    }
    json!({
        "apiVersion": format!("authentication.k8s.io/{version}"),
        "kind": "TokenReview",
        "metadata": { "creationTimestamp": null },
        "spec": spec,
        "status": { "user": {} },
    })
    .to_string()
}

impl TestRouter {
    /// A reviewer's token, as kube-apiserver's webhook kubeconfig holds it.
    async fn reviewer(&self) -> String {
        self.create("kube-apiserver", &["token-reviewer"]).await.0
    }

    async fn review_as(&self, caller: &str, body: &str) -> TestResponse {
        let bearer = format!("Bearer {caller}");
        self.call(
            "POST",
            PATH,
            &[
                ("authorization", bearer.as_bytes()),
                ("content-type", b"application/json"),
            ],
            body,
        )
        .await
    }
}

#[tokio::test]
async fn a_valid_token_is_a_prefixed_user_in_both_api_versions() {
    let app = spawn_router().await;
    let reviewer = app.reviewer().await;
    let (secret, id) = app
        .create("ci-runner", &["builder", "system:masters"])
        .await;
    for version in ["v1", "v1beta1"] {
        let answer = app
            .review_as(&reviewer, &review(version, &secret, None))
            .await;
        assert_eq!(answer.status, 200, "{version}");
        let body = answer.json();
        assert_eq!(
            body["apiVersion"],
            format!("authentication.k8s.io/{version}")
        );
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(
            body["status"],
            json!({
                "authenticated": true,
                "user": {
                    "username": "sts:ci-runner",
                    "uid": id.to_string(),
                    // A role named like a Kubernetes group stays in ours.
                    "groups": ["sts:builder", "sts:system:masters"],
                    "extra": { "sts.token-id": [id.to_string()] },
                },
            }),
            "{version}"
        );
        // The reviewed secret is never echoed back.
        assert!(!answer.text().contains(&secret[7..]), "{version}");
    }
}

#[tokio::test]
async fn audiences_asked_for_are_the_audiences_answered() {
    let app = spawn_router().await;
    let reviewer = app.reviewer().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let audiences = ["https://kubernetes.default.svc", "sts"];
    let answer = app
        .review_as(&reviewer, &review("v1", &secret, Some(&audiences)))
        .await;
    assert_eq!(answer.json()["status"]["audiences"], json!(audiences));
    let answer = app
        .review_as(&reviewer, &review("v1", &secret, Some(&[])))
        .await;
    assert!(answer.json()["status"].get("audiences").is_none());
}

#[tokio::test]
async fn an_invalid_token_is_not_authenticated_and_says_why() {
    let app = spawn_router().await;
    let reviewer = app.reviewer().await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let expires = app.clock.now() + Duration::from_secs(60);
    let (expiring, _) = app.create_expiring("expiring", &["r"], Some(expires)).await;
    app.clock.advance(Duration::from_secs(61));
    for (token, says) in [
        ("", "empty"),
        ("svctok-nope", "not a service token"),
        (unknown.as_str(), "unknown or has been deleted"),
        (expiring.as_str(), "has expired"),
    ] {
        for version in ["v1", "v1beta1"] {
            let answer = app
                .review_as(&reviewer, &review(version, token, None))
                .await;
            assert_eq!(answer.status, 200);
            let body = answer.json();
            assert_eq!(
                body["apiVersion"],
                format!("authentication.k8s.io/{version}")
            );
            assert_eq!(body["status"]["authenticated"], false, "{says}");
            assert!(body["status"].get("user").is_none(), "{body}");
            let error = body["status"]["error"].as_str().unwrap();
            assert!(error.contains(says), "{error}");
        }
    }
}

#[tokio::test]
async fn only_a_reviewer_may_ask() {
    let app = spawn_router().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let body = review("v1", &secret, None);
    // No credential, or an invalid one: 401.
    let answer = app.call("POST", PATH, &[], &body).await;
    answer.assert_unauthorized();
    let unknown = Secret::generate().expose_secret().to_owned();
    app.review_as(&unknown, &body).await.assert_unauthorized();
    // A valid token without the reviewer role: 403, and it learns nothing.
    let answer = app.review_as(&secret, &body).await;
    assert_eq!(answer.status, 403);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("token-reviewer")
    );
    assert!(!answer.text().contains("authenticated"));
}

#[tokio::test]
async fn what_is_not_a_token_review_is_refused_without_quoting_it() {
    let app = spawn_router().await;
    let reviewer = app.reviewer().await;
    let secret = Secret::generate().expose_secret().to_owned();
    for body in [
        "not json".to_string(),
        json!({"apiVersion": "authentication.k8s.io/v2", "kind": "TokenReview", "spec": {"token": "x"}}).to_string(),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "Pod", "spec": {"token": "x"}}).to_string(),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": secret}).to_string(),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}).to_string(),
    ] {
        let answer = app.review_as(&reviewer, &body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(!answer.text().contains(&secret[7..]), "{}", answer.text());
    }
}

#[tokio::test]
async fn the_prefix_is_the_configured_one() {
    let app = crate::support::spawn_router_integrations(sts::config::IntegrationConfig {
        kubernetes_prefix: sts::config::KubernetesPrefix::parse("tokens:").unwrap(),
        ..Default::default()
    })
    .await;
    let reviewer = app.reviewer().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let status = app
        .review_as(&reviewer, &review("v1", &secret, None))
        .await
        .json()["status"]
        .clone();
    assert_eq!(status["user"]["username"], "tokens:ci-runner");
    assert_eq!(status["user"]["groups"], json!(["tokens:builder"]));
}

#[tokio::test]
async fn the_username_may_be_the_tokens_id_which_is_unique() {
    let app = crate::support::spawn_router_integrations(sts::config::IntegrationConfig {
        kubernetes_username: sts::config::KubernetesUsername::Id,
        ..Default::default()
    })
    .await;
    let reviewer = app.reviewer().await;
    // Two tokens of one name: one user by name, two by id.
    let (first, first_id) = app.create("ci", &["builder"]).await;
    let (second, second_id) = app.create("ci", &["builder"]).await;
    for (secret, id) in [(first, first_id), (second, second_id)] {
        let status = app
            .review_as(&reviewer, &review("v1", &secret, None))
            .await
            .json()["status"]
            .clone();
        assert_eq!(status["user"]["username"], format!("sts:{id}"));
        assert_eq!(status["user"]["uid"], id.to_string());
    }
}

#[test]
fn a_prefix_that_would_let_a_role_become_a_kubernetes_group_is_refused() {
    use sts::config::KubernetesPrefix;
    // `system` + a role `:masters` would be `system:masters`.
    for bad in ["", "system:", "system:sts:", "a b", "system", "tokens/"] {
        assert!(KubernetesPrefix::parse(bad).is_err(), "{bad:?}");
    }
    assert!(KubernetesPrefix::parse("sts:").is_ok());
}
