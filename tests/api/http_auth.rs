//! HTTP credentials at router level: the documented header forms on
//! `/api/server/status`, and 401 + `WWW-Authenticate: ApiKey` for every way a
//! credential can be missing or wrong.

use std::time::Duration;

use sts::{clock::Clock, service::AUDIT, token::Secret};

use crate::{
    support::logs::capture_logs,
    support::{ADMIN_ROLE, spawn_router},
};

const STATUS: &str = "/api/server/status";

/// Request headers as (name, raw value) pairs.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

#[tokio::test]
async fn status_answers_who_the_caller_is_for_both_header_forms() {
    let app = spawn_router().await;
    let (token, id) = app.create("ci", &["stackstate-k8s-troubleshooter"]).await;
    let authorization = format!("ApiKey {token}");
    let lower = format!("apikey {token}");
    let bearer = format!("Bearer {token}");
    for headers in [
        vec![("authorization", bearer.as_bytes())],
        vec![("authorization", authorization.as_bytes())],
        vec![("authorization", lower.as_bytes())],
        vec![("x-api-key", token.as_bytes())],
        vec![
            ("x-api-key", token.as_bytes()),
            ("authorization", authorization.as_bytes()),
        ],
    ] {
        let response = app.call("GET", STATUS, &headers, "").await;
        assert_eq!(response.status, 200);
        let body = response.json();
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["uptimeSeconds"].is_u64());
        assert_eq!(body["serviceToken"]["id"], id);
        assert_eq!(body["serviceToken"]["name"], "ci");
        assert_eq!(
            body["serviceToken"]["roles"],
            serde_json::json!(["stackstate-k8s-troubleshooter"])
        );
    }
}

#[tokio::test]
async fn unusable_credentials_are_401_with_a_challenge() {
    let app = spawn_router().await;
    let (token, _) = app.create("ci", &["r"]).await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let basic = format!("Basic {token}");
    let conflicting = format!("ApiKey {unknown}");
    let long = "a".repeat(5000);
    // Each case, and what its answer says.
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("none", vec![], "no credential"),
        ("empty", vec![("x-api-key", b"")], "no credential"),
        (
            "malformed",
            vec![("x-api-key", b"svctok-nope")],
            "not a service token",
        ),
        (
            "unknown",
            vec![("x-api-key", unknown.as_bytes())],
            "unknown or has been deleted",
        ),
        (
            "basic",
            vec![("authorization", basic.as_bytes())],
            "must use the ApiKey or Bearer scheme",
        ),
        (
            "scheme only",
            vec![("authorization", b"ApiKey")],
            "names its scheme but holds no token",
        ),
        (
            "scheme and a space",
            vec![("authorization", b"ApiKey ")],
            "names its scheme but holds no token",
        ),
        (
            "non-utf-8",
            vec![("x-api-key", b"svctok-\xff\xfe")],
            "not a service token",
        ),
        (
            "over-long",
            vec![("x-api-key", long.as_bytes())],
            "longer than 1024 bytes",
        ),
        (
            "conflicting",
            vec![
                ("x-api-key", token.as_bytes()),
                ("authorization", conflicting.as_bytes()),
            ],
            "the credential headers disagree",
        ),
        (
            "the same header twice",
            vec![
                ("x-api-key", token.as_bytes()),
                ("x-api-key", token.as_bytes()),
            ],
            "the x-api-key header is sent more than once",
        ),
    ];
    for (case, headers, says) in cases {
        let response = app.call("GET", STATUS, &headers, "").await;
        response.assert_unauthorized();
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert!(!text.contains(&token[7..]), "{case}: secret in {text}");
        assert!(!text.contains(&unknown[7..]), "{case}: secret in {text}");
        assert!(text.contains(says), "{case}: {text}");
    }
}

#[tokio::test]
async fn expiry_and_deletion_take_effect_at_once() {
    let app = spawn_router().await;
    let soon = app.clock.now() + Duration::from_secs(30);
    let (expiring, _) = app.create_expiring("expiring", &["r"], Some(soon)).await;
    let (deleted, deleted_id) = app.create("deleted", &["r"]).await;
    for token in [&expiring, &deleted] {
        let response = app
            .call("GET", STATUS, &[("x-api-key", token.as_bytes())], "")
            .await;
        assert_eq!(response.status, 200);
    }

    app.clock.advance(Duration::from_secs(30));
    let response = app
        .call("GET", STATUS, &[("x-api-key", expiring.as_bytes())], "")
        .await;
    response.assert_unauthorized();
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let response = app
        .admin("DELETE", &format!("/api/security/tokens/{deleted_id}"), "")
        .await;
    assert_eq!(response.status, 204);
    app.call("GET", STATUS, &[("x-api-key", deleted.as_bytes())], "")
        .await
        .assert_unauthorized();
}

