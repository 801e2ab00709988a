//! Requests at the edges: deadlines, idle and silent connections, slow
//! writers and readers, half-closed and abandoned sockets. Whatever one
//! client does, the others keep being served.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use sts::{
    config::{ServerConfig, ServiceConfig},
    proto::token_service_client::TokenServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::faults::FaultyStore;
use crate::support::{
    TestApp, closed_by_server, create_request, spawn_app, spawn_app_on, spawn_app_with, validate_on,
};

/// A Validate on a fresh connection: the server is serving others.
async fn serves_others(app: &TestApp) {
    let client = TokenServiceClient::new(crate::support::channel(app.addr).await);
    assert!(validate_on(&client, &app.admin_token).await.unwrap().valid);
}

/// Sends one HTTP/1.1 request on `stream` and reads its answer; returns the
/// status code. The answer's body length comes from Content-Length.
async fn http1_exchange(stream: &mut TcpStream, request: &[u8]) -> u16 {
    stream.write_all(request).await.unwrap();
    read_http1_answer(stream).await
}

async fn read_http1_answer(stream: &mut TcpStream) -> u16 {
    let head = crate::support::read_http1_head(stream).await;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

fn status_request(app: &TestApp) -> Vec<u8> {
    format!(
        "GET /api/server/status HTTP/1.1\r\nHost: sts\r\nX-API-Key: {}\r\n\r\n",
        app.admin_token
    )
    .into_bytes()
}

#[tokio::test]
async fn the_server_enforces_a_call_deadline_and_the_write_completes_apart() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;

    // The Create reaches the store and is held there past its deadline.
    // tonic's client enforces grpc-timeout itself, so this sends the call
    // by hand: the answer can only come from the server.
    store.gated.store(true, Ordering::SeqCst);
    let message = prost::Message::encode_to_vec(&create_request("too-late", &["r"]));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let call = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/stackstate.servicetoken.v1.TokenService/Create",
            app.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .header("x-api-key", &app.admin_token)
        .body(frame)
        .send();
    let (answer, entered) = tokio::join!(call, store.entered.acquire());
    entered.unwrap().forget();
    let answer = answer.unwrap();
    // An expired deadline is answered CANCELLED (1), as tonic's server did.
    let header = |name: &str| answer.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("grpc-status"), "1", "{answer:?}");
    assert!(header("grpc-message").contains("Timeout"), "{answer:?}");

    // The write the caller gave up on runs to completion once the store
    // moves again, audited like any other (a write and its audit line are
    // one unit no caller can split), while others are served.
    store.gated.store(false, Ordering::SeqCst);
    store.gate.add_permits(1);
    serves_others(&app).await;
    let (_, created) = app.create("in-time", &["r"]).await;
    crate::support::eventually("the abandoned create completes", || async {
        let names: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
        names.contains(&created.name) && names.contains(&"too-late".to_owned())
    })
    .await;
    let audited: Vec<_> = logs
        .target(sts::service::AUDIT)
        .into_iter()
        .filter(|e| e["fields"]["token.name"] == "too-late")
        .collect();
    assert_eq!(audited.len(), 1, "{audited:#?}");
}

#[tokio::test]
async fn silent_connections_are_closed_and_idle_ones_kept_while_others_are_served() {
    let server = ServerConfig {
        first_byte_timeout: Duration::from_millis(500),
        ..crate::support::server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;

    // Many connections that never say a word.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // And some that start HTTP/2's preface and stop half-way, before the
    // server can tell which HTTP they speak.
    for _ in 0..10 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        silent.push(stream);
    }
    // Keep-alive connections that made one request and then went quiet.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        assert_eq!(
            http1_exchange(&mut stream, &status_request(&app)).await,
            200
        );
        idle.push(stream);
    }
    // gRPC channels, used once, then idle.
    let mut channels = Vec::new();
    for _ in 0..20 {
        let client = TokenServiceClient::new(crate::support::channel(app.addr).await);
        assert!(validate_on(&client, &app.admin_token).await.unwrap().valid);
        channels.push(client);
    }
    serves_others(&app).await;

    // The silent ones are closed by the server once the deadline passes.
    for stream in &mut silent {
        assert!(
            closed_by_server(stream).await,
            "a silent connection was kept"
        );
    }
    // By now every idle connection has been quiet past the deadline too,
    // but they spoke first: the same sockets still answer.
    for stream in &mut idle {
        assert_eq!(http1_exchange(stream, &status_request(&app)).await, 200);
    }
    for client in &channels {
        assert!(validate_on(client, &app.admin_token).await.unwrap().valid);
    }
    serves_others(&app).await;
}

