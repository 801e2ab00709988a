//! The `sts-server` binary itself: bootstrap's output and refusals, and a
//! served process that stops cleanly on SIGTERM.

use sts::{proto::InvalidReason, server::SERVICE_NAME, store::SledStore};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{ADMIN_ROLE, channel, restart, spawn_app},
    process::{ServerProcess, sts_server},
};

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

    let mut health = HealthClient::new(channel(addr).await);
    let status = health
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);
    let validation = sts::proto::token_service_client::TokenServiceClient::new(channel(addr).await)
        .validate(sts::proto::ValidateRequest {
            token: "nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validation.reason(), InvalidReason::Malformed);

    let (exit, log) = server.terminate().await;
    assert!(exit.success(), "{exit:?}");
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
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
    // Everyone may pass through and read; no one but root may write.
    for path in [dir.parent().unwrap(), dir] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let mut command = sts_server();
    if std::fs::metadata(dir).unwrap().uid() == 0 {
        command.uid(65534).gid(65534);
    }
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
    crate::process::bootstrap(&stocked_dir);
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
    let admin = crate::process::bootstrap(dir.path());
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
    let answer = crate::helpers::validate_on(&client, &admin).await.unwrap();
    assert!(answer.valid);
    let (status, _) = first.terminate().await;
    assert!(status.success());
}