#[tokio::test]
async fn info_needs_a_credential_and_answers_the_version() {
    let app = spawn_router().await;
    app.call("GET", "/api/server/info", &[], "")
        .await
        .assert_unauthorized();
    let response = app.admin("GET", "/api/server/info", "").await;
    assert_eq!(response.status, 200);
    let version = &response.json()["version"];
    let expected: Vec<u64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        [
            version["major"].as_u64().unwrap(),
            version["minor"].as_u64().unwrap(),
            version["patch"].as_u64().unwrap()
        ],
        expected[..]
    );
}

#[tokio::test]
async fn forward_auth_passes_the_identity_in_headers() {
    let app = spawn_router().await;
    let (token, id) = app.create("grafana proxy é", &["viewer", "editor"]).await;
    for method in ["GET", "POST", "HEAD", "DELETE"] {
        let response = app
            .call(method, "/api/auth", &[("x-api-key", token.as_bytes())], "")
            .await;
        assert_eq!(response.status, 200, "{method}");
        assert_eq!(
            response.header("x-service-token-id"),
            Some(id.to_string().as_str())
        );
        assert_eq!(
            response.headers["x-service-token-name"].as_bytes(),
            "grafana proxy é".as_bytes()
        );
        assert_eq!(
            response.header("x-service-token-roles"),
            Some("viewer,editor")
        );
    }
    let response = app.call("GET", "/api/auth", &[], "").await;
    response.assert_unauthorized();
    assert!(response.headers.get("x-service-token-id").is_none());
}