#[tokio::test]
async fn slow_writers_and_readers_hold_up_no_one() {
    let app = spawn_app().await;

    // A writer that sends its request a few bytes at a time.
    let request = status_request(&app);
    let slow_writer = tokio::spawn({
        let addr = app.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for chunk in request.chunks(4) {
                stream.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            read_http1_answer(&mut stream).await
        }
    });

    // A reader that pipelines requests and never reads an answer: its
    // answers fill the socket buffers and its connection stalls.
    let mut slow_reader = TcpStream::connect(app.addr).await.unwrap();
    let metrics = b"GET /metrics HTTP/1.1\r\nHost: sts\r\n\r\n".repeat(2_000);
    let write_all = slow_reader.write_all(&metrics);
    // It may never finish writing; what matters is the others.
    let _ = tokio::time::timeout(Duration::from_millis(500), write_all).await;

    for _ in 0..20 {
        serves_others(&app).await;
    }
    // The slow writer is slow, not wrong: it gets its answer.
    assert_eq!(slow_writer.await.unwrap(), 200);
    drop(slow_reader);
    serves_others(&app).await;
}

#[tokio::test]
async fn half_closed_and_abandoned_sockets_are_handled() {
    let app = spawn_app().await;

    // A client that sends its request and shuts down its sending side gets
    // its answer, and then the connection is closed, not held open.
    let mut half_closed = TcpStream::connect(app.addr).await.unwrap();
    half_closed.write_all(&status_request(&app)).await.unwrap();
    half_closed.shutdown().await.unwrap();
    assert_eq!(read_http1_answer(&mut half_closed).await, 200);
    assert!(closed_by_server(&mut half_closed).await);
    // Half-closed before saying anything at all: closed too.
    let mut mute = TcpStream::connect(app.addr).await.unwrap();
    mute.shutdown().await.unwrap();
    assert!(closed_by_server(&mut mute).await);

    // A client that promises a body and hangs up half-way.
    let mut abandoned = TcpStream::connect(app.addr).await.unwrap();
    let body = r#"{"name": "half", "roles": ["r"]}"#;
    abandoned
        .write_all(
            format!(
                "POST /api/security/tokens HTTP/1.1\r\nHost: sts\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                app.admin_token,
                body.len() * 2,
                body
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    drop(abandoned);

    // An HTTP/2 client that sends its preface and vanishes.
    let mut cut = TcpStream::connect(app.addr).await.unwrap();
    cut.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    drop(cut);

    serves_others(&app).await;
    let names: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert!(!names.contains(&"half".to_owned()), "{names:?}");
}

#[tokio::test]
async fn request_headers_are_bounded_by_the_configured_size() {
    let server = ServerConfig {
        max_header_bytes: 16 * 1024,
        ..crate::support::server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    let request = |padding: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: sts\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(padding)
        )
        .into_bytes()
    };

    // HTTP/1: within the bound served, past it 431 and nothing else.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(http1_exchange(&mut stream, &request(12 * 1024)).await, 200);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(http1_exchange(&mut stream, &request(20 * 1024)).await, 431);

    // HTTP/2: the same bound is the header list size the server announces.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = |padding: usize| {
        client
            .get(app.rest().url("/healthz"))
            .header("x-padding", "a".repeat(padding))
            .send()
    };
    assert_eq!(get(12 * 1024).await.unwrap().status(), 200);
    let refused = get(20 * 1024).await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() != 200),
        "{refused:?}"
    );
    serves_others(&app).await;
}

#[tokio::test]
async fn running_out_of_file_descriptors_pauses_accepting_and_then_recovers() {
    use crate::support::process::{ServerProcess, bootstrap};
    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    // The real binary with a descriptor limit a few dozen connections
    // exhaust.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "ulimit -n 64 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_sts-server"))
        .env("RUST_LOG", "sts=debug")
        .env("NO_COLOR", "1")
        // Bounds above what the limit allows (the server warns): the
        // descriptors run out before the bounds are reached.
        .env("STS_MAX_CONNECTIONS", "10000")
        .env("STS_MAX_CONNECTIONS_PER_SOURCE", "10000");
    let server = ServerProcess::start_command(command, dir.path()).await;

    let mut hogs = Vec::new();
    for _ in 0..100 {
        hogs.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Hold every descriptor for a while: this is the window whose accept
    // attempts are counted below, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(hogs);

    // Once the hogs are gone (the server sees them close), it serves again.
    let client = TokenServiceClient::new(crate::support::channel(server.addr).await);
    assert!(validate_on(&client, &admin).await.unwrap().valid);

    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status:?}");
    let count = |needle: &str| log.iter().filter(|line| line.contains(needle)).count();
    assert_eq!(count("out of file descriptors; retrying"), 1, "{log:#?}");
    assert_eq!(
        count("more connections than the open-file limit"),
        1,
        "{log:#?}"
    );
    assert_eq!(count("accepting connections again"), 1, "{log:#?}");
    // Retried at the pause interval, not in a loop: about ten a second.
    let attempts = count("accept paused");
    assert!((1..=60).contains(&attempts), "{attempts} accept attempts");
}
