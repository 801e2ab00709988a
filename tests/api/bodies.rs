//! Request bodies are bounded in time as well as size: the credential is
//! judged from the headers before any body byte is read, and a body that
//! does not arrive whole within `--body-timeout` ends its request (HTTP/1.1:
//! 408 and the connection closed; HTTP/2: the stream, not the connection).

use std::time::{Duration, Instant};

use sts::config::{ServerConfig, ServiceConfig};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::support::{TestApp, closed_by_server, read_http1_head, server_config, spawn_app_with};

async fn app_with_body_timeout(timeout: Duration) -> TestApp {
    let server = ServerConfig {
        body_timeout: timeout,
        ..server_config()
    };
    spawn_app_with(ServiceConfig::default(), server).await
}

/// A POST that promises 1000 bytes of body and sends five.
pub fn stalled_post(path: &str, credential: Option<&str>) -> Vec<u8> {
    let credential = credential.map_or(String::new(), |c| format!("X-API-Key: {c}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: sts\r\n{credential}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"na"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_caller_without_a_valid_credential_is_refused_before_its_body_is_read() {
    // A deadline far away: an answer now can only come before the body.
    let app = app_with_body_timeout(Duration::from_secs(600)).await;
    let routes = [
        "/api/security/tokens",
        "/api/security/tokens/1",
        "/api/security/tokens/1/rotate",
        "/api/kubernetes/tokenreview",
        "/oauth2/introspect",
    ];
    for (path, credential) in routes
        .iter()
        .flat_map(|p| [(p, None), (p, Some("svctok-not-a-real-token"))])
    {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let method_path = if path.ends_with("/1") {
            "PATCH"
        } else {
            "POST"
        };
        let mut request = stalled_post(path, credential);
        if method_path == "PATCH" {
            request.splice(0..4, b"PATCH".iter().copied());
        }
        stream.write_all(&request).await.unwrap();
        let head = tokio::time::timeout(Duration::from_secs(10), read_http1_head(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{path} waited for the body"));
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{path} {credential:?}: {head}"
        );
        // The unread body cannot be told from the next request: closed.
        assert!(closed_by_server(&mut stream).await, "{path}");
    }
}

/// An admin's create whose body stalls: the connection, and when it began.
async fn stalled_create(app: &TestApp) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let request = stalled_post("/api/security/tokens", Some(&app.admin_token));
    stream.write_all(&request).await.unwrap();
    (stream, started)
}

#[tokio::test]
async fn a_body_that_stalls_past_the_deadline_is_answered_408_and_its_connection_closed() {
    let timeout = Duration::from_millis(300);
    let app = app_with_body_timeout(timeout).await;
    let (mut stream, started) = stalled_create(&app).await;
    let head = read_http1_head(&mut stream).await;
    assert!(started.elapsed() >= timeout, "not before the deadline");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(closed_by_server(&mut stream).await);
    // Nothing was created, and the server serves others.
    let names: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // A body that keeps trickling is held to the same deadline: the
    // deadline is for the whole body, not for each piece.
    let (mut stream, started) = stalled_create(&app).await;
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    };
    let head = tokio::select! {
        head = read_http1_head(&mut reader) => head,
        () = trickle => panic!("still reading after 5 s of trickle"),
    };
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An HTTP/2 connection of our own, driven on its own task.
async fn h2_connection(app: &TestApp) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

#[tokio::test]
async fn over_http2_a_stalled_body_ends_its_stream_and_the_connection_serves_on() {
    let timeout = Duration::from_millis(300);
    let app = app_with_body_timeout(timeout).await;
    let sender = h2_connection(&app).await;

    let request = http::Request::post("http://sts/api/security/tokens")
        .header("x-api-key", &app.admin_token)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (answer, mut body) = sender
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(b"{\"na"), false)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered at the deadline")
        .unwrap();
    assert_eq!(answer.status(), 408);

    // A gRPC call whose message stalls ends the same way, as a gRPC error.
    let request =
        http::Request::post("http://sts/stackstate.servicetoken.v1.TokenService/Validate")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
    let (answer, mut body) = sender
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100, 10]), false)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered at the deadline")
        .unwrap();
    let (parts, mut answer_body) = answer.into_parts();
    let status = match parts.headers.get("grpc-status") {
        Some(status) => status.clone(),
        None => answer_body.trailers().await.unwrap().unwrap()["grpc-status"].clone(),
    };
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {parts:?}");

    // The same connection serves the next request.
    let probe = http::Request::get("http://sts/healthz").body(()).unwrap();
    let (answer, _) = sender
        .ready()
        .await
        .unwrap()
        .send_request(probe, true)
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
}