#[tokio::test]
async fn forward_auth_checks_a_required_role() {
    let app = spawn_router().await;
    let (token, _) = app.create("ci", &["viewer"]).await;
    let key = [("x-api-key", token.as_bytes())];
    assert_eq!(
        app.call("GET", "/api/auth?role=viewer", &key, "")
            .await
            .status,
        200
    );
    let denied = app.call("GET", "/api/auth?role=admin", &key, "").await;
    assert_eq!(denied.status, 403);
    assert!(denied.json()["message"].as_str().unwrap().contains("admin"));
    let bad = app.call("GET", "/api/auth?role=a%20b", &key, "").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid argument: role:")
    );
    // Several roles, repeated or comma-separated: every one is required.
    let (both, _) = app.create("both", &["viewer", "editor"]).await;
    let both = [("x-api-key", both.as_bytes())];
    for query in [
        "role=viewer&role=editor",
        "role=viewer,editor",
        "role=editor&other=x",
    ] {
        let path = format!("/api/auth?{query}");
        assert_eq!(
            app.call("GET", &path, &both, "").await.status,
            200,
            "{query}"
        );
    }
    for query in ["role=viewer&role=editor", "role=editor,viewer"] {
        let path = format!("/api/auth?{query}");
        assert_eq!(
            app.call("GET", &path, &key, "").await.status,
            403,
            "{query}"
        );
    }
    // Without a credential the role is never looked at.
    app.call("GET", "/api/auth?role=viewer", &[], "")
        .await
        .assert_unauthorized();
    assert_eq!(
        app.call(
            "GET",
            &format!("/api/auth?role={ADMIN_ROLE}"),
            &[("x-api-key", app.admin_token.as_bytes())],
            ""
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn a_misspelt_role_setting_is_refused_not_ignored() {
    let app = spawn_router().await;
    let (token, _) = app.create("ci", &["viewer"]).await;
    let key = [("x-api-key", token.as_bytes())];
    // Each of these used to answer 200 for any valid token: ignored.
    for (query, name) in [
        ("roles=admin", "roles"),
        ("Role=admin", "Role"),
        ("ROLE=admin", "ROLE"),
        ("role%5B%5D=admin", "role[]"),
        ("role=viewer&Roles=admin", "Roles"),
    ] {
        for path in ["/api/auth", "/api/auth/x/y"] {
            let answer = app.call("GET", &format!("{path}?{query}"), &key, "").await;
            assert_eq!(answer.status, 400, "{query}: {}", answer.text());
            let message = answer.json()["message"].as_str().unwrap().to_owned();
            assert!(
                message.starts_with(&format!(
                    "invalid argument: {name}: is not a forward-auth setting"
                )),
                "{message}"
            );
        }
    }
    // Parameters that are no setting's misspelling are still ignored (a
    // proxy may pass its client's query through).
    let answer = app
        .call("GET", "/api/auth?page=2&rolex=1&role=viewer", &key, "")
        .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn role_checks_are_counted_and_a_refusal_is_audited() {
    let (_logging, logs) = capture_logs();
    let app = spawn_router().await;
    let (token, id) = app.create("ci", &["viewer"]).await;
    let key = [("x-api-key", token.as_bytes())];
    let granted = app.call("GET", "/api/auth?role=viewer", &key, "").await;
    assert_eq!(granted.status, 200);
    let refused = app.call("GET", "/api/auth?role=admin", &key, "").await;
    assert_eq!(refused.status, 403);

    let metrics = app.call("GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8(metrics.body).unwrap();
    for outcome in ["granted", "refused"] {
        let line = format!(r#"sts_role_checks_total{{outcome="{outcome}"}} 1"#);
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    let audited: Vec<_> = logs
        .target(AUDIT)
        .into_iter()
        .filter(|event| event["fields"]["rpc"] == "RoleCheck")
        .collect();
    assert_eq!(audited.len(), 1, "{audited:#?}");
    let fields = &audited[0]["fields"];
    assert_eq!(fields["outcome"], "PERMISSION_DENIED", "{fields}");
    assert_eq!(fields["caller.id"], id, "{fields}");
    assert_eq!(fields["caller.name"], "ci", "{fields}");
    assert_eq!(fields["role"], "admin", "{fields}");
    assert_eq!(audited[0]["level"], "WARN");
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let app = spawn_router().await;
    let live = app.call("GET", "/healthz", &[], "").await;
    assert_eq!(live.status, 200);
    let ready = app.call("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    app.ready.drain();
    let draining = app.call("GET", "/readyz", &[], "").await;
    assert_eq!(draining.status, 503);
    assert_eq!(app.call("GET", "/healthz", &[], "").await.status, 200);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_json() {
    let app = spawn_router().await;
    let missing = app.call("GET", "/api/nothing-here", &[], "").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["message"].is_string());
    let wrong = app.call("PUT", STATUS, &[], "").await;
    assert_eq!(wrong.status, 405);
    assert!(wrong.json()["message"].as_str().unwrap().contains("PUT"));
    let wrong = app.call("PATCH", "/api/security/tokens", &[], "").await;
    assert_eq!(wrong.status, 405);
}

#[tokio::test]
async fn forward_auth_answers_below_its_path_as_envoys_http_ext_authz_asks() {
    let app = spawn_router().await;
    let (token, id) = app.create("ci", &["viewer"]).await;
    let key = [("x-api-key", token.as_bytes())];
    let bearer = format!("Bearer {token}");
    // Envoy's `path_prefix` puts the original path (and query) after ours.
    for (method, path) in [
        ("GET", "/api/auth/"),
        ("GET", "/api/auth/builds/42"),
        ("POST", "/api/auth/deep/er/path?x=1"),
        ("DELETE", "/api/auth/builds/42?role=viewer"),
    ] {
        let response = app.call(method, path, &key, "").await;
        assert_eq!(response.status, 200, "{method} {path}");
        assert_eq!(
            response.header("x-service-token-id"),
            Some(id.to_string().as_str())
        );
        // The credential is named for Envoy to remove before it goes on.
        assert_eq!(
            response.header("x-envoy-auth-headers-to-remove"),
            Some("x-api-key"),
            "{path}"
        );
    }
    let both = [
        ("x-api-key", token.as_bytes()),
        ("authorization", bearer.as_bytes()),
    ];
    let response = app.call("GET", "/api/auth/builds", &both, "").await;
    assert_eq!(
        response.header("x-envoy-auth-headers-to-remove"),
        Some("authorization,x-api-key")
    );
    let authorization = [("authorization", bearer.as_bytes())];
    let response = app.call("GET", "/api/auth", &authorization, "").await;
    assert_eq!(
        response.header("x-envoy-auth-headers-to-remove"),
        Some("authorization")
    );
    // The same refusals as /api/auth.
    app.call("GET", "/api/auth/builds/42", &[], "")
        .await
        .assert_unauthorized();
    let denied = app
        .call("GET", "/api/auth/builds?role=admin", &key, "")
        .await;
    assert_eq!(denied.status, 403);
    assert!(
        denied
            .headers
            .get("x-envoy-auth-headers-to-remove")
            .is_none()
    );
    // Nothing else starts with the prefix by accident.
    assert_eq!(app.call("GET", "/api/authx", &key, "").await.status, 404);
}

#[tokio::test]
async fn with_forward_credential_envoy_is_not_told_to_remove_it() {
    let app = crate::support::spawn_router_integrations(sts::config::IntegrationConfig {
        forward_credential: true,
        ..Default::default()
    })
    .await;
    let (token, _) = app.create("ci", &["viewer"]).await;
    let response = app
        .call("GET", "/api/auth/x", &[("x-api-key", token.as_bytes())], "")
        .await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .headers
            .get("x-envoy-auth-headers-to-remove")
            .is_none()
    );
}

#[tokio::test]
async fn a_check_of_an_expiring_token_says_when_it_expires() {
    let app = spawn_router().await;
    // 2027-01-02T03:04:05.678Z: the header keeps whole seconds.
    let expires = std::time::UNIX_EPOCH + Duration::from_millis(1_798_859_045_678);
    let (expiring, _) = app.create_expiring("ci", &["r"], Some(expires)).await;
    let (forever, _) = app.create("cd", &["r"]).await;
    for path in [
        "/api/server/status",
        "/api/server/info",
        "/api/auth",
        "/api/auth/x?role=r",
    ] {
        let answer = app
            .call("GET", path, &[("x-api-key", expiring.as_bytes())], "")
            .await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(
            answer.header("x-service-token-expiration"),
            Some("2027-01-02T03:04:05Z"),
            "{path}"
        );
        let answer = app
            .call("GET", path, &[("x-api-key", forever.as_bytes())], "")
            .await;
        assert_eq!(answer.status, 200, "{path}");
        assert!(
            answer.headers.get("x-service-token-expiration").is_none(),
            "{path}"
        );
    }
    // Not on a refusal.
    let answer = app
        .call(
            "GET",
            "/api/auth?role=other",
            &[("x-api-key", expiring.as_bytes())],
            "",
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(answer.headers.get("x-service-token-expiration").is_none());
}

/// `Front` answers status and forward-auth itself, past the router: what
/// it answers must be what the router answers, for every outcome.
#[tokio::test]
async fn the_fast_lane_answers_as_the_router_does() {
    let app = spawn_router().await;
    let soon = app.clock.now() + Duration::from_secs(3600);
    let (token, _) = app.create_expiring("ci", &["deployer"], Some(soon)).await;
    let key = token.as_bytes();
    let bad = b"not-a-token".as_slice();
    let cases: [(&str, &str, Headers); 9] = [
        ("GET", STATUS, vec![("x-api-key", key)]),
        ("GET", STATUS, vec![]),
        ("GET", STATUS, vec![("x-api-key", bad)]),
        ("GET", "/api/auth", vec![("x-api-key", key)]),
        ("GET", "/api/auth?role=deployer", vec![("x-api-key", key)]),
        ("GET", "/api/auth?role=root", vec![("x-api-key", key)]),
        ("POST", "/api/auth/builds/42", vec![("x-api-key", key)]),
        ("PUT", "/api/auth/", vec![]),
        (
            "DELETE",
            "/api/auth",
            vec![("x-api-key", key), ("x-api-key", key)],
        ),
    ];
    let request = |method: &str, path: &str, headers: &Headers| {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(axum::body::Body::empty()).unwrap()
    };
    // The router states the length in a header; hyper does the same for
    // the lane's answers from their bodies on the wire.
    let shown = |mut headers: http::HeaderMap| {
        headers.remove(http::header::CONTENT_LENGTH);
        headers
    };
    // Uptime is in whole seconds and may tick between the two requests.
    let body = |bytes: &[u8]| -> Option<serde_json::Value> {
        let mut json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        json.as_object_mut()?.remove("uptimeSeconds");
        Some(json)
    };
    let mut statuses = Vec::new();
    for (method, path, headers) in &cases {
        let lane = app.send(request(method, path, headers)).await;
        let routed = app.send_to_routes(request(method, path, headers)).await;
        let case = format!("{method} {path}");
        assert_eq!(lane.status, routed.status, "{case}");
        assert_eq!(shown(lane.headers), shown(routed.headers), "{case}");
        assert_eq!(body(&lane.body), body(&routed.body), "{case}");
        assert_eq!(lane.body.is_empty(), routed.body.is_empty(), "{case}");
        statuses.push(lane.status.as_u16());
    }
    assert_eq!(statuses, [200, 401, 401, 200, 200, 403, 200, 401, 401]);
}

/// Methods the lane leaves to the router still get the router's answers.
#[tokio::test]
async fn status_answers_head_and_refuses_other_methods() {
    let app = spawn_router().await;
    let key = app.admin_token.clone();
    let head = app
        .call("HEAD", STATUS, &[("x-api-key", key.as_bytes())], "")
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-type"], "application/json");
    let post = app
        .call("POST", STATUS, &[("x-api-key", key.as_bytes())], "")
        .await;
    assert_eq!(post.status, 405);
}
