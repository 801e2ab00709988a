//! Envoy's external authorization over gRPC (`Authorization/Check`), called
//! with the `envoy-types` client exactly as Envoy calls it: headers
//! lower-cased, the route's context extensions, denials as answers.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse},
    pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::{
            AttributeContext, attribute_context, authorization_client::AuthorizationClient,
        },
    },
};
use prost::Message as _;
use sts::token::Secret;

use crate::{
    support::faults::FaultyStore,
    support::{TestApp, channel, server_config, spawn_app, spawn_app_on, spawn_app_with},
};

/// The descriptor set reflection serves for Envoy's API, compiled from the
/// protos the `envoy-types` crate ships (found through `cargo metadata`).
fn compile_envoy_descriptors() -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types is a dependency");
    let protos = PathBuf::from(manifest).parent().unwrap().join("proto");
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "googleapis",
        "protoc-gen-validate",
        "xds",
        "cel-spec/proto",
    ]
    .iter()
    .map(|dir| protos.join(dir))
    .collect();
    let mut compiler = protox::Compiler::new(includes).unwrap();
    compiler.include_imports(true).include_source_info(false);
    compiler
        .open_file("envoy/service/auth/v3/external_auth.proto")
        .unwrap();
    compiler.file_descriptor_set().encode_to_vec()
}

#[test]
fn reflection_serves_the_descriptors_of_the_envoy_types_in_use() {
    let compiled = compile_envoy_descriptors();
    let committed =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/envoy/ext_authz_v3.binpb");
    if std::env::var_os("STS_WRITE_DESCRIPTORS").is_some() {
        std::fs::write(&committed, &compiled).unwrap();
    }
    assert!(
        compiled == sts::proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET,
        "proto/envoy/ext_authz_v3.binpb is not what envoy-types' protos compile to; \
         run this test with STS_WRITE_DESCRIPTORS=1 and commit the file"
    );
}

