//! Moving a sled install to PostgreSQL with the real binary: `export`, then
//! `import` (twice: idempotent), then a server on PostgreSQL where every
//! token keeps working, with its roles and expiration. The export holds no
//! secret; a damaged export is refused with the line named.

use std::process::Stdio;

use sts::proto::{CreateRequest, token_service_client::TokenServiceClient};

use crate::{
    support::pg::TestDatabase,
    support::process::{ServerProcess, bootstrap, sts_server},
    support::{channel, checked, list_all, validate_on, with_key},
};

/// Runs `sts-server` with `args`; returns (success, stdout, stderr).
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = sts_server()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_sled_install_moves_to_postgres_with_every_token_working() {
    let Some(database) = TestDatabase::create("migrate_sled_to_postgres").await else {
        return;
    };
    let sled_dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(sled_dir.path());
    let server = ServerProcess::start(sled_dir.path()).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    let mut tokens = Vec::new();
    for i in 0..25 {
        let expiration = (i % 3 == 0).then(|| prost_types::Timestamp {
            seconds: 4_102_444_800 + i,
            nanos: 123_456_000,
        });
        let request = CreateRequest {
            name: format!("token-{i}"),
            roles: vec![format!("role-{i}"), "reader".into()],
            expiration,
            ..Default::default()
        };
        let created = client
            .create(with_key(&admin, request))
            .await
            .unwrap()
            .into_inner();
        tokens.push(created);
    }
    let before = list_all(&client, &admin).await;
    let (status, _) = server.terminate().await;
    assert!(status.success());

    let export_file = sled_dir.path().with_extension("jsonl");
    let (ok, stdout, stderr) = run(vec![
        "export".into(),
        "--data-dir".into(),
        sled_dir.path().display().to_string(),
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 26, "{stdout}");
    assert!(stderr.contains("Exported 26 service tokens"), "{stderr}");
    for token in tokens.iter().map(|t| &t.token).chain([&admin]) {
        assert!(!stdout.contains(&token[7..30]), "a secret is in the export");
    }
    std::fs::write(&export_file, &stdout).unwrap();

    let import = || {
        run(vec![
            "import".into(),
            "--store".into(),
            database.url.clone(),
            "--file".into(),
            export_file.display().to_string(),
        ])
    };
    let (ok, _, stderr) = import().await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("26 added, 0 already there, 0 in conflict"),
        "{stderr}"
    );
    let (ok, _, stderr) = import().await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("0 added, 26 already there, 0 in conflict"),
        "{stderr}"
    );

    // A server on PostgreSQL: the same tokens, working.
    let scratch = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(scratch.path(), &[("STS_STORE", &database.url)]).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    // Every field as it was, but the admin token's last use (it listed).
    assert_eq!(
        crate::support::without_last_use(list_all(&client, &admin).await),
        crate::support::without_last_use(before.clone())
    );
    for created in &tokens {
        let answer = validate_on(&client, &created.token).await.unwrap();
        assert!(
            answer.valid,
            "{} does not work after the move",
            created.service_token.as_ref().unwrap().name
        );
        assert_eq!(
            answer.service_token,
            created.service_token.clone().map(checked)
        );
    }
    let (status, _) = server.terminate().await;
    assert!(status.success());

    // A damaged export changes nothing past the bad line and names it.
    let mut damaged: Vec<&str> = stdout.lines().collect();
    damaged.insert(3, r#"{"id": 7, "token_hash": "zz", "name": "x", "roles": ["r"], "created_at": "2026-01-01T00:00:00Z"}"#);
    std::fs::write(&export_file, damaged.join("\n")).unwrap();
    let (ok, _, stderr) = import().await;
    assert!(!ok);
    assert!(
        stderr.contains("line 4: token_hash: must be 64 hex digits"),
        "{stderr}"
    );
    std::fs::remove_file(&export_file).unwrap();
    database.drop().await;
}
