//! No secret in the logs: a whole session against the real binary at the
//! most verbose level (`RUST_LOG=trace`, every crate: ours, tonic, hyper, h2,
//! sled), every RPC (rotations included), every HTTP path, every kind of
//! error, and not one token
//! (nor a piece of one) in anything it printed.

use serde_json::json;
use sts::{
    proto::{
        DeleteRequest, ListRequest, RotateRequest, UpdateRequest, ValidateRequest,
        token_service_client::TokenServiceClient,
    },
    token::{PREFIX, Secret},
};

use crate::support::ReadAnswer;
use crate::{
    support::process::{ServerProcess, sts_server},
    support::{channel, create_request, with_header, with_key},
};

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = sts_server()
        .env("RUST_LOG", "trace")
        .arg("bootstrap")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(bootstrap.status.success(), "{bootstrap:?}");
    let admin = String::from_utf8(bootstrap.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let mut log = String::from_utf8(bootstrap.stderr).unwrap();

    // Webhooks on, with a secret and a URL holding credentials of its own.
    let receiver = crate::webhooks::Receiver::start().await;
    let hook = receiver
        .url
        .replace("http://", "http://hookuser:hookpassword@")
        + "?key=hookquerysecret";
    const WEBHOOK_SECRET: &str = "webhook-signing-secret-of-the-test";
    let env = [
        ("RUST_LOG", "trace"),
        ("STS_WEBHOOK_URL", hook.as_str()),
        ("STS_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let server = ServerProcess::start_with(dir.path(), &env).await;
    let mut grpc = TokenServiceClient::new(channel(server.addr).await);
    let http = reqwest::Client::new();
    let url = |path: &str| server.rest().url(path);

    // gRPC: create, refusals of every kind, validate, list, delete.
    let reader = grpc
        .create(with_key(&admin, create_request("reader", &["reader"])))
        .await
        .unwrap()
        .into_inner()
        .token;
    let unknown = Secret::generate().expose_secret().to_owned();
    let mistyped = {
        let mut t = Secret::generate().expose_secret().to_owned();
        let last = if t.ends_with('a') { "b" } else { "a" };
        t.replace_range(t.len() - 1.., last);
        t
    };
    grpc.create(with_key(&admin, create_request("bad", &["a b"])))
        .await
        .unwrap_err();
    grpc.create(with_key(&reader, create_request("x", &["r"])))
        .await
        .unwrap_err();
    for caller in [&unknown, &mistyped] {
        grpc.create(with_key(caller, create_request("x", &["r"])))
            .await
            .unwrap_err();
        grpc.list(with_header(
            "authorization",
            &format!("ApiKey {caller}"),
            ListRequest::default(),
        ))
        .await
        .unwrap_err();
    }
    for token in [&admin, &reader, &unknown, &mistyped] {
        grpc.validate(ValidateRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    grpc.list(with_key(&admin, ListRequest::default()))
        .await
        .unwrap();

    // HTTP: every path, both header forms, a foreign scheme, REST management.
    for token in [&reader, &unknown, &mistyped] {
        for (name, value) in [
            ("x-api-key", token.clone()),
            ("authorization", format!("ApiKey {token}")),
            ("authorization", format!("Bearer {token}")),
        ] {
            for path in [
                "/api/server/status",
                "/api/server/info",
                "/api/auth?role=reader",
            ] {
                http.get(url(path))
                    .header(name, &value)
                    .send()
                    .await
                    .unwrap();
            }
            http.get(url("/api/security/tokens"))
                .header(name, &value)
                .send()
                .await
                .unwrap();
        }
    }
    let created: serde_json::Value = http
        .post(url("/api/security/tokens"))
        .header("x-api-key", &admin)
        .json(&json!({"name": "rest", "roles": ["reader"]}))
        .json_body()
        .await;
    let rest = created["token"].as_str().unwrap().to_owned();
    let rest_id = created["id"].as_u64().unwrap();
    http.post(url("/api/security/tokens"))
        .header("x-api-key", &admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    http.delete(url(&format!("/api/security/tokens/{rest_id}")))
        .header("x-api-key", &rest)
        .send()
        .await
        .unwrap();
    http.delete(url(&format!("/api/security/tokens/{rest_id}")))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    for path in ["/healthz", "/readyz", "/metrics", "/nowhere"] {
        http.get(url(path)).send().await.unwrap();
    }
    let reader_id = grpc
        .validate(ValidateRequest {
            token: reader.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap()
        .id;
    // The lifecycle: a rotation (its new secret, the old one in its grace
    // period through gRPC and forward-auth), a rotation over REST, an update.
    let rotated = grpc
        .rotate(with_key(
            &admin,
            RotateRequest {
                id: reader_id,
                grace_period: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    for token in [&reader, &rotated] {
        grpc.validate(ValidateRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        http.get(url("/api/auth"))
            .header("x-api-key", token)
            .send()
            .await
            .unwrap();
    }
    let rest_rotated: serde_json::Value = http
        .post(url(&format!("/api/security/tokens/{reader_id}/rotate")))
        .header("x-api-key", &admin)
        .body(r#"{"gracePeriodSeconds": 60}"#)
        .json_body()
        .await;
    let rest_rotated = rest_rotated["token"].as_str().unwrap().to_owned();
    let disable = UpdateRequest {
        service_token: Some(sts::proto::ServiceToken {
            id: reader_id,
            disabled: true,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    grpc.update(with_key(&admin, disable)).await.unwrap();
    grpc.validate(ValidateRequest {
        token: rest_rotated.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The integrations: Envoy's Check (allowed, denied), TokenReview and
    // introspection (valid, invalid, unauthorized caller).
    let reviewer = {
        use envoy_types::pb::envoy::service::auth::v3::{
            AttributeContext, CheckRequest, attribute_context,
            authorization_client::AuthorizationClient,
        };
        let mut envoy = AuthorizationClient::new(channel(server.addr).await);
        for token in [&rest_rotated, &unknown, &mistyped] {
            let headers = [("authorization".to_string(), format!("Bearer {token}"))];
            let request = CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(attribute_context::Request {
                        http: Some(attribute_context::HttpRequest {
                            headers: headers.into_iter().collect(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    context_extensions: [("sts.required_roles".to_string(), "reader".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            };
            envoy.check(request).await.unwrap();
        }
        let reviewer = grpc
            .create(with_key(
                &admin,
                create_request("reviewer", &["token-reviewer"]),
            ))
            .await
            .unwrap()
            .into_inner()
            .token;
        for (caller, token) in [
            (&reviewer, &rest_rotated),
            (&reviewer, &unknown),
            (&reviewer, &mistyped),
            (&admin, &reviewer),
            (&unknown, &admin),
        ] {
            let review = json!({
                "apiVersion": "authentication.k8s.io/v1beta1",
                "kind": "TokenReview",
                "spec": {"token": token},
            });
            http.post(url("/api/kubernetes/tokenreview"))
                .bearer_auth(caller)
                .json(&review)
                .send()
                .await
                .unwrap();
            http.post(url("/oauth2/introspect"))
                .basic_auth("gateway", Some(caller))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap();
        }
        reviewer
    };
    grpc.delete(with_key(
        &admin,
        DeleteRequest {
            id: reader_id,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    grpc.validate(ValidateRequest {
        token: reader.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Leaked-token revocation, over REST (a bad body too) and gRPC.
    let leaked = grpc
        .create(with_key(&admin, create_request("leaked", &["reader"])))
        .await
        .unwrap()
        .into_inner()
        .token;
    for body in [
        json!({ "tokens": [leaked, unknown, mistyped] }),
        json!({ "tokens": leaked }),
    ] {
        http.post(url("/api/security/tokens/revoke"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    grpc.revoke_leaked(sts::proto::RevokeLeakedRequest {
        tokens: vec![leaked.clone(), reviewer.clone()],
    })
    .await
    .unwrap();

    // Events went out (every change above), at trace level too.
    receiver.wait_for(5).await;
    let (exit, lines) = server.terminate().await;
    // Should the server not exit cleanly, its first panic says why (secrets
    // are checked below, so only the panic's own lines are printed).
    let panic = lines
        .iter()
        .position(|line| line.contains("panicked"))
        .map_or(&[][..], |at| &lines[at..lines.len().min(at + 20)]);
    assert!(
        exit.success(),
        "{exit:?}; the log's panic:\n{}",
        panic.join("\n")
    );
    log.push_str(&lines.join("\n"));
    for webhook_secret in [WEBHOOK_SECRET, "hookpassword", "hookquerysecret"] {
        assert!(
            !log.contains(webhook_secret),
            "{webhook_secret} is in the log"
        );
    }
    // Trace level really was on: the transport's frame-level events are here.
    assert!(log.contains("TRACE"), "the log was not at trace level");

    for secret in [
        &leaked,
        &reviewer,
        &admin,
        &reader,
        &unknown,
        &mistyped,
        &rest,
        &rotated,
        &rest_rotated,
    ] {
        // Any 16-character run of the random part counts as a leak.
        let body = &secret[PREFIX.len()..];
        for start in (0..=body.len() - 16).step_by(8) {
            let piece = &body[start..start + 16];
            assert!(
                !log.contains(piece),
                "a piece of a token secret is in the log ({} bytes of it)",
                log.len()
            );
        }
    }
}