/// A `CheckRequest` as Envoy sends it: `headers` (names lower-cased) and,
/// when the route names them, the roles it requires.
pub(crate) fn check(headers: &[(&str, &str)], required_roles: Option<&str>) -> CheckRequest {
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/builds/42".into(),
        host: "service.example".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: required_roles
                .map(|roles| (sts::grpc::REQUIRED_ROLES.to_string(), roles.to_string()))
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

impl TestApp {
    pub(crate) async fn check(&self, request: CheckRequest) -> CheckResponse {
        // An RPC error would let the request through behind an Envoy with
        // `failure_mode_allow`: every answer must be a CheckResponse.
        AuthorizationClient::new(channel(self.addr).await)
            .check(request)
            .await
            .expect("Check answers, never fails")
            .into_inner()
    }
}

/// The headers an allow sets, as (name, value), and those it removes.
fn allowed(answer: &CheckResponse) -> (Vec<(String, String)>, Vec<String>) {
    assert_eq!(answer.status.as_ref().unwrap().code, 0, "{answer:?}");
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("an allow carries an ok_response: {answer:?}");
    };
    let set = ok
        .headers
        .iter()
        .map(|option| {
            // Overwrite, so what the client sent under these names never
            // reaches the service.
            assert_eq!(
                option.append_action,
                envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            );
            let header = option.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

/// The gRPC code, HTTP status, headers and JSON body of a denial.
pub(crate) fn denied(
    answer: &CheckResponse,
) -> (i32, i32, Vec<(String, String)>, serde_json::Value) {
    let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
        panic!("a denial carries a denied_response: {answer:?}");
    };
    let headers = denied
        .headers
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (
        answer.status.as_ref().unwrap().code,
        denied.status.as_ref().unwrap().code,
        headers,
        serde_json::from_str(&denied.body).unwrap(),
    )
}

/// Request headers as (name, value) pairs.
type Headers<'a> = Vec<(&'a str, &'a str)>;

const UNAUTHENTICATED: i32 = 16;
const PERMISSION_DENIED: i32 = 7;
const INVALID_ARGUMENT: i32 = 3;
const UNAVAILABLE: i32 = 14;

#[tokio::test]
async fn a_valid_token_is_allowed_with_its_identity_and_without_its_secret() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci-runner", &["builder", "deployer"]).await;
    let api_key = format!("ApiKey {secret}");
    let bearer = format!("Bearer {secret}");
    for (headers, removed) in [
        (vec![("x-api-key", secret.as_str())], vec!["x-api-key"]),
        (
            vec![("authorization", api_key.as_str())],
            vec!["authorization"],
        ),
        (
            vec![("authorization", bearer.as_str())],
            vec!["authorization"],
        ),
        (
            vec![
                ("authorization", bearer.as_str()),
                ("x-api-key", secret.as_str()),
            ],
            vec!["authorization", "x-api-key"],
        ),
    ] {
        let mut headers = headers;
        // A client passing itself off as someone else.
        headers.push(("x-service-token-name", "root"));
        headers.push(("x-service-token-roles", "admin"));
        headers.push(("x-service-token-previous-secret", "true"));
        let (set, removes) = allowed(&app.check(check(&headers, None)).await);
        assert_eq!(
            set,
            vec![
                ("x-service-token-id".to_string(), created.id.to_string()),
                ("x-service-token-name".to_string(), "ci-runner".to_string()),
                (
                    "x-service-token-roles".to_string(),
                    "builder,deployer".to_string()
                ),
            ]
        );
        let mut expected: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
        expected.push("x-service-token-previous-secret".into());
        let mut removes = removes;
        removes.sort();
        expected.sort();
        assert_eq!(removes, expected, "{headers:?}");
    }

    // Required roles from the route: every one is needed.
    for roles in ["builder", "builder,deployer", "deployer, builder"] {
        allowed(
            &app.check(check(&[("x-api-key", &secret)], Some(roles)))
                .await,
        );
    }
}

#[tokio::test]
async fn every_invalid_credential_is_a_401_denial_never_an_rpc_error() {
    let app = spawn_app().await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let (expiring, _) = app.create_expiring_in("expiring", &["r"], 60).await;
    let (deleted, created) = app.create("deleted", &["r"]).await;
    // Checked once while valid, so it is in the cache when deleted.
    allowed(&app.check(check(&[("x-api-key", &deleted)], None)).await);
    app.client
        .clone()
        .delete(app.admin(sts::proto::DeleteRequest {
            id: created.id,
            ..Default::default()
        }))
        .await
        .unwrap();
    app.clock.advance(Duration::from_secs(61));
    let admin = format!("Bearer {}", app.admin_token);
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("missing", vec![], "no credential"),
        (
            "malformed",
            vec![("x-api-key", "svctok-nope")],
            "not a service token",
        ),
        (
            "unknown",
            vec![("x-api-key", &unknown)],
            "unknown or has been deleted",
        ),
        (
            "deleted",
            vec![("x-api-key", &deleted)],
            "unknown or has been deleted",
        ),
        ("expired", vec![("x-api-key", &expiring)], "has expired"),
        (
            "foreign scheme",
            vec![("authorization", "Basic dXNlcjpwdw==")],
            "ApiKey or Bearer",
        ),
        (
            "two different tokens",
            vec![("x-api-key", &unknown), ("authorization", &admin)],
            "disagree",
        ),
    ];
    for (case, headers, says) in cases {
        let answer = app.check(check(&headers, None)).await;
        let (code, status, headers, body) = denied(&answer);
        assert_eq!((code, status), (UNAUTHENTICATED, 401), "{case}");
        assert!(
            headers.contains(&("www-authenticate".into(), "ApiKey".into())),
            "{case}"
        );
        assert!(
            headers.contains(&("content-type".into(), "application/json".into())),
            "{case}"
        );
        assert_eq!(body["error"], "UNAUTHENTICATED", "{case}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{case}: {message}");
        assert_eq!(answer.status.unwrap().message, message, "{case}");
    }
}

#[tokio::test]
async fn a_role_the_route_requires_and_the_token_lacks_is_a_403_denial() {
    let app = spawn_app().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    for roles in ["deployer", "builder,deployer"] {
        let answer = app
            .check(check(&[("x-api-key", &secret)], Some(roles)))
            .await;
        let (code, status, headers, body) = denied(&answer);
        assert_eq!((code, status), (PERMISSION_DENIED, 403), "{roles}");
        assert!(!headers.iter().any(|(k, _)| k == "www-authenticate"));
        assert_eq!(body["error"], "PERMISSION_DENIED");
        assert!(
            body["message"].as_str().unwrap().contains("`deployer`"),
            "{body}"
        );
    }
    // A route whose roles cannot be roles fails closed, saying why.
    let answer = app
        .check(check(&[("x-api-key", &secret)], Some("a b")))
        .await;
    let (code, status, _, body) = denied(&answer);
    assert_eq!((code, status), (INVALID_ARGUMENT, 400));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("sts.required_roles"),
        "{body}"
    );
}

#[tokio::test]
async fn raw_headers_are_read_as_envoy_sends_them_with_encode_raw_headers() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci-runner", &["builder"]).await;
    let raw = |pairs: &[(&str, &str)]| {
        let mut request = check(&[], None);
        let http = request
            .attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap();
        http.header_map = Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        request
    };
    let (set, _) = allowed(&app.check(raw(&[("x-api-key", &secret)])).await);
    assert_eq!(
        set[0],
        ("x-service-token-id".into(), created.id.to_string())
    );
    // Kept apart, a repeated credential header is refused as on the HTTP side.
    let answer = app
        .check(raw(&[("x-api-key", &secret), ("x-api-key", &secret)]))
        .await;
    let (_, status, _, body) = denied(&answer);
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
}

