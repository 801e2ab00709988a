//! Least privilege on the token: a token bound to sources, audiences and
//! routes is refused, with its own reason, wherever a check cannot see
//! that it is used within them (fail closed), on every check surface
//! (gRPC Validate, status, forward-auth, ext_authz, TokenReview,
//! introspection) and for management; an unbound token behaves as before.

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, HttpResponse},
    pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address},
        service::auth::v3::{AttributeContext, attribute_context},
    },
};
use serde_json::{Value, json};
use sts::{
    proto::{
        AllowedRoute, CreateRequest, GetRequest, InvalidReason, ListRequest, ServiceToken,
        UpdateRequest, ValidateRequest, ValidateResponse,
    },
    source::TrustedProxies,
};
use tonic::Code;

use crate::support::{
    ReadAnswer, TestApp, assert_code, create_request, server_config, spawn_app, spawn_app_with,
    with_key,
};

fn route(methods: &[&str], path: &str) -> AllowedRoute {
    AllowedRoute {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
    }
}

/// A create request for a token bound as given.
fn bound(
    name: &str,
    sources: &[&str],
    audiences: &[&str],
    routes: Vec<AllowedRoute>,
) -> CreateRequest {
    CreateRequest {
        allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        allowed_routes: routes,
        ..create_request(name, &["deployer"])
    }
}

/// What a caller states about the request it validates for.
#[derive(Default, Clone, Copy)]
struct Seen<'a> {
    source: &'a str,
    audience: &'a str,
    method: &'a str,
    path: &'a str,
}

