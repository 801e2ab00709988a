//! Connections are bounded in total and per source: past a source's bound
//! a new connection is closed at once, at the total an idle keep-alive
//! connection makes room (a busy one never does), so a flood from one
//! address cannot use up the descriptors that probes and clients need.

use std::{net::SocketAddr, process::Command, time::Duration};

use sts::{
    config::{ServerConfig, ServiceConfig},
    connections::ConnectionLimits,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::support::Rest;
use crate::support::metric_in;
use crate::{
    bodies::stalled_post,
    support::process::{ServerProcess, bootstrap},
    support::{closed_by_server, eventually, read_http1_head, server_config, spawn_app_with},
};

/// A connection to `addr` from `source` (any 127.0.0.0/8 address).
async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(addr).await
}

/// GET `path` on `stream`, kept alive; the answer's status line.
async fn get(stream: &mut TcpStream, path: &str, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: sts\r\n{key}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_http1_head(stream).await;
    // Every answer here is small and says how long it is: read it off.
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    head.lines().next().unwrap().to_owned()
}

/// `GET /healthz` on a new connection from 127.0.0.1; fails the test
/// rather than wait past 10 s.
async fn probe(addr: SocketAddr) -> String {
    let answer = async {
        let mut stream = connect_from("127.0.0.1", addr).await.unwrap();
        get(&mut stream, "/healthz", None).await
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the probe got no answer within 10 s")
}

/// The value of the series `line_start` names on `/metrics` (0 if absent),
/// over a new connection from 127.0.0.1; fails rather than wait past 10 s.
async fn metric(addr: SocketAddr, line_start: &str) -> f64 {
    let read = async {
        let mut stream = connect_from("127.0.0.1", addr).await.unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    };
    let text = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no metrics within 10 s");
    metric_in(&text, line_start)
}

#[tokio::test]
async fn at_a_low_descriptor_limit_a_flood_from_one_address_leaves_room_for_everyone_else() {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    // The default bounds follow the descriptor limit: 256 - 128 = 128 in
    // all, a quarter of it (32) per source.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sts-server"))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("STS_SHUTDOWN_DELAY", "0s")
        .env("STS_BODY_TIMEOUT", "600s");
    let server = ServerProcess::start_command(command, data_dir.path()).await;
    let addr = server.addr;

    // 300 connections from 127.0.0.2, each an authenticated create whose
    // body stalls: busy, so none of them may be evicted.
    let request = stalled_post("/api/security/tokens", Some(&admin));
    let mut attack = Vec::new();
    for _ in 0..300 {
        if let Ok(mut stream) = connect_from("127.0.0.2", addr).await {
            let _ = stream.write_all(&request).await;
            attack.push(stream);
        }
    }
    let per_source = "sts_connections_refused_total{reason=\"per_source\"} ";
    eventually("the flood past its bound is refused", || async {
        metric(addr, per_source).await >= 268.0
    })
    .await;

    // Probes and an ordinary client get in all the while.
    assert_eq!(probe(addr).await, "HTTP/1.1 200 OK");
    let mut client = connect_from("127.0.0.1", addr).await.unwrap();
    for _ in 0..3 {
        let status = get(&mut client, "/api/server/status", Some(&admin));
        let status = tokio::time::timeout(Duration::from_secs(10), status).await;
        assert_eq!(status.as_deref(), Ok("HTTP/1.1 200 OK"));
    }
    let open = metric(addr, "sts_connections_open ").await;
    assert!((33.0..=40.0).contains(&open), "{open} connections open");
    drop(attack);
    let log = server.kill().await.unwrap().join("\n");
    assert!(log.contains("max_connections=128"), "{log}");
    assert!(log.contains("max_connections_per_source=32"), "{log}");
    assert!(!log.contains("out of file descriptors"), "{log}");
    // Refusals are summarized: one line, not one per connection.
    let summaries = log.matches("closing new connections").count();
    assert_eq!(summaries, 1, "{log}");
}

#[tokio::test]
async fn at_the_total_an_idle_connection_makes_room_and_busy_ones_never_do() {
    let server = ServerConfig {
        connection_limits: ConnectionLimits {
            max_total: 4,
            max_per_source: 100,
            ..ConnectionLimits::UNBOUNDED
        },
        ..server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    // Four keep-alive connections, each idle after one answer.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        assert_eq!(get(&mut stream, "/healthz", None).await, "HTTP/1.1 200 OK");
        idle.push(stream);
    }
    // A fifth gets in: one idle connection is closed to make room.
    assert_eq!(probe(app.addr).await, "HTTP/1.1 200 OK");
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            stream.read(&mut byte),
        );
        if matches!(read.await, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection made room");
    assert!(app.metric("sts_connections_evicted_total").await >= 1.0);

    // Four requests in flight (bodies that stall) fill the table...
    let request = stalled_post("/api/security/tokens", Some(&app.admin_token));
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        busy.push(stream);
    }
    eventually("the busy requests hold every place", || async {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: sts\r\n\r\n")
            .await;
        closed_by_server(&mut stream).await && {
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .await
                .is_ok_and(|_| rest.is_empty())
        }
    })
    .await;
    // ...and none of them was evicted for the newcomers.
    for stream in &mut busy {
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), stream.read(&mut byte));
        assert!(read.await.is_err(), "a busy connection was closed");
    }
    // Once they end, there is room again: the refusals were counted.
    drop(busy);
    let refused = "sts_connections_refused_total{reason=\"total\"} ";
    eventually("room again", || async {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        let request = "GET /healthz HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(metric(app.addr, refused).await >= 1.0);
}

/// One HTTP/2 connection that opens streams and resets each at once
/// (CVE-2023-44487's rapid reset); whether the server sent it away for it
/// (h2 notices only resets of streams it has not yet handed on, so not
/// every such connection is caught).
async fn rapid_resets(addr: SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok((mut sender, connection)) = h2::client::handshake(tcp).await else {
        return false;
    };
    let driver = tokio::spawn(connection);
    for _ in 0..1000 {
        let request = http::Request::post(format!(
            "http://{addr}/stackstate.servicetoken.v1.TokenService/Validate"
        ))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
        let Ok(ready) = sender.clone().ready().await else {
            break;
        };
        sender = ready;
        match sender.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
    }
    // The connection ends at once if the server has sent it away.
    match tokio::time::timeout(Duration::from_secs(1), driver).await {
        Ok(Ok(Err(e))) => e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        _ => false,
    }
}

#[tokio::test]
async fn http2_rapid_resets_are_sent_away_counted_and_summarized_not_logged_each() {
    let data_dir = tempfile::tempdir().unwrap();
    let _admin = bootstrap(data_dir.path());
    let server = ServerProcess::start_with(data_dir.path(), &[]).await;
    let mut sent_away = 0;
    for _ in 0..60 {
        sent_away += usize::from(rapid_resets(server.addr).await);
        if sent_away == 10 {
            break;
        }
    }
    assert_eq!(sent_away, 10, "the server sent no abusive connection away");
    // At least those the client saw end so (some end for it otherwise).
    // The server counts one when its side of the connection has ended,
    // which may be just after the client saw the GOAWAY.
    eventually("every connection sent away counted", || async {
        metric(server.addr, "sts_connections_protocol_errors_total ").await >= 10.0
    })
    .await;
    let (_, log) = server.terminate().await;
    let log = log.join("\n");
    // One line for the lot (the first), and none of h2's own.
    assert_eq!(log.matches("sent a connection away").count(), 1, "{log}");
    assert!(!log.contains("reached limit"), "{log}");
    assert!(log.contains("excessive load generating behavior"), "{log}");
}

#[tokio::test]
async fn past_the_bound_on_requests_in_flight_calls_are_refused_at_once_and_probes_answered() {
    use sts::proto::ValidateRequest;
    let server = ServerConfig {
        connection_limits: ConnectionLimits {
            max_requests_in_flight: 2,
            ..ConnectionLimits::UNBOUNDED
        },
        ..server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    // Two requests in flight: creates whose bodies stall.
    let request = stalled_post("/api/security/tokens", Some(&app.admin_token));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        held.push(stream);
    }
    // Refused at once: HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED.
    eventually("a third request is refused", || async {
        let mut stream = connect_from("127.0.0.1", app.addr).await.unwrap();
        let key = format!(
            "GET /api/server/status HTTP/1.1\r\nHost: sts\r\nX-API-Key: {}\r\n\r\n",
            app.admin_token
        );
        stream.write_all(key.as_bytes()).await.unwrap();
        let head = read_http1_head(&mut stream).await;
        head.starts_with("HTTP/1.1 503") && head.to_ascii_lowercase().contains("retry-after: 1\r\n")
    })
    .await;
    let refused = app
        .client
        .clone()
        .validate(ValidateRequest {
            token: app.admin_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // The probes and the metrics are answered all the same, gRPC's health
    // check among them.
    assert_eq!(probe(app.addr).await, "HTTP/1.1 200 OK");
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(crate::support::channel(app.addr).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: sts::server::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let shed = metric(app.addr, "sts_requests_shed_total ").await;
    assert!(shed >= 2.0, "{shed}");
    // Room again once they end.
    drop(held);
    eventually("calls answered again", || async {
        app.client
            .clone()
            .validate(ValidateRequest {
                token: app.admin_token.clone(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.into_inner().valid)
    })
    .await;
}

/// Real binary: `--probe-listen` serves `/healthz` and `/readyz` (only
/// those) on a port and a thread of their own. With the main port's every
/// place held by requests in flight, so that its own `/healthz` gets no
/// answer, the probe port answers both; it says "shutting down" (503) from
/// the SIGTERM, and closes with the server.
#[tokio::test]
async fn the_probe_port_answers_while_the_main_port_is_full() {
    let data_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(data_dir.path());
    let server = ServerProcess::start_with(
        data_dir.path(),
        &[
            ("STS_PROBE_LISTEN", "127.0.0.1:0"),
            ("STS_MAX_CONNECTIONS", "4"),
            ("STS_MAX_CONNECTIONS_PER_SOURCE", "4"),
            ("STS_SHUTDOWN_DELAY", "5s"),
        ],
    )
    .await;
    let probes = server.probe_addr().expect("the probe port's address");
    assert_ne!(probes.port(), server.addr.port());
    let request = stalled_post("/api/security/tokens", Some(&admin));
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.1", server.addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        busy.push(stream);
    }
    eventually("the main port is full", || async {
        let mut stream = connect_from("127.0.0.1", server.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: sts\r\n\r\n")
            .await;
        closed_by_server(&mut stream).await
    })
    .await;
    let mut stream = connect_from("127.0.0.1", probes).await.unwrap();
    assert_eq!(get(&mut stream, "/healthz", None).await, "HTTP/1.1 200 OK");
    assert_eq!(get(&mut stream, "/readyz", None).await, "HTTP/1.1 200 OK");
    // Probes only: no token work on this port.
    assert_eq!(
        get(&mut stream, "/api/server/status", Some(&admin)).await,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        get(&mut stream, "/metrics", None).await,
        "HTTP/1.1 404 Not Found"
    );
    drop(busy);

    let stopping = server.terminate_in_background();
    eventually("readiness says shutting down", || async {
        let Ok(mut stream) = connect_from("127.0.0.1", probes).await else {
            return false;
        };
        get(&mut stream, "/readyz", None).await == "HTTP/1.1 503 Service Unavailable"
    })
    .await;
    let (status, log) = stopping.await.unwrap();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(
        TcpStream::connect(probes).await.is_err(),
        "the probe port closes with the server"
    );
}

/// GET `/healthz` over HTTP/2 (prior knowledge) on a new connection from
/// 127.0.0.1, answered; the connection then stays open, idle. The task
/// ends when the server closes it (a GOAWAY, then the end).
async fn idle_http2(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let stream = connect_from("127.0.0.1", addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(Rest::at(addr).url("/healthz"))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    // Kept: dropping the client would end the connection from our side.
    std::mem::forget(client);
    task
}

#[tokio::test]
async fn at_the_total_an_idle_http2_connection_is_sent_away_to_make_room() {
    let server = ServerConfig {
        connection_limits: ConnectionLimits {
            max_total: 2,
            max_per_source: 100,
            ..ConnectionLimits::UNBOUNDED
        },
        ..server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    let first = idle_http2(app.addr).await;
    let second = idle_http2(app.addr).await;
    // A third connection gets in, answered: an idle HTTP/2 connection made
    // room (GOAWAY, then closed), as an idle HTTP/1 one would.
    assert_eq!(probe(app.addr).await, "HTTP/1.1 200 OK");
    eventually("an idle HTTP/2 connection was sent away", || async {
        first.is_finished() || second.is_finished()
    })
    .await;
    assert!(app.metric("sts_connections_evicted_total").await >= 1.0);
}

#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_the_per_source_bound() {
    let server = ServerConfig {
        connection_limits: ConnectionLimits {
            max_total: 100,
            max_per_source: 2,
            ..ConnectionLimits::UNBOUNDED
        },
        trusted_proxies: sts::source::TrustedProxies::parse("127.0.0.3/32").unwrap(),
        ..server_config()
    };
    let app = spawn_app_with(ServiceConfig::default(), server).await;
    // Six connections from the proxy, all kept and answered: its clients
    // are many sources behind one address.
    let mut proxy = Vec::new();
    for _ in 0..6 {
        let mut stream = connect_from("127.0.0.3", app.addr).await.unwrap();
        assert_eq!(get(&mut stream, "/healthz", None).await, "HTTP/1.1 200 OK");
        proxy.push(stream);
    }
    for stream in &mut proxy {
        assert_eq!(get(stream, "/healthz", None).await, "HTTP/1.1 200 OK");
    }
    // Anyone else: the third is closed unread.
    let mut other = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.2", app.addr).await.unwrap();
        assert_eq!(get(&mut stream, "/healthz", None).await, "HTTP/1.1 200 OK");
        other.push(stream);
    }
    let mut third = connect_from("127.0.0.2", app.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sts\r\n\r\n")
        .await;
    // Closed, not answered: an answer would keep it open (keep-alive).
    assert!(closed_by_server(&mut third).await);
    let refused = "sts_connections_refused_total{reason=\"per_source\"} ";
    assert_eq!(metric(app.addr, refused).await, 1.0);
}
