//! Rate limits per token: what a check spends (all or nothing, cost 0,
//! limits last), where the limits stand in every answer, how they refill
//! with the clock, and what each surface answers when one has no room.

use std::time::Duration;

use serde_json::json;
use sts::{
    config::ServiceConfig,
    proto::{
        CreateRequest, InvalidReason, RateLimit, RateLimitState, ServiceToken, UpdateRequest,
        ValidateRequest, ValidateResponse,
    },
};
use tonic::Code;

use crate::{
    ext_authz::{check, denied},
    support::{
        ReadAnswer, TestApp, assert_code, create_request, rate_limit as limit, server_config,
        spawn_app, spawn_app_with,
    },
};

fn duration_ms(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn state(name: &str, limit: u64, remaining: u64, reset_ms: i64) -> RateLimitState {
    RateLimitState {
        name: name.into(),
        limit,
        remaining,
        reset: duration_ms(reset_ms),
    }
}

impl TestApp {
    async fn create_limited(&self, name: &str, roles: &[&str], limits: Vec<RateLimit>) -> String {
        self.create_with(CreateRequest {
            rate_limits: limits,
            ..create_request(name, roles)
        })
        .await
        .0
    }

    async fn validate_costing(&self, token: &str, cost: Option<u64>) -> ValidateResponse {
        self.client
            .clone()
            .validate(ValidateRequest {
                token: token.into(),
                cost,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }
}

#[tokio::test]
async fn a_check_spends_from_every_limit_or_from_none_and_the_limits_refill_with_the_clock() {
    let app = spawn_app().await;
    let secret = app
        .create_limited(
            "ci",
            &["deployer"],
            vec![limit("burst", 3, 1), limit("hourly", 5, 3600)],
        )
        .await;

    // GCRA: a whole limit lets its number through at once; `remaining` is
    // what fits now, `reset` how long until the limit is whole again.
    let first = app.validate_costing(&secret, None).await;
    assert!(first.valid, "{first:?}");
    assert_eq!(
        first.rate_limits,
        [state("burst", 3, 2, 334), state("hourly", 5, 4, 720_000)]
    );
    assert_eq!(first.retry_after, None);
    for _ in 0..2 {
        assert!(app.validate_costing(&secret, None).await.valid);
    }
    // The burst is spent: refused, and the hourly limit keeps its 2.
    let refused = app.validate_costing(&secret, None).await;
    assert!(!refused.valid);
    assert_eq!(refused.reason(), InvalidReason::RateLimited);
    assert_eq!(refused.service_token, None);
    assert_eq!(
        refused.rate_limits,
        [state("burst", 3, 0, 1000), state("hourly", 5, 2, 2_160_000)]
    );
    assert_eq!(refused.retry_after, duration_ms(334));

    // 334 ms on, one check of the burst has come back.
    app.clock.advance(Duration::from_millis(334));
    let look = app.validate_costing(&secret, Some(0)).await;
    assert!(look.valid, "cost 0 looks without spending: {look:?}");
    assert_eq!(look.rate_limits[0].remaining, 1);
    assert_eq!(look.rate_limits[1].remaining, 2);
    // A second on, the burst is whole; a cost the hourly limit cannot
    // take spends nothing from the burst either.
    app.clock.advance(Duration::from_millis(666));
    let too_much = app.validate_costing(&secret, Some(3)).await;
    assert_eq!(too_much.reason(), InvalidReason::RateLimited);
    assert_eq!(too_much.rate_limits[0].remaining, 3);
    assert_eq!(too_much.rate_limits[1].remaining, 2);
    let two = app.validate_costing(&secret, Some(2)).await;
    assert!(two.valid);
    assert_eq!(two.rate_limits[0].remaining, 1);
    assert_eq!(two.rate_limits[1].remaining, 0);
    // A cost above a limit never fits it: refused with the period.
    let never = app.validate_costing(&secret, Some(4)).await;
    assert_eq!(never.reason(), InvalidReason::RateLimited);
    // An hour on, both are whole again.
    app.clock.advance(Duration::from_secs(3600));
    let whole = app.validate_costing(&secret, Some(0)).await;
    assert_eq!(
        whole.rate_limits,
        [state("burst", 3, 3, 0), state("hourly", 5, 5, 0)]
    );
    assert_eq!(
        app.metric("sts_rate_limited_checks_total{surface=\"validate\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_token_without_limits_answers_none_and_a_check_refused_for_another_reason_spends_nothing()
{
    let app = spawn_app().await;
    let (plain, _) = app.create("plain", &["r"]).await;
    let answer = app.validate_costing(&plain, None).await;
    assert!(answer.valid);
    assert!(answer.rate_limits.is_empty());

    let (secret, created) = app
        .create_with(CreateRequest {
            rate_limits: vec![limit("once", 1, 3600)],
            audiences: vec!["ci".into()],
            ..create_request("bound", &["r"])
        })
        .await;
    // Refused for its audience, then disabled: neither spends.
    let unbound = app.validate_costing(&secret, None).await;
    assert_eq!(unbound.reason(), InvalidReason::AudienceNotAllowed);
    assert!(unbound.rate_limits.is_empty());
    let disable = |disabled| UpdateRequest {
        service_token: Some(ServiceToken {
            id: created.id,
            disabled,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    app.client
        .clone()
        .update(app.admin(disable(true)))
        .await
        .unwrap();
    let validate_for_ci = || {
        let mut client = app.client.clone();
        let request = ValidateRequest {
            token: secret.clone(),
            audience: "ci".into(),
            ..Default::default()
        };
        async move { client.validate(request).await }
    };
    let disabled = validate_for_ci().await.unwrap().into_inner();
    assert_eq!(disabled.reason(), InvalidReason::Disabled);
    app.client
        .clone()
        .update(app.admin(disable(false)))
        .await
        .unwrap();
    // Forward-auth refusing a role it lacks spends nothing either.
    let missing_role = app
        .rest()
        .get("/api/auth?role=admin&audience=ci")
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(missing_role.status(), 403);
    let valid = validate_for_ci().await.unwrap().into_inner();
    assert!(valid.valid, "{valid:?}");
    assert_eq!(valid.rate_limits, [state("once", 1, 0, 3_600_000)]);
    let spent = validate_for_ci().await.unwrap().into_inner();
    assert_eq!(spent.reason(), InvalidReason::RateLimited);
}

#[tokio::test]
async fn management_and_a_reviewers_own_credential_spend_nothing_the_reviewed_token_does() {
    let app = spawn_app().await;
    // An admin token with a limit of one: managing is not a check.
    let admin = app
        .create_limited(
            "limited-admin",
            &["stackstate-admin"],
            vec![limit("one", 1, 3600)],
        )
        .await;
    for _ in 0..3 {
        app.client
            .clone()
            .list(crate::support::with_key(
                &admin,
                sts::proto::ListRequest::default(),
            ))
            .await
            .unwrap();
    }
    assert!(app.validate_costing(&admin, None).await.valid);

    let reviewer = app
        .create_limited("kong", &["token-reviewer"], vec![limit("one", 1, 3600)])
        .await;
    let reviewed = app
        .create_limited("reviewed", &["r"], vec![limit("twice", 2, 3600)])
        .await;
    let introspect = || {
        app.rest()
            .post("/oauth2/introspect")
            .header("x-api-key", &reviewer)
            .form(&[("token", reviewed.as_str())])
            .json_body()
    };
    assert_eq!(introspect().await["active"], true);
    assert_eq!(introspect().await["active"], true);
    // RFC 7662: an inactive token's answer says nothing more.
    assert_eq!(introspect().await, json!({ "active": false }));
    assert_eq!(
        app.metric("sts_rate_limited_checks_total{surface=\"introspection\"}")
            .await,
        1.0
    );

    let reviewed = app
        .create_limited("k8s", &["r"], vec![limit("once", 1, 3600)])
        .await;
    let review = || {
        app.rest()
            .post("/api/kubernetes/tokenreview")
            .bearer_auth(&reviewer)
            .json(&json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": { "token": reviewed },
            }))
            .json_body()
    };
    assert_eq!(review().await["status"]["authenticated"], true);
    let limited = review().await;
    assert_eq!(limited["status"]["authenticated"], false);
    let error = limited["status"]["error"].as_str().unwrap();
    assert!(error.contains("once=1/1h"), "{error}");
}

#[tokio::test]
async fn status_and_forward_auth_answer_429_with_retry_after_and_the_ratelimit_fields() {
    let app = spawn_app().await;
    let secret = app
        .create_limited(
            "web",
            &["viewer"],
            vec![limit("burst", 2, 10), limit("daily", 100, 86_400)],
        )
        .await;
    let rest = app.rest();
    let ok = rest
        .get("/api/server/status")
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // draft-ietf-httpapi-ratelimit-headers-09.
    assert_eq!(
        header(&ok, "ratelimit-policy").as_deref(),
        Some("\"burst\";q=2;w=10, \"daily\";q=100;w=86400")
    );
    assert_eq!(
        header(&ok, "ratelimit").as_deref(),
        Some("\"burst\";r=1;t=5, \"daily\";r=99;t=864")
    );
    let auth = rest
        .get("/api/auth/some/path?role=viewer")
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), 200);
    assert_eq!(
        header(&auth, "ratelimit").as_deref(),
        Some("\"burst\";r=0;t=10, \"daily\";r=98;t=1728")
    );
    for path in ["/api/server/status", "/api/auth?role=viewer"] {
        let limited = rest
            .get(path)
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        assert_eq!(limited.status(), 429, "{path}");
        assert_eq!(header(&limited, "retry-after").as_deref(), Some("5"));
        assert_eq!(
            header(&limited, "ratelimit").as_deref(),
            Some("\"burst\";r=0;t=10, \"daily\";r=98;t=1728")
        );
        assert!(header(&limited, "ratelimit-policy").is_some());
        let body: serde_json::Value = limited.json().await.unwrap();
        assert_eq!(body["error"], "RESOURCE_EXHAUSTED");
        assert!(
            body["message"].as_str().unwrap().contains("burst=2/10s"),
            "{body}"
        );
    }
    assert_eq!(
        app.metric("sts_rate_limited_checks_total{surface=\"status\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("sts_rate_limited_checks_total{surface=\"forward_auth\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn envoy_is_told_to_deny_with_429_and_to_pass_the_ratelimit_fields_on_an_allow() {
    let app = spawn_app().await;
    let secret = app
        .create_limited("mesh", &["r"], vec![limit("burst", 1, 60)])
        .await;
    let answer = app.check(check(&[("x-api-key", &secret)], None)).await;
    let Some(envoy_types::ext_authz::v3::pb::HttpResponse::OkResponse(ok)) = &answer.http_response
    else {
        panic!("an allow: {answer:?}");
    };
    let to_client: Vec<(String, String)> = ok
        .response_headers_to_add
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    assert!(
        to_client.contains(&("ratelimit".into(), "\"burst\";r=0;t=60".into())),
        "{to_client:?}"
    );
    assert!(
        to_client.contains(&("ratelimit-policy".into(), "\"burst\";q=1;w=60".into())),
        "{to_client:?}"
    );
    let (code, status, headers, body) =
        denied(&app.check(check(&[("x-api-key", &secret)], None)).await);
    assert_eq!(code, Code::ResourceExhausted as i32);
    assert_eq!(status, 429);
    assert!(
        headers.contains(&("retry-after".into(), "60".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("ratelimit".into(), "\"burst\";r=0;t=60".into())),
        "{headers:?}"
    );
    assert_eq!(body["error"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn the_servers_default_limits_are_copied_into_a_token_made_without_any() {
    let service = ServiceConfig {
        default_rate_limits: sts::model::RateLimits::parse_texts("d", &["burst=20/1s"]).unwrap(),
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    let (_, defaulted) = app.create("defaulted", &["r"]).await;
    assert_eq!(defaulted.rate_limits, [limit("burst", 20, 1)]);
    let (_, own) = app
        .create_with(CreateRequest {
            rate_limits: vec![limit("hourly", 5000, 3600)],
            ..create_request("own", &["r"])
        })
        .await;
    assert_eq!(own.rate_limits, [limit("hourly", 5000, 3600)]);
    let (_, none) = app
        .create_with(CreateRequest {
            no_rate_limits: true,
            ..create_request("none", &["r"])
        })
        .await;
    assert!(none.rate_limits.is_empty());
    assert_eq!(app.get_token(none.id).await.rate_limits, []);
    let both = app
        .client
        .clone()
        .create(app.admin(CreateRequest {
            no_rate_limits: true,
            rate_limits: vec![limit("x", 1, 1)],
            ..create_request("both", &["r"])
        }))
        .await;
    assert_code(both, Code::InvalidArgument);

    // REST: absent is the default, [] is none.
    let rest = app.rest();
    let created = |body: serde_json::Value| {
        rest.post("/api/security/tokens")
            .header("x-api-key", &app.admin_token)
            .json(&body)
            .json_body()
    };
    let absent = created(json!({"name": "a", "roles": ["r"]})).await;
    let empty = created(json!({"name": "b", "roles": ["r"], "rateLimits": []})).await;
    let given = created(json!({"name": "c", "roles": ["r"],
        "rateLimits": [{"name": "m", "limit": 9, "periodSeconds": 60}]}))
    .await;
    let shown = |id: &serde_json::Value| {
        rest.get(&format!("/api/security/tokens/{id}"))
            .header("x-api-key", &app.admin_token)
            .json_body()
    };
    assert_eq!(
        shown(&absent["id"]).await["rateLimits"],
        json!([{"name": "burst", "limit": 20, "periodSeconds": 1}])
    );
    assert!(shown(&empty["id"]).await.get("rateLimits").is_none());
    assert_eq!(
        shown(&given["id"]).await["rateLimits"],
        json!([{"name": "m", "limit": 9, "periodSeconds": 60}])
    );
}

#[tokio::test]
async fn limits_changed_by_update_take_effect_on_the_next_check() {
    let app = spawn_app().await;
    let (secret, created) = app
        .create_with(CreateRequest {
            rate_limits: vec![limit("a", 1, 3600)],
            ..create_request("changing", &["r"])
        })
        .await;
    assert!(app.validate_costing(&secret, None).await.valid);
    assert!(!app.validate_costing(&secret, None).await.valid);
    let update = |limits: Vec<RateLimit>| UpdateRequest {
        service_token: Some(ServiceToken {
            id: created.id,
            rate_limits: limits,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["rate_limits".into()],
        }),
    };
    // New terms start whole; an empty list removes every limit.
    let updated = app
        .client
        .clone()
        .update(app.admin(update(vec![limit("a", 2, 3600)])))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    assert_eq!(updated.rate_limits, [limit("a", 2, 3600)]);
    assert_eq!(
        app.validate_costing(&secret, None).await.rate_limits[0].remaining,
        1
    );
    app.client
        .clone()
        .update(app.admin(update(vec![])))
        .await
        .unwrap();
    for _ in 0..5 {
        let answer = app.validate_costing(&secret, None).await;
        assert!(answer.valid && answer.rate_limits.is_empty(), "{answer:?}");
    }
}

#[tokio::test]
async fn limits_out_of_their_bounds_are_refused_by_name() {
    let app = spawn_app().await;
    let refused = |limits: Vec<RateLimit>| {
        let client = app.client.clone();
        let request = app.admin(CreateRequest {
            rate_limits: limits,
            ..create_request("bad", &["r"])
        });
        async move {
            assert_code(client.clone().create(request).await, Code::InvalidArgument)
                .message()
                .to_owned()
        }
    };
    let nine = (0..9).map(|i| limit(&format!("l{i}"), 1, 1)).collect();
    assert!(refused(nine).await.contains("at most 8"));
    let twice = vec![limit("a", 1, 1), limit("a", 2, 2)];
    assert!(refused(twice).await.contains("given twice"));
    for (bad, says) in [
        (limit("a", 0, 1), "from 1 to 100000000"),
        (limit("a", 100_000_001, 1), "from 1 to 100000000"),
        (limit("a", 1, 0), "from 1s to 24h"),
        (limit("a", 1, 86_401), "from 1s to 24h"),
        (limit("", 1, 1), "name"),
        (limit("a b", 1, 1), "name"),
        (limit("\"x\"", 1, 1), "name"),
    ] {
        let message = refused(vec![bad.clone()]).await;
        assert!(message.contains(says), "{bad:?}: {message}");
        assert!(message.contains("rate_limits[0]"), "{message}");
    }
    let mut half = limit("a", 1, 1);
    half.period.as_mut().unwrap().nanos = 500_000_000;
    assert!(refused(vec![half]).await.contains("whole seconds"));
    let mut unset = limit("a", 1, 1);
    unset.period = None;
    assert!(refused(vec![unset]).await.contains("period"));
}
