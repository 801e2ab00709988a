//! TLS on the one port: gRPC, HTTP/2 and HTTP/1.1 all over rustls with a
//! certificate the test generates; plaintext and stalled handshakes are
//! turned away without disturbing anyone else.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{TestCertificate, closed_by_server, spawn_tls_app, validate_on};

fn https_client(http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(TestCertificate::shared().ca_pem.as_bytes()).unwrap();
    let builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false);
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

#[tokio::test]
async fn grpc_http2_and_http1_are_served_over_tls_on_one_port() {
    let app = spawn_tls_app().await;
    assert!(
        validate_on(&app.client, &app.admin_token)
            .await
            .unwrap()
            .valid
    );

    let port = app.addr.port();
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        for host in ["localhost", "127.0.0.1"] {
            let response = https_client(http1_only)
                .get(format!("https://{host}:{port}/api/server/status"))
                .header("x-api-key", &app.admin_token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{version:?} to {host}: {e:?}"));
            assert_eq!(response.status(), 200, "{version:?} to {host}");
            assert_eq!(response.version(), version);
        }
        let forward_auth = https_client(http1_only)
            .get(format!("https://localhost:{port}/api/auth"))
            .header("authorization", format!("ApiKey {}", app.admin_token))
            .send()
            .await
            .unwrap();
        assert_eq!(forward_auth.status(), 200, "{version:?}");
    }
}

#[tokio::test]
async fn plaintext_and_untrusted_clients_are_refused_and_others_still_served() {
    let app = spawn_tls_app().await;
    let port = app.addr.port();

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/server/status"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // A client that trusts only the usual public CAs refuses our certificate.
    let untrusted = reqwest::Client::builder()
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    let error = format!("{:?}", untrusted.unwrap_err());
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    let status = https_client(false)
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_while_others_are_served() {
    let server = sts::config::ServerConfig {
        tls: Some(TestCertificate::shared().identity.clone()),
        tls_handshake_timeout: Duration::from_millis(300),
        ..crate::support::server_config()
    };
    let app = crate::support::spawn_app_with(sts::config::ServiceConfig::default(), server).await;
    let port = app.addr.port();

    // One client opens a connection and says nothing; another sends the
    // first bytes of a ClientHello and stops.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    // Meanwhile a real client is served.
    let status = https_client(false)
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);

    // The server closes both once the handshake timeout passes.
    for stream in [&mut silent, &mut partial] {
        assert!(
            closed_by_server(stream).await,
            "the stalled connection was not closed"
        );
    }
}
