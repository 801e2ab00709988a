//! One running server, one port: the documentation's curl requests, REST and
//! gRPC managing the same tokens, metrics, and hostile bytes on the socket.

use std::time::Duration;

use sts::{
    clock::Clock,
    proto::{CreateRequest, DeleteRequest, InvalidReason, ValidateRequest},
    token::Secret,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use crate::support::ReadAnswer;
use crate::support::sample;
use crate::support::{TestApp, assert_code, create_request, spawn_app, with_key};

fn url(app: &TestApp, path: &str) -> String {
    app.rest().url(path)
}

/// Bounds a read that must end (the server closes); not a synchronisation sleep.
const SOCKET_BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_documented_curl_requests_work() {
    let app = spawn_app().await;
    let (token, created) = app
        .create("my-service-token", &["stackstate-k8s-troubleshooter"])
        .await;
    let http = reqwest::Client::new();
    for (header, value) in [
        ("Authorization", format!("ApiKey {token}")),
        ("X-API-Key", token.clone()),
    ] {
        // curl -X GET -H "<header>: <value>" http://<host>/api/server/status
        let response = http
            .get(url(&app, "/api/server/status"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["serviceToken"]["id"], created.id);
    }
    let response = http
        .get(url(&app, "/api/server/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "ApiKey");
}

#[tokio::test]
async fn rest_and_grpc_manage_the_same_tokens() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let tokens = url(&app, "/api/security/tokens");

    let made_by_rest: serde_json::Value = http
        .post(&tokens)
        .header("X-API-Key", &app.admin_token)
        .body(r#"{"name": "from-rest", "roles": ["a"]}"#)
        .json_body()
        .await;
    let rest_token = made_by_rest["token"].as_str().unwrap().to_owned();
    let validation = app.validate(&rest_token).await;
    assert!(validation.valid);
    assert_eq!(validation.service_token.unwrap().name, "from-rest");

    let (grpc_token, made_by_grpc) = app.create("from-grpc", &["b"]).await;
    let listed: serde_json::Value = http
        .get(&tokens)
        .header("X-API-Key", &app.admin_token)
        .json_body()
        .await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"from-rest") && names.contains(&"from-grpc"),
        "{names:?}"
    );
    let grpc_listed: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert!(grpc_listed.contains(&"from-rest".to_owned()));

    // Delete through REST: gRPC sees it gone.
    let deleted = http
        .delete(format!("{tokens}/{}", made_by_rest["id"]))
        .header("X-API-Key", &app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        app.validate(&rest_token).await.reason(),
        InvalidReason::NotFound
    );

    // Delete through gRPC: HTTP rejects it.
    app.client
        .clone()
        .delete(app.admin(DeleteRequest {
            id: made_by_grpc.id,
            ..Default::default()
        }))
        .await
        .unwrap();
    let status = http
        .get(url(&app, "/api/server/status"))
        .header("X-API-Key", &grpc_token)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 401);
}

#[tokio::test]
async fn http2_clients_reach_the_http_routes_and_unknown_grpc_is_unimplemented() {
    let app = spawn_app().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(url(&app, "/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    for path in [
        "/stackstate.servicetoken.v1.TokenService/Nope",
        "/some.Other/Method",
    ] {
        let response = h2
            .post(url(&app, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8; 5])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["grpc-status"],
            "12",
            "{path}: UNIMPLEMENTED"
        );
    }
}

#[tokio::test]
async fn metrics_count_validations_calls_and_tokens() {
    let app = spawn_app().await;
    let (valid, _) = app.create("valid", &["r"]).await;
    let (expiring, _) = app
        .create_with(CreateRequest {
            expiration: Some((app.clock.now() + Duration::from_secs(60)).into()),
            ..create_request("expiring", &["r"])
        })
        .await;
    app.clock.advance(Duration::from_secs(60));
    for token in [
        valid.as_str(),
        valid.as_str(),
        "malformed",
        Secret::generate().expose_secret(),
        &expiring,
    ] {
        app.validate(token).await;
    }
    assert_code(
        app.client
            .clone()
            .create(with_key(&valid, create_request("x", &["r"])))
            .await,
        Code::PermissionDenied,
    );

    let response = reqwest::get(url(&app, "/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let value = |series: &str| -> f64 {
        sample(&text, series).unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    // 2 admin creates + 2 Validate + the denied caller's credential.
    assert_eq!(value(r#"sts_validations_total{outcome="valid"}"#), 5.0);
    assert_eq!(value(r#"sts_validations_total{outcome="malformed"}"#), 1.0);
    assert_eq!(value(r#"sts_validations_total{outcome="not_found"}"#), 1.0);
    assert_eq!(value(r#"sts_validations_total{outcome="expired"}"#), 1.0);
    assert_eq!(
        value(
            r#"sts_management_calls_total{rpc="Create",status="OK",caller="admin",transport="grpc"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            r#"sts_management_calls_total{rpc="Create",status="PERMISSION_DENIED",caller="none",transport="grpc"}"#
        ),
        1.0
    );
    assert_eq!(value("sts_tokens_stored"), 3.0);
    // The admin token and two creates, one after another: a flush each.
    assert_eq!(value("sts_store_flushed_writes_total"), 3.0);
    assert_eq!(value("sts_store_flushes_total"), 3.0);
    assert_eq!(
        value(
            r#"sts_request_duration_seconds_count{protocol="grpc",route="/stackstate.servicetoken.v1.TokenService/Validate"}"#
        ),
        5.0
    );
}

async fn still_serving(app: &TestApp) {
    let response = app
        .client
        .clone()
        .validate(ValidateRequest {
            token: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().reason(), InvalidReason::Malformed);
    let live = reqwest::get(url(app, "/healthz")).await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn garbage_on_the_socket_is_refused_and_others_are_served() {
    let app = spawn_app().await;
    for garbage in [
        &b"\x00\xff\xfe\x16\x03\x01 not http at all\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let mut socket = TcpStream::connect(app.addr).await.unwrap();
        socket.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(SOCKET_BOUND, socket.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server closes a garbage connection");
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        still_serving(&app).await;
    }
}

#[tokio::test]
async fn huge_headers_are_refused_and_others_are_served() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let outcome = http
        .get(url(&app, "/api/server/status"))
        .header("X-Padding", "p".repeat(1024 * 1024))
        .header("X-API-Key", &app.admin_token)
        .send()
        .await;
    match outcome {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e:?}"),
    }
    let outcome = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(url(&app, "/api/server/status"))
        .header("X-Padding", "p".repeat(1024 * 1024))
        .send()
        .await;
    if let Ok(response) = outcome {
        assert_ne!(response.status(), 200);
    }
    still_serving(&app).await;
}

#[tokio::test]
async fn an_http11_request_needs_exactly_one_host_header() {
    let app = spawn_app().await;
    let ask = |request: &'static str| async move {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    let missing = ask("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    assert!(missing.contains("exactly one Host header"), "{missing}");
    let twice =
        ask("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let unknown_path = ask("GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(unknown_path.starts_with("HTTP/1.1 400"), "{unknown_path}");
    let good = ask("GET /healthz HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n").await;
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    // HTTP/1.0 has no such rule.
    let old = ask("GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");
}