#[tokio::test]
async fn a_previous_secret_in_its_grace_period_is_allowed_and_said() {
    let app = spawn_app().await;
    let (old, created) = app.create("ci-runner", &["builder"]).await;
    app.rotate(created.id, Duration::from_secs(3600))
        .await
        .unwrap();
    let (set, removes) = allowed(&app.check(check(&[("x-api-key", &old)], None)).await);
    assert!(set.contains(&("x-service-token-previous-secret".into(), "true".into())));
    assert_eq!(removes, vec!["x-api-key".to_string()]);
}

#[tokio::test]
async fn with_forward_credential_the_secret_goes_on_to_the_service() {
    let mut server = server_config();
    server.integrations.forward_credential = true;
    let app = spawn_app_with(Default::default(), server).await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let (_, removes) = allowed(&app.check(check(&[("x-api-key", &secret)], None)).await);
    assert_eq!(removes, vec!["x-service-token-previous-secret".to_string()]);
}

#[tokio::test]
async fn a_store_outage_is_a_503_denial() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    store.failing.store(true, Ordering::SeqCst);
    let (code, status, _, body) = denied(&app.check(check(&[("x-api-key", &secret)], None)).await);
    assert_eq!((code, status), (UNAVAILABLE, 503));
    assert!(
        body["message"].as_str().unwrap().contains("incident"),
        "{body}"
    );
    store.failing.store(false, Ordering::SeqCst);
    allowed(&app.check(check(&[("x-api-key", &secret)], None)).await);
}

#[tokio::test]
async fn checks_go_through_the_one_validation_core() {
    let app = spawn_app().await;
    let (secret, _) = app.create("ci-runner", &["builder"]).await;
    let names = [
        r#"sts_validations_total{outcome="valid"}"#,
        r#"sts_validations_total{outcome="malformed"}"#,
        r#"sts_role_checks_total{outcome="refused"}"#,
        r#"sts_request_duration_seconds_count{protocol="grpc",route="/envoy.service.auth.v3.Authorization/Check"}"#,
    ];
    let mut before = Vec::new();
    for name in names {
        before.push(app.metric(name).await);
    }
    for _ in 0..3 {
        allowed(&app.check(check(&[("x-api-key", &secret)], None)).await);
    }
    app.check(check(&[("x-api-key", "svctok-nope")], None))
        .await;
    app.check(check(&[("x-api-key", &secret)], Some("deployer")))
        .await;
    // Four valid (one of them lacking the role), one malformed, one
    // refusal; five checks timed under their own route.
    for (name, (before, added)) in names
        .iter()
        .zip(before.into_iter().zip([4.0, 1.0, 1.0, 5.0]))
    {
        assert_eq!(app.metric(name).await, before + added, "{name}");
    }
}

#[tokio::test]
async fn reflection_describes_check_as_grpcurl_asks() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let client = ServerReflectionClient::new(channel(app.addr).await);
    // One file, as grpcurl asks: by a symbol, then each import by name.
    let ask = |request: MessageRequest| {
        let mut client = client.clone();
        async move {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            let Some(MessageResponse::FileDescriptorResponse(files)) =
                answers.message().await.unwrap().unwrap().message_response
            else {
                panic!("expected a file descriptor");
            };
            prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..]).unwrap()
        }
    };
    let service = ask(MessageRequest::FileContainingSymbol(
        "envoy.service.auth.v3.Authorization".into(),
    ))
    .await;
    assert_eq!(service.name(), "envoy/service/auth/v3/external_auth.proto");
    assert_eq!(service.service[0].method[0].name(), "Check");
    let mut pending = service.dependency.clone();
    let mut seen = std::collections::HashSet::new();
    while let Some(name) = pending.pop() {
        if seen.insert(name.clone()) {
            let file = ask(MessageRequest::FileByFilename(name.clone())).await;
            assert_eq!(file.name(), name);
            pending.extend(file.dependency);
        }
    }
    assert!(
        seen.contains("envoy/service/auth/v3/attribute_context.proto"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_allow_tells_the_client_when_its_token_expires() {
    let app = spawn_app().await;
    let (expiring, created) = app.create_expiring_in("ci", &["r"], 3600).await;
    let answer = app.check(check(&[("x-api-key", &expiring)], None)).await;
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("{answer:?}");
    };
    let seconds = created.expiration.unwrap().seconds;
    let expected = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(seconds as u64),
    )
    .to_string();
    let header = ok.response_headers_to_add[0].header.as_ref().unwrap();
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("x-service-token-expiration", expected.as_str())
    );
    let (forever, _) = app.create("cd", &["r"]).await;
    let answer = app.check(check(&[("x-api-key", &forever)], None)).await;
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("{answer:?}");
    };
    assert!(ok.response_headers_to_add.is_empty());
}
