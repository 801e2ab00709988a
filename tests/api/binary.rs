//! The `sts-server` binary itself: bootstrap's output and refusals, and a
//! served process that stops cleanly on SIGTERM.

use sts::{proto::InvalidReason, server::SERVICE_NAME, store::SledStore};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::ReadAnswer;
use crate::support::Rest;
use crate::{
    support::process::{ServerProcess, sts_server},
    support::{ADMIN_ROLE, channel, restart, spawn_app},
};

/// The TokenService's gRPC health at `addr`, over a new connection.
async fn health_of(addr: std::net::SocketAddr) -> ServingStatus {
    let mut health = HealthClient::new(channel(addr).await);
    let answer = health
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

/// A `Validate` over a new connection to `addr` gets its answer.
async fn answers_validate(addr: std::net::SocketAddr) {
    let answer = sts::proto::token_service_client::TokenServiceClient::new(channel(addr).await)
        .validate(sts::proto::ValidateRequest {
            token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().reason(), InvalidReason::Malformed);
}

#[tokio::test]
async fn bootstrap_prints_a_working_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = sts_server()
        .args(["bootstrap", "--name", "first-admin", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let token = stdout.strip_suffix('\n').unwrap();
    assert!(
        !token.contains('\n'),
        "stdout is the token alone: {stdout:?}"
    );
    assert!(
        !stderr.contains(&token[7..]),
        "the secret is on stdout only"
    );

    let app = restart(dir).await;
    let response = app.validate(token).await;
    assert!(response.valid, "{response:?}");
    let identity = response.service_token.unwrap();
    assert_eq!(identity.name, "first-admin");
    assert_eq!(identity.roles, [ADMIN_ROLE]);
}

#[tokio::test]
async fn bootstrap_refuses_a_data_dir_the_server_holds() {
    let app = spawn_app().await;
    let output = sts_server()
        .arg("bootstrap")
        .arg("--data-dir")
        .arg(app.data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert_eq!(app.list_all().await.len(), 1, "nothing was written");
}

#[tokio::test]
async fn bootstrap_rejects_bad_roles_before_touching_the_disk() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let output = sts_server()
        .args(["bootstrap", "--roles", "a b", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("roles[0]"));
    assert!(!dir.exists());
}

#[cfg(unix)]
#[tokio::test]
async fn serve_reports_serving_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let addr = server.addr;

    assert_eq!(health_of(addr).await, ServingStatus::Serving);
    answers_validate(addr).await;

    let stopped_at = server.stopped_at.clone();
    let (exit, log) = server.terminate().await;
    let exited_at = std::time::Instant::now();
    assert!(exit.success(), "{exit:?}");
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
    // Once it says it stopped, nothing is left to wait for: the process
    // ends. (A bound far above what that takes, a few milliseconds, to
    // catch a lingering runtime or store thread, not to measure speed.)
    let lingered = exited_at - *stopped_at.get().unwrap();
    assert!(
        lingered < std::time::Duration::from_millis(500),
        "exited {lingered:?} after saying it stopped"
    );
    // The lock is released: the data dir opens again.
    SledStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = sts_server()
        .args(["--log-format", "json", "bootstrap", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let event = stderr
        .lines()
        .find(|line| line.contains("bootstrap token created"))
        .expect("the bootstrap is logged");
    assert!(event.starts_with('{') && event.ends_with('}'), "{event}");
    assert!(event.contains(r#""level":"INFO""#), "{event}");
}

#[tokio::test]
async fn tls_flags_come_in_pairs_and_bad_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let serve = |extra: &[&std::path::Path]| {
        let mut command = sts_server();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"));
        for (flag, path) in ["--tls-cert", "--tls-key"].iter().zip(extra) {
            command.arg(flag).arg(path);
        }
        command.output().unwrap()
    };

    let half = serve(&[&cert]);
    assert!(!half.status.success());
    assert!(String::from_utf8_lossy(&half.stderr).contains("--tls-key"));

    let missing = serve(&[&cert, &key]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));

    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let garbage = serve(&[&cert, &key]);
    assert!(!garbage.status.success(), "{garbage:?}");
    let stderr = String::from_utf8_lossy(&garbage.stderr);
    assert!(
        stderr.contains("invalid TLS certificate or key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("serving"),
        "refused before serving: {stderr}"
    );
}

/// `sts-server` as a user for whom `dir` (made read-only here) cannot be
/// written. Root ignores permissions, so as root the server runs as
/// `nobody` instead of relying on the mode.
#[cfg(unix)]
fn read_only_for_the_server(dir: &std::path::Path) -> std::process::Command {
    use std::os::unix::{fs::MetadataExt, fs::PermissionsExt, process::CommandExt};
    let mut command = sts_server();
    // Root writes anywhere: then the server runs as nobody, who owns the
    // directory (so it is not refused as someone else's) but may not write.
    let as_nobody = std::fs::metadata(dir).unwrap().uid() == 0;
    if as_nobody {
        command.uid(65534).gid(65534);
    }
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        if as_nobody {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        let mode = if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            0o555
        } else {
            0o400
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // Everyone may pass through and read the parent; no one but root may write.
    std::fs::set_permissions(
        dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    command
}

#[cfg(unix)]
#[tokio::test]
async fn a_missing_or_read_only_data_dir_is_a_clear_error_at_start() {
    let run = |mut command: std::process::Command, args: &[&str], dir: &std::path::Path| {
        let output = command
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stderr.contains("serving"),
            "refused before serving: {stderr}"
        );
        stderr
    };
    let serve = ["serve", "--listen", "127.0.0.1:0"];

    // A data dir whose parent is missing: likely an unmounted volume.
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("not-mounted/data");
    for args in [&serve[..], &["bootstrap"]] {
        let stderr = run(sts_server(), args, &missing);
        assert!(
            stderr.contains("does not exist (is the volume mounted?)"),
            "{stderr}"
        );
        assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
        assert!(!missing.parent().unwrap().exists(), "nothing was created");
    }

    // Empty and read-only; and read-only holding a store.
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().join("data");
    std::fs::create_dir(&empty_dir).unwrap();
    let stocked = tempfile::tempdir().unwrap();
    let stocked_dir = stocked.path().join("data");
    crate::support::process::bootstrap(&stocked_dir);
    for dir in [&empty_dir, &stocked_dir] {
        let stderr = run(read_only_for_the_server(dir), &serve, dir);
        assert!(stderr.contains("permission denied"), "{stderr}");
        assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
        // Writable again, so the temporary directories can be removed.
        use std::os::unix::fs::PermissionsExt;
        for path in [dir.parent().unwrap(), dir.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused_and_the_first_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let admin = crate::support::process::bootstrap(dir.path());
    let first = ServerProcess::start(dir.path()).await;

    let second = sts_server()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let client =
        sts::proto::token_service_client::TokenServiceClient::new(channel(first.addr).await);
    let answer = crate::support::validate_on(&client, &admin).await.unwrap();
    assert!(answer.valid);
    let (status, _) = first.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn bootstrap_always_carries_the_admin_role() {
    let dir = tempfile::tempdir().unwrap();
    let token = crate::support::process::bootstrap_with_args(dir.path(), &["--roles", "reader"]);
    let app = restart(dir).await;
    let identity = app.validate(&token).await.service_token.unwrap();
    assert_eq!(identity.roles, [ADMIN_ROLE, "reader"]);
}

/// The password every refused `--store` below carries; it must never be
/// printed.
const PASSWORD: &str = "s3cretpw";

/// `sts-server serve --store url`, expected to fail: its stderr.
async fn refused_store(url: String, via_env: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = sts_server();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    if via_env {
        command.env("STS_STORE", &url);
    } else {
        command.arg("--store").arg(&url);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "{url} was accepted: {stderr}");
    assert!(
        !stderr.contains(PASSWORD) && !String::from_utf8_lossy(&output.stdout).contains(PASSWORD),
        "the password reached the terminal: {stderr}"
    );
    stderr
}

#[tokio::test]
async fn a_store_url_is_never_echoed_with_its_password_on_any_rejection() {
    for via_env in [false, true] {
        let stderr = refused_store(format!("mysql://u:{PASSWORD}@127.0.0.1/x"), via_env).await;
        assert!(
            stderr.contains("expected a postgres:// URL, got mysql://u:***@127.0.0.1/x"),
            "{stderr}"
        );
        let stderr = refused_store(format!("postgres://u:{PASSWORD}@[::1/x"), via_env).await;
        assert!(stderr.contains("not a valid URL"), "{stderr}");
    }
    // Nothing listens on port 1.
    let stderr = refused_store(format!("postgres://u:{PASSWORD}@127.0.0.1:1/x"), false).await;
    assert!(
        stderr.contains("cannot connect to PostgreSQL at postgres://u:***@127.0.0.1:1/x"),
        "{stderr}"
    );
    // A database that checks passwords, and this one is wrong.
    if std::env::var(crate::support::pg::DATABASE_URL_VAR).is_err() {
        eprintln!(
            "skipping the wrong-password case: {} is not set",
            crate::support::pg::DATABASE_URL_VAR
        );
        return;
    }
    let Some(cluster) = crate::support::pg::PrivateCluster::start(Some("the-right-one")).await
    else {
        return;
    };
    let url = cluster
        .url()
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let stderr = refused_store(url, true).await;
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    // The right password works: the refusal above was the password's.
    let right = cluster
        .url()
        .replace("postgres@", "postgres:the-right-one@");
    crate::support::process::bootstrap_store(&right).await;
}

#[tokio::test]
async fn an_invalid_rust_log_is_said_out_loud() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &[("RUST_LOG", "sts=[")]).await;
    let (_, log) = server.terminate().await;
    assert!(
        log.iter()
            .any(|l| l
                .contains("RUST_LOG is not a valid log filter; logging at info,h2=error instead")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn a_host_name_is_served_on_every_address_it_resolves_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_on(sts_server(), dir.path(), "localhost:0").await;
    let port = server.addr.port();
    // Every address localhost has here that a socket can use.
    let mut reached = 0;
    for address in std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port)).unwrap() {
        if std::net::TcpListener::bind((address.ip(), 0)).is_err() {
            continue;
        }
        answers_validate(address).await;
        reached += 1;
    }
    assert!(reached >= 1);
    let (status, log) = server.terminate().await;
    assert!(status.success());
    assert_eq!(
        log.iter().filter(|l| l.contains("serving")).count(),
        reached,
        "{log:#?}"
    );
    let refused = sts_server()
        .args([
            "serve",
            "--listen",
            "no-such-host.invalid:7070",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("cannot resolve the listen address no-such-host.invalid:7070"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn on_sigterm_readiness_turns_first_while_calls_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &[("STS_SHUTDOWN_DELAY", "5s")]).await;
    let addr = server.addr;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0) // a fresh connection for every request
        .build()
        .unwrap();
    let readyz = Rest::at(addr).url("/readyz");
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    let exited = server.terminate_in_background();
    crate::support::eventually("/readyz answers 503 after SIGTERM", || async {
        http.get(&readyz).send().await.unwrap().status() == 503
    })
    .await;
    // Still serving, over a new connection: a load balancer that has not
    // caught up yet loses nothing.
    answers_validate(addr).await;
    assert_eq!(health_of(addr).await, ServingStatus::NotServing);
    assert!(!exited.is_finished(), "the delay was not waited");

    let (status, log) = exited.await.unwrap();
    assert!(status.success(), "{status:?}");
    let said = |text: &str| {
        log.iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text}: {log:#?}"))
    };
    assert!(said("still serving while load balancers catch up") < said("refusing new connections"));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn one_server_serves_every_address_it_was_given() {
    // What a host name with several addresses (localhost: 127.0.0.1 and
    // ::1) becomes, on two loopback addresses every Linux host has.
    let listeners = vec![
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap(),
    ];
    let addresses: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    let (service, _, _) = crate::support::build_service(store, Default::default()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sts::server::run_on(
        listeners,
        Vec::new(),
        service,
        crate::support::server_config(),
        async {
            let _ = stopped.await;
        },
    ));
    for address in addresses {
        answers_validate(address).await;
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn each_command_lists_only_the_flags_it_uses() {
    let help = |command: &str| {
        let output = sts_server().args([command, "--help"]).output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    for command in ["export", "import"] {
        let text = help(command);
        assert!(!text.contains("--admin-role"), "{command}: {text}");
        assert!(
            text.contains("--store") && text.contains("--data-dir"),
            "{command}: {text}"
        );
    }
    assert!(!help("export").contains("--disk-reserve-mib"));
    let serve = help("serve");
    assert!(serve.contains("gRPC and HTTP"), "{serve}");
    assert!(serve.contains("--shutdown-delay"), "{serve}");
}

/// Runs `serve` on `data` with `args` and `env`, which must refuse to
/// start; returns what it said.
fn refused_serve(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let refused = sts_server()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    String::from_utf8_lossy(&refused.stderr).into_owned()
}

#[tokio::test]
async fn the_integration_flags_reach_the_server_and_an_empty_kubernetes_prefix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = refused_serve(&data, &["--kubernetes-prefix", ""], &[]);
    assert!(stderr.contains("system:masters"), "{stderr}");
    let stderr = refused_serve(&data, &["--kubernetes-prefix", "system"], &[]);
    assert!(stderr.contains("must end with `:`"), "{stderr}");

    let token = crate::support::process::bootstrap_with_args(&data, &["--roles", "kube"]);
    let server = crate::support::process::ServerProcess::start_with(
        &data,
        &[
            ("STS_KUBERNETES_PREFIX", "k8s:"),
            ("STS_KUBERNETES_USERNAME", "id"),
            ("STS_REVIEWER_ROLE", "kube"),
            ("STS_FORWARD_CREDENTIAL", "true"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    });
    let answer: serde_json::Value = http
        .post(server.rest().url("/api/kubernetes/tokenreview"))
        .bearer_auth(&token)
        .json(&review)
        .json_body()
        .await;
    let uid = answer["status"]["user"]["uid"].as_str().unwrap();
    assert_eq!(
        answer["status"]["user"]["username"],
        format!("k8s:{uid}"),
        "{answer}"
    );
    let auth = http
        .get(server.rest().url("/api/auth/anything"))
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), 200);
    assert!(
        auth.headers()
            .get("x-envoy-auth-headers-to-remove")
            .is_none()
    );
}

#[tokio::test]
async fn the_lifetime_flags_reach_the_server_and_an_impossible_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = refused_serve(
        &data,
        &[],
        &[
            ("STS_MAX_TOKEN_LIFETIME", "30d"),
            ("STS_DEFAULT_TOKEN_LIFETIME", "90d"),
        ],
    );
    assert!(
        stderr.contains("default token lifetime (90d) is longer than the maximum (30d)"),
        "{stderr}"
    );

    let admin = crate::support::process::bootstrap(&data);
    let server = crate::support::process::ServerProcess::start_with(
        &data,
        &[
            ("STS_MAX_TOKEN_LIFETIME", "30d"),
            ("STS_DEFAULT_TOKEN_LIFETIME", "7d"),
        ],
    )
    .await;
    let created: serde_json::Value = server
        .rest()
        .post("/api/security/tokens")
        .header("x-api-key", &admin)
        .body(r#"{"name": "ci", "roles": ["r"]}"#)
        .json_body()
        .await;
    let expiration = created["expiration"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let week = 7 * 24 * 3600 * 1000;
    assert!((expiration - (now + week)).abs() < 60_000, "{created}");
}

#[tokio::test]
async fn the_header_bound_flag_reaches_the_server_and_one_too_small_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = refused_serve(&data, &["--max-header-bytes", "100"], &[]);
    assert!(stderr.contains("must be from 8192"), "{stderr}");

    crate::support::process::bootstrap(&data);
    let server = crate::support::process::ServerProcess::start_with(
        &data,
        &[("STS_MAX_HEADER_BYTES", "10000")],
    )
    .await;
    let http = reqwest::Client::new();
    let get = |padding: usize| {
        http.get(server.rest().url("/healthz"))
            .header("x-padding", "a".repeat(padding))
            .send()
    };
    assert_eq!(get(8000).await.unwrap().status(), 200);
    assert_eq!(get(12000).await.unwrap().status(), 431);
}

#[test]
fn the_server_refuses_an_admin_keep_margin_not_shorter_than_the_maximum_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The default margin (24h) against a 12h maximum.
    let stderr = refused_serve(&data, &["--max-token-lifetime", "12h"], &[]);
    assert!(stderr.contains("--admin-keep-margin"), "{stderr}");
    assert!(
        stderr.contains("(1d)") && stderr.contains("(12h)"),
        "{stderr}"
    );
    let stderr = refused_serve(
        &data,
        &["--max-token-lifetime", "30d"],
        &[("STS_ADMIN_KEEP_MARGIN", "30d")],
    );
    assert!(stderr.contains("must be shorter"), "{stderr}");
    assert!(!data.exists(), "refused before touching the disk");
}