impl TestApp {
    async fn validate_seen(
        &self,
        token: &str,
        seen: Seen<'_>,
    ) -> Result<ValidateResponse, tonic::Status> {
        self.client
            .clone()
            .validate(ValidateRequest {
                token: token.into(),
                source_address: seen.source.into(),
                audience: seen.audience.into(),
                http_method: seen.method.into(),
                path: seen.path.into(),
                cost: None,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn reason(&self, token: &str, seen: Seen<'_>) -> InvalidReason {
        self.validate_seen(token, seen).await.unwrap().reason()
    }

    async fn update_token(
        &self,
        token: ServiceToken,
        paths: &[&str],
    ) -> Result<ServiceToken, tonic::Status> {
        let request = UpdateRequest {
            service_token: Some(token),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        self.client
            .clone()
            .update(self.admin(request))
            .await
            .map(|r| r.into_inner().service_token.unwrap())
    }

    pub(crate) async fn get_token(&self, id: u64) -> ServiceToken {
        let answer = self.client.clone().get(self.admin(GetRequest { id })).await;
        answer.unwrap().into_inner().service_token.unwrap()
    }
}

#[tokio::test]
async fn validate_fails_closed_and_names_the_binding_that_refused() {
    let app = spawn_app().await;
    let (secret, created) = app
        .create_with(bound(
            "ci",
            &["10.0.0.0/8", "2001:db8::/32"],
            &["ci"],
            vec![
                route(&["GET", "head"], "/api/v1/*/items"),
                route(&[], "/hooks/**"),
            ],
        ))
        .await;
    assert_eq!(created.allowed_sources, ["10.0.0.0/8", "2001:db8::/32"]);
    assert_eq!(created.audiences, ["ci"]);
    assert_eq!(
        created.allowed_routes,
        [
            route(&["GET", "HEAD"], "/api/v1/*/items"),
            route(&[], "/hooks/**")
        ]
    );
    let full = Seen {
        source: "10.1.2.3",
        audience: "ci",
        method: "GET",
        path: "/api/v1/x/items?page=2",
    };
    // Each binding in turn, when the check does not say: sources first.
    assert_eq!(
        app.reason(&secret, Seen::default()).await,
        InvalidReason::SourceNotAllowed
    );
    let with_source = Seen {
        source: full.source,
        ..Seen::default()
    };
    assert_eq!(
        app.reason(&secret, with_source).await,
        InvalidReason::AudienceNotAllowed
    );
    let with_audience = Seen {
        audience: "ci",
        ..with_source
    };
    assert_eq!(
        app.reason(&secret, with_audience).await,
        InvalidReason::RouteNotAllowed
    );

    let answer = app.validate_seen(&secret, full).await.unwrap();
    assert!(answer.valid, "{answer:?}");
    // A check answers who the token is, never where else it may be used.
    let shown = answer.service_token.unwrap();
    assert!(shown.allowed_sources.is_empty() && shown.audiences.is_empty());
    assert!(shown.allowed_routes.is_empty() && shown.recent_sources.is_empty());

    for (source, valid) in [
        ("10.200.0.1", true),
        ("::ffff:10.9.9.9", true),
        ("2001:db8:1::5", true),
        ("11.0.0.1", false),
        ("::ffff:11.0.0.1", false),
        ("2001:db9::1", false),
        ("::1", false),
    ] {
        let answer = app
            .validate_seen(&secret, Seen { source, ..full })
            .await
            .unwrap();
        assert_eq!(answer.valid, valid, "{source}");
        if !valid {
            assert_eq!(answer.reason(), InvalidReason::SourceNotAllowed, "{source}");
        }
    }
    for audience in ["CI", "ci ", "deployer"] {
        let reason = app.reason(&secret, Seen { audience, ..full }).await;
        assert_eq!(reason, InvalidReason::AudienceNotAllowed, "{audience:?}");
    }
    for (method, path, valid) in [
        ("head", "/api/v1/x/items", true),
        ("GET", "/api/v1/a%20b/items", true),
        ("POST", "/hooks", true),
        ("DELETE", "/hooks/a/b", true),
        ("POST", "/api/v1/x/items", false),
        ("GET", "/api/v1/x/items/", false),
        ("GET", "/api/v1//items", false),
        ("GET", "/api/v1/x/../x/items", false),
        ("GET", "/api/v1/x/%2e%2e/items", false),
        ("GET", "/api/v1/a%2Fb/items", false),
        ("GET", "/API/v1/x/items", false),
        ("GET", "/Hooks", false),
        ("GET", "api/v1/x/items", false),
    ] {
        let answer = app
            .validate_seen(
                &secret,
                Seen {
                    method,
                    path,
                    ..full
                },
            )
            .await
            .unwrap();
        assert_eq!(answer.valid, valid, "{method} {path}");
        // A valid answer says it holds for this context only (never where
        // else the token may be used), so a caching caller keeps it not.
        assert_eq!(answer.bound, valid, "{method} {path}");
        if !valid {
            assert_eq!(
                answer.reason(),
                InvalidReason::RouteNotAllowed,
                "{method} {path}"
            );
        }
    }
    assert_eq!(
        app.metric("sts_validations_total{outcome=\"source_not_allowed\"}")
            .await,
        5.0
    );
    assert!(
        app.metric("sts_validations_total{outcome=\"route_not_allowed\"}")
            .await
            >= 9.0
    );

    // What a caller states must make sense: an error, not a refusal later.
    for (seen, field) in [
        (
            Seen {
                source: "10.1.2.3:443",
                ..full
            },
            "source_address",
        ),
        (
            Seen {
                source: "10.0.0.0/8",
                ..full
            },
            "source_address",
        ),
        (
            Seen {
                source: "localhost",
                ..full
            },
            "source_address",
        ),
        (Seen { path: "", ..full }, "http_method"),
        (Seen { method: "", ..full }, "http_method"),
    ] {
        let refused = assert_code(
            app.validate_seen(&secret, seen).await,
            Code::InvalidArgument,
        );
        assert!(refused.message().contains(field), "{}", refused.message());
    }

    // An unbound token: exactly as before, with or without a context.
    let (plain, _) = app.create("plain", &["deployer"]).await;
    assert!(
        app.validate_seen(&plain, Seen::default())
            .await
            .unwrap()
            .valid
    );
    let answer = app.validate_seen(&plain, full).await.unwrap();
    assert!(answer.valid && !answer.bound);
}

#[tokio::test]
async fn expiry_and_disabled_are_decided_before_bindings() {
    let app = spawn_app().await;
    let (secret, created) = app
        .create_with(bound("ci", &["10.0.0.0/8"], &[], Vec::new()))
        .await;
    let disabled = ServiceToken {
        disabled: true,
        ..created.clone()
    };
    app.update_token(disabled, &["disabled"]).await.unwrap();
    assert_eq!(
        app.reason(&secret, Seen::default()).await,
        InvalidReason::Disabled
    );
    let (expiring, _) = app
        .create_with(CreateRequest {
            expiration: Some(prost_types::Timestamp {
                seconds: app.clock.now_millis() / 1000 + 60,
                nanos: 0,
            }),
            ..bound("soon", &["10.0.0.0/8"], &[], Vec::new())
        })
        .await;
    app.clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(
        app.reason(&expiring, Seen::default()).await,
        InvalidReason::Expired
    );
}

#[tokio::test]
async fn bindings_are_set_changed_and_cleared_by_update_and_bad_ones_change_nothing() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["deployer"]).await;
    assert!(created.allowed_sources.is_empty());
    let id = created.id;
    let narrowed = ServiceToken {
        allowed_sources: vec!["192.0.2.7".into(), "::ffff:198.51.100.0/120".into()],
        audiences: vec!["https://ci.example".into()],
        allowed_routes: vec![route(&["post"], "/deploy/*")],
        ..created.clone()
    };
    let updated = app
        .update_token(
            narrowed,
            &["allowed_sources", "audiences", "allowed_routes"],
        )
        .await
        .unwrap();
    assert_eq!(updated.allowed_sources, ["192.0.2.7", "198.51.100.0/24"]);
    assert_eq!(updated.audiences, ["https://ci.example"]);
    assert_eq!(updated.allowed_routes, [route(&["POST"], "/deploy/*")]);
    assert_ne!(
        updated.etag, created.etag,
        "a binding is a manager's setting"
    );
    assert_eq!(app.get_token(id).await, updated);
    assert_eq!(
        app.reason(&secret, Seen::default()).await,
        InvalidReason::SourceNotAllowed
    );

    // Bad bindings: INVALID_ARGUMENT naming the field, and nothing changes.
    let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    for (token, path, field) in [
        (
            ServiceToken {
                allowed_sources: vec!["10.0.0.300".into()],
                ..updated.clone()
            },
            "allowed_sources",
            "allowed_sources",
        ),
        (
            ServiceToken {
                allowed_sources: many,
                ..updated.clone()
            },
            "allowed_sources",
            "allowed_sources",
        ),
        (
            ServiceToken {
                allowed_sources: vec!["10.0.0.1".into(), "10.0.0.1/32".into()],
                ..updated.clone()
            },
            "allowed_sources",
            "allowed_sources",
        ),
        (
            ServiceToken {
                audiences: vec![String::new()],
                ..updated.clone()
            },
            "audiences",
            "audiences",
        ),
        (
            ServiceToken {
                audiences: vec!["a".repeat(257)],
                ..updated.clone()
            },
            "audiences",
            "audiences",
        ),
        (
            ServiceToken {
                allowed_routes: vec![route(&[], "deploy")],
                ..updated.clone()
            },
            "allowed_routes",
            "allowed_routes[0]",
        ),
        (
            ServiceToken {
                allowed_routes: vec![route(&[], "/a/../b")],
                ..updated.clone()
            },
            "allowed_routes",
            "allowed_routes[0]",
        ),
        (
            ServiceToken {
                allowed_routes: vec![route(&[], "/a/b*")],
                ..updated.clone()
            },
            "allowed_routes",
            "allowed_routes[0]",
        ),
        (
            ServiceToken {
                allowed_routes: vec![route(&["GET"], "/ok"), route(&["G T"], "/a")],
                ..updated.clone()
            },
            "allowed_routes",
            "allowed_routes[1]",
        ),
    ] {
        let refused = assert_code(
            app.update_token(token, &[path]).await,
            Code::InvalidArgument,
        );
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    assert_eq!(app.get_token(id).await, updated);

    // Cleared: an empty list binds nothing, and the token works anywhere.
    let cleared = ServiceToken {
        allowed_sources: Vec::new(),
        audiences: Vec::new(),
        allowed_routes: Vec::new(),
        ..updated
    };
    let cleared = app
        .update_token(cleared, &["allowed_sources", "audiences", "allowed_routes"])
        .await
        .unwrap();
    assert!(cleared.allowed_sources.is_empty() && cleared.audiences.is_empty());
    assert!(cleared.allowed_routes.is_empty());
    assert!(app.validate(&secret).await.valid);
}

#[tokio::test]
async fn a_source_bound_admin_manages_only_from_its_sources_and_a_narrowed_one_not_at_all() {
    let app = spawn_app().await;
    let list = |key: String| {
        let client = app.client.clone();
        async move {
            client
                .clone()
                .list(with_key(&key, ListRequest::default()))
                .await
        }
    };
    // The test's client connects from 127.0.0.1.
    let (here, _) = app
        .create_with(CreateRequest {
            roles: vec![sts::config::DEFAULT_ADMIN_ROLE.into()],
            ..bound("here", &["127.0.0.0/8", "::1"], &[], Vec::new())
        })
        .await;
    assert!(list(here).await.is_ok());
    let (elsewhere, _) = app
        .create_with(CreateRequest {
            roles: vec![sts::config::DEFAULT_ADMIN_ROLE.into()],
            ..bound("elsewhere", &["192.0.2.0/24"], &[], Vec::new())
        })
        .await;
    let refused = assert_code(list(elsewhere.clone()).await, Code::PermissionDenied);
    assert!(
        refused.message().contains("source"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("192.0.2"),
        "never what would be allowed"
    );
    // The same refusal over REST: 403.
    let answer = app
        .rest()
        .get("/api/security/tokens")
        .header("x-api-key", &elsewhere)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    // Bound to an audience or a route: made for services behind a proxy,
    // never for management.
    for (name, audiences, routes) in [
        ("for-a-service", vec!["ci"], Vec::new()),
        ("on-a-route", Vec::new(), vec![route(&[], "/**")]),
    ] {
        let (secret, _) = app
            .create_with(CreateRequest {
                roles: vec![sts::config::DEFAULT_ADMIN_ROLE.into()],
                ..bound(name, &[], &audiences, routes)
            })
            .await;
        assert_code(list(secret).await, Code::PermissionDenied);
    }
}

#[tokio::test]
async fn binding_the_last_admin_to_an_audience_is_a_lockout_and_refused() {
    let app = spawn_app().await;
    let own = app
        .client
        .clone()
        .list(app.admin(ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .service_tokens
        .into_iter()
        .find(|t| t.name == "test-admin")
        .unwrap();
    let narrowed = ServiceToken {
        audiences: vec!["ci".into()],
        ..own.clone()
    };
    let refused = assert_code(
        app.update_token(narrowed, &["audiences"]).await,
        Code::FailedPrecondition,
    );
    assert!(
        refused.message().contains("binding to audiences or routes"),
        "{}",
        refused.message()
    );
    // Bound to sources it is used from: still an admin, so that is allowed.
    let sourced = ServiceToken {
        allowed_sources: vec!["127.0.0.1".into(), "::1".into()],
        ..own
    };
    app.update_token(sourced, &["allowed_sources"])
        .await
        .unwrap();
    assert!(
        app.client
            .clone()
            .list(app.admin(ListRequest::default()))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn rest_creates_shows_patches_and_clears_bindings_and_status_shows_none() {
    let app = spawn_app().await;
    let rest = &app.rest();
    let created: Value = rest
        .post("/api/security/tokens")
        .header("x-api-key", &app.admin_token)
        .json(&json!({
            "name": "ci",
            "roles": ["deployer"],
            "allowedSources": ["127.0.0.1", "::1"],
            "audiences": [],
            "allowedRoutes": [{"methods": ["get"], "path": "/api/server/status"}],
        }))
        .json_body()
        .await;
    let (secret, id) = (
        created["token"].as_str().unwrap().to_owned(),
        created["id"].clone(),
    );
    let path = format!("/api/security/tokens/{id}");
    let shown: Value = rest
        .get(&path)
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    assert_eq!(shown["allowedSources"], json!(["127.0.0.1", "::1"]));
    assert!(
        shown.get("audiences").is_none(),
        "empty lists are left out: {shown}"
    );
    assert_eq!(
        shown["allowedRoutes"],
        json!([{"methods": ["GET"], "path": "/api/server/status"}])
    );

    // Status is a check from here, on its own route: allowed, and it
    // answers without the bindings.
    let status = || async {
        let answer = rest
            .get("/api/server/status")
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        (
            answer.status().as_u16(),
            answer.json::<Value>().await.unwrap(),
        )
    };
    let (admin, at) = (app.admin_token.as_str(), path.as_str());
    let patch = |body: Value| async move {
        let answer = rest
            .patch(at)
            .header("x-api-key", admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            answer.status().as_u16(),
            answer.json::<Value>().await.unwrap(),
        )
    };
    let (code, body) = status().await;
    assert_eq!(code, 200);
    for hidden in ["allowedSources", "allowedRoutes", "recentSources"] {
        assert!(body["serviceToken"].get(hidden).is_none(), "{body}");
    }

    // Patched to an audience: status names none, so it is refused, 403
    // with the reason and never the audiences that would do.
    assert_eq!(patch(json!({"audiences": ["reports"]})).await.0, 200);
    let (code, body) = status().await;
    assert_eq!(code, 403);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("audience"), "{body}");
    assert!(!body.to_string().contains("reports"), "{body}");

    // Bad patches change nothing; `null` and `[]` clear.
    for bad in [
        json!({"allowedSources": "10.0.0.0/8"}),
        json!({"allowedSources": ["nope"]}),
        json!({"allowedRoutes": [{"path": "/a", "verbs": ["GET"]}]}),
        json!({"allowedRoutes": [{"path": "a"}]}),
    ] {
        assert_eq!(patch(bad.clone()).await.0, 400, "{bad}");
    }
    let unchanged: Value = rest
        .get(&path)
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    assert_eq!(unchanged["audiences"], json!(["reports"]));
    let (code, cleared) =
        patch(json!({"audiences": null, "allowedSources": [], "allowedRoutes": null})).await;
    assert_eq!(code, 200);
    for field in ["allowedSources", "audiences", "allowedRoutes"] {
        assert!(cleared.get(field).is_none(), "{cleared}");
    }
    assert_eq!(status().await.0, 200);

    // A create with a bad binding is a 400 naming the field.
    let refused = rest
        .post("/api/security/tokens")
        .header("x-api-key", &app.admin_token)
        .json(&json!({"name": "x", "roles": ["r"], "allowedSources": ["10.0.0.0/33"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("allowedSources"),
        "{body}"
    );
}

/// A server that trusts 127.0.0.1 (the tests' own address) as a proxy.
async fn behind_a_trusted_proxy() -> TestApp {
    let server = sts::config::ServerConfig {
        trusted_proxies: TrustedProxies::parse("127.0.0.1, ::1").unwrap(),
        ..server_config()
    };
    spawn_app_with(Default::default(), server).await
}

#[tokio::test]
async fn forward_auth_reads_the_original_request_from_a_trusted_proxy_only() {
    let app = behind_a_trusted_proxy().await;
    let (secret, _) = app
        .create_with(bound(
            "behind-a-proxy",
            &["192.0.2.0/24", "2001:db8::/32"],
            &["reports"],
            vec![route(&["GET"], "/reports/**")],
        ))
        .await;
    let rest = app.rest();
    let ask = |path: &str, headers: &[(&str, &str)]| {
        let mut request = rest.get(path).header("x-api-key", &secret);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap();
            (status, body)
        }
    };
    let traefik = [
        ("x-forwarded-for", "192.0.2.5"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/2026/q4?format=csv"),
    ];
    assert_eq!(ask("/api/auth?audience=reports", &traefik).await.0, 200);
    let nginx = [
        ("x-forwarded-for", "2001:db8::7"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/reports/"),
    ];
    assert_eq!(ask("/api/auth?audience=reports", &nginx).await.0, 200);
    let (status, body) = ask("/api/auth", &traefik).await;
    assert_eq!((status, body.contains("audience")), (403, true), "{body}");
    assert!(!body.contains("reports"), "{body}");
    let (status, body) = ask("/api/auth?audience=reports", &traefik[1..]).await;
    assert_eq!(
        (status, body.contains("source")),
        (403, true),
        "the proxy itself: {body}"
    );
    assert!(!body.contains("192.0.2"), "{body}");
    let elsewhere = [("x-forwarded-for", "198.51.100.1"), traefik[1], traefik[2]];
    assert_eq!(ask("/api/auth?audience=reports", &elsewhere).await.0, 403);
    // A client's X-Forwarded-Uri beside the proxy's X-Original-URI: the two
    // disagree, so the route is unknown.
    let spoofed = [
        traefik[0],
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/x"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/admin"),
    ];
    let (status, body) = ask("/api/auth?audience=reports", &spoofed).await;
    assert_eq!((status, body.contains("route")), (403, true), "{body}");
    let posted = [traefik[0], ("x-forwarded-method", "POST"), traefik[2]];
    assert_eq!(ask("/api/auth?audience=reports", &posted).await.0, 403);
    assert_eq!(
        ask("/api/auth?audience=reports&audience=reports", &traefik)
            .await
            .0,
        400,
        "an audience given twice is a mistake"
    );

    // Envoy's HTTP flavour: the original path below /api/auth, its query
    // the client's (an `audience` there changes nothing); the audience
    // from the header the proxy sets.
    let envoy = [("x-forwarded-for", "192.0.2.5")];
    assert_eq!(
        ask("/api/auth/reports/q4?audience=reports", &envoy).await.0,
        403
    );
    let with_audience = [envoy[0], ("x-sts-audience", "reports")];
    assert_eq!(ask("/api/auth/reports/q4", &with_audience).await.0, 200);
    assert_eq!(ask("/api/auth/admin", &with_audience).await.0, 403);
}

#[tokio::test]
async fn without_trusted_proxies_nothing_a_client_writes_about_the_request_is_believed() {
    let app = spawn_app().await;
    let rest = app.rest();
    let spoofing = [
        ("x-forwarded-for", "192.0.2.5"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/reports/x"),
        ("x-sts-audience", "reports"),
    ];
    let send = |secret: String, path: &'static str| {
        let mut request = rest.get(path).header("x-api-key", secret);
        for (name, value) in spoofing {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let (by_source, _) = app
        .create_with(bound("s", &["192.0.2.0/24"], &[], Vec::new()))
        .await;
    assert_eq!(
        send(by_source, "/api/auth").await,
        403,
        "the source is the peer"
    );
    let (here, _) = app
        .create_with(bound("h", &["127.0.0.1", "::1"], &[], Vec::new()))
        .await;
    assert_eq!(send(here, "/api/auth").await, 200, "the peer is the source");
    let (by_route, _) = app
        .create_with(bound("r", &[], &[], vec![route(&[], "/reports/**")]))
        .await;
    assert_eq!(send(by_route.clone(), "/api/auth").await, 403);
    assert_eq!(send(by_route, "/api/auth/reports/x").await, 403);
    let (by_audience, _) = app
        .create_with(bound("a", &[], &["reports"], Vec::new()))
        .await;
    assert_eq!(send(by_audience.clone(), "/api/auth/x").await, 403);
    assert_eq!(
        send(by_audience, "/api/auth?audience=reports").await,
        200,
        "the proxy's URL"
    );
}

fn envoy_check(
    secret: &str,
    source: &str,
    method: &str,
    path: &str,
    audience: Option<&str>,
) -> CheckRequest {
    let http = attribute_context::HttpRequest {
        method: method.into(),
        path: path.into(),
        headers: [("x-api-key".to_string(), secret.to_string())].into(),
        ..Default::default()
    };
    let peer = attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: source.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(40_000)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer),
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: audience
                .map(|a| ("sts.audience".to_string(), a.to_string()))
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn ext_authz_takes_source_route_and_audience_from_what_envoy_saw() {
    let app = spawn_app().await;
    let (secret, _) = app
        .create_with(bound(
            "mesh",
            &["10.0.0.0/8", "fd00::/8"],
            &["billing"],
            vec![route(&["GET", "POST"], "/invoices/*")],
        ))
        .await;
    let code = |answer: &envoy_types::ext_authz::v3::pb::CheckResponse| {
        answer.status.as_ref().unwrap().code
    };
    for (source, method, path, audience, allowed) in [
        ("10.1.1.1", "GET", "/invoices/7?x=1", Some("billing"), true),
        ("fd00::5", "POST", "/invoices/7", Some("billing"), true),
        (
            "::ffff:10.1.1.1",
            "GET",
            "/invoices/7",
            Some("billing"),
            true,
        ),
        ("192.0.2.1", "GET", "/invoices/7", Some("billing"), false),
        ("10.1.1.1", "GET", "/invoices/7", None, false),
        ("10.1.1.1", "GET", "/invoices/7", Some("shipping"), false),
        ("10.1.1.1", "DELETE", "/invoices/7", Some("billing"), false),
        (
            "10.1.1.1",
            "GET",
            "/invoices/7/lines",
            Some("billing"),
            false,
        ),
        (
            "not-an-address",
            "GET",
            "/invoices/7",
            Some("billing"),
            false,
        ),
    ] {
        let answer = app
            .check(envoy_check(&secret, source, method, path, audience))
            .await;
        if allowed {
            assert_eq!(code(&answer), 0, "{source} {method} {path}: {answer:?}");
        } else {
            assert_eq!(
                code(&answer),
                Code::PermissionDenied as i32,
                "{source} {method} {path}"
            );
            let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
                panic!("a denial: {answer:?}");
            };
            assert_eq!(denied.status.as_ref().unwrap().code, 403);
        }
    }
}

#[tokio::test]
async fn token_review_answers_shared_audiences_and_refuses_what_it_cannot_see() {
    let app = spawn_app().await;
    let (reviewer, _) = app.create("kube-apiserver", &["token-reviewer"]).await;
    let review = |token: &str, audiences: Option<&[&str]>| {
        let mut spec = json!({ "token": token });
        if let Some(audiences) = audiences {
            spec["audiences"] = json!(audiences);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let request = app
            .rest()
            .post("/api/kubernetes/tokenreview")
            .bearer_auth(&reviewer)
            .json(&body);
        async move {
            let answer: Value = request.json_body().await;
            answer["status"].clone()
        }
    };
    let (for_api, _) = app
        .create_with(bound("for-api", &[], &["api", "vault"], Vec::new()))
        .await;
    let status = review(&for_api, Some(&["https://kubernetes.default.svc", "api"])).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["audiences"], json!(["api"]), "the intersection");
    let status = review(&for_api, Some(&["https://kubernetes.default.svc"])).await;
    assert_eq!(status["authenticated"], false, "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("audiences"),
        "{status}"
    );
    let status = review(&for_api, None).await;
    assert_eq!(
        status["authenticated"], false,
        "no audience asked: {status}"
    );

    let (unbound, _) = app.create("plain", &["r"]).await;
    let status = review(&unbound, Some(&["a", "b"])).await;
    assert_eq!(status["audiences"], json!(["a", "b"]), "{status}");

    for (name, sources, routes, word) in [
        ("by-source", vec!["10.0.0.0/8"], Vec::new(), "source"),
        ("by-route", Vec::new(), vec![route(&[], "/**")], "routes"),
    ] {
        let (secret, _) = app.create_with(bound(name, &sources, &[], routes)).await;
        let status = review(&secret, Some(&["api"])).await;
        assert_eq!(status["authenticated"], false, "{status}");
        assert!(status["error"].as_str().unwrap().contains(word), "{status}");
    }
}

#[tokio::test]
async fn introspection_names_the_audiences_and_a_source_or_route_bound_token_is_inactive() {
    let app = spawn_app().await;
    let (reviewer, _) = app.create("kong", &["token-reviewer"]).await;
    let introspect = |token: &str| {
        let request = app
            .rest()
            .post("/oauth2/introspect")
            .header("x-api-key", &reviewer)
            .form(&[("token", token)]);
        async move { request.json_body().await }
    };
    let (for_api, _) = app
        .create_with(bound("for-api", &[], &["api", "vault"], Vec::new()))
        .await;
    let answer = introspect(&for_api).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["aud"], json!(["api", "vault"]));
    let (plain, _) = app.create("plain", &["r"]).await;
    assert!(introspect(&plain).await.get("aud").is_none());
    for (sources, routes) in [
        (vec!["10.0.0.0/8"], Vec::new()),
        (Vec::new(), vec![route(&[], "/**")]),
    ] {
        let (secret, _) = app.create_with(bound("bound", &sources, &[], routes)).await;
        assert_eq!(introspect(&secret).await, json!({"active": false}));
    }
}

#[tokio::test]
async fn the_source_binding_policy_refuses_unbound_tokens_and_lists_those_from_before() {
    let app = spawn_app_with(
        sts::config::ServiceConfig {
            require_source_binding: true,
            ..Default::default()
        },
        server_config(),
    )
    .await;
    // The bootstrap admin is unbound: the way in, listed as over policy.
    let refused = assert_code(
        app.client
            .clone()
            .create(app.admin(create_request("unbound", &["r"])))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        refused.message().contains("--require-source-binding"),
        "{}",
        refused.message()
    );
    let (_, bound_token) = app
        .create_with(bound("bound", &["10.0.0.0/8"], &[], Vec::new()))
        .await;
    let unbound = ServiceToken {
        allowed_sources: Vec::new(),
        ..bound_token.clone()
    };
    assert_code(
        app.update_token(unbound, &["allowed_sources"]).await,
        Code::InvalidArgument,
    );
    // REST names its own field.
    let answer = app
        .rest()
        .post("/api/security/tokens")
        .header("x-api-key", &app.admin_token)
        .json(&json!({"name": "x", "roles": ["r"]}))
        .json_body()
        .await;
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("allowedSources"),
        "{answer}"
    );
    let over = app
        .client
        .clone()
        .list(app.admin(ListRequest {
            over_policy: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .service_tokens;
    let names: Vec<&str> = over.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["test-admin"]);
}

#[tokio::test]
async fn the_sources_a_token_is_used_from_are_recorded_for_its_managers_only() {
    let app = behind_a_trusted_proxy().await;
    let (secret, created) = app.create("ci", &["deployer"]).await;
    fn from(source: &str) -> Seen<'_> {
        Seen {
            source,
            ..Seen::default()
        }
    }
    // Through Validate (the caller states the source) and forward-auth
    // (the client a trusted proxy names), IPv4-mapped read as IPv4.
    for source in ["10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1"] {
        assert!(
            app.validate_seen(&secret, from(source))
                .await
                .unwrap()
                .valid
        );
    }
    let through_proxy = app
        .rest()
        .get("/api/auth")
        .header("x-api-key", &secret)
        .header("x-forwarded-for", "192.0.2.9")
        .send()
        .await
        .unwrap();
    assert_eq!(through_proxy.status(), 200);
    // A check without a source records none; a refused check nothing.
    assert!(app.validate(&secret).await.valid);
    app.service.write_last_used().await;
    let token = app.get_token(created.id).await;
    let mut addresses: Vec<&str> = token
        .recent_sources
        .iter()
        .map(|s| s.address.as_str())
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["10.0.0.1", "192.0.2.9", "2001:db8::1"]);
    assert!(
        token
            .recent_sources
            .iter()
            .all(|s| s.last_seen_at.is_some())
    );
    // REST and the CLI show them; a check's answer never does.
    let rest: Value = app
        .rest()
        .get(&format!("/api/security/tokens/{}", created.id))
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    assert_eq!(rest["recentSources"].as_array().unwrap().len(), 3, "{rest}");
    let answer = app.validate_seen(&secret, from("10.0.0.1")).await.unwrap();
    assert!(answer.service_token.unwrap().recent_sources.is_empty());
    let status: Value = app
        .rest()
        .get("/api/server/status")
        .header("x-api-key", &secret)
        .json_body()
        .await;
    assert!(
        status["serviceToken"].get("recentSources").is_none(),
        "{status}"
    );
    let terminal = crate::cli::Terminal::logged_in(&app).await;
    let described = terminal
        .sts(&["service-token", "describe", &created.id.to_string()])
        .await
        .ok();
    let row = described
        .stdout
        .lines()
        .find(|l| l.starts_with("RECENT SOURCES"))
        .unwrap();
    for address in ["10.0.0.1", "192.0.2.9", "2001:db8::1"] {
        assert!(row.contains(address), "{row}");
    }
}

#[tokio::test]
async fn with_recording_off_no_source_is_kept() {
    let app = spawn_app_with(
        sts::config::ServiceConfig {
            record_sources: false,
            ..Default::default()
        },
        server_config(),
    )
    .await;
    let (secret, created) = app.create("ci", &["deployer"]).await;
    let seen = Seen {
        source: "10.0.0.1",
        ..Seen::default()
    };
    assert!(app.validate_seen(&secret, seen).await.unwrap().valid);
    app.service.write_last_used().await;
    let token = app.get_token(created.id).await;
    assert!(token.last_used_at.is_some(), "the use is recorded");
    assert!(token.recent_sources.is_empty(), "{token:?}");
}
