//! What HTTP answers carry besides their body: a new secret is never left
//! in a cache on the way (`Cache-Control: no-store`), and a body too large
//! for introspection or TokenReview is refused with the documented JSON
//! error like every other route's.

use crate::support::spawn_router;

#[tokio::test]
async fn answers_with_a_new_secret_say_no_store() {
    let router = spawn_router().await;
    let created = router
        .admin(
            "POST",
            "/api/security/tokens",
            r#"{"name":"ci","roles":["r"]}"#,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let id = created.json()["id"].as_u64().unwrap();
    let rotated = router
        .admin("POST", &format!("/api/security/tokens/{id}/rotate"), "")
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn oversized_reviews_are_refused_with_the_json_error() {
    let router = spawn_router().await;
    let (reviewer, _) = router.create("reviewer", &["token-reviewer"]).await;
    let huge = "x".repeat(sts::config::MAX_REQUEST_BYTES + 1);
    for (path, content_type) in [
        ("/oauth2/introspect", "application/x-www-form-urlencoded"),
        ("/api/kubernetes/tokenreview", "application/json"),
    ] {
        let headers: [(&str, &[u8]); 2] = [
            ("x-api-key", reviewer.as_bytes()),
            ("content-type", content_type.as_bytes()),
        ];
        let answer = router.call("POST", path, &headers, &huge).await;
        assert_eq!(answer.status, 413, "{path}: {}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert_eq!(answer.json()["error"], "RESOURCE_EXHAUSTED", "{path}");
    }
}
