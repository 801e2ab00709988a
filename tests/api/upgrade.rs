//! Upgrades keep working: a sled data dir and a PostgreSQL schema written by
//! the release before the token lifecycle (`tests/fixtures/release-0/`, made
//! with that release's binary) open under this one with every token intact
//! and valid, serve, and take the new operations (a rotation, an update).

use std::{path::Path, sync::Arc};

use serde_json::Value;
use sts::{
    proto::{ServiceToken, token_service_client::TokenServiceClient},
    store::{PostgresStore, SledStore, Store},
};

use crate::{
    support::pg::TestDatabase,
    support::{TestApp, copy_dir, spawn_app_on, validate_on, with_key},
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/release-0");

fn fixture_tokens() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A copy of the fixture's data dir, private as sts-server keeps it (git
/// keeps neither the modes nor the empty `blobs` directory).
fn sled_copy() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(FIXTURE).join("sled"), dir.path());
    std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
    let private = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    private(dir.path(), 0o700);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        private(&path, if path.is_dir() { 0o700 } else { 0o600 });
    }
    dir
}

/// Every fixture token of `release` validates as it was made, and the
/// fixture's own admin token can rotate one and update another.
async fn the_old_tokens_work_and_take_new_operations(app: &TestApp, tokens: &Value) {
    let client = TokenServiceClient::clone(&app.client);
    for (label, expected) in tokens.as_object().unwrap() {
        let answer = validate_on(&client, expected["token"].as_str().unwrap())
            .await
            .unwrap();
        assert!(answer.valid, "{label}");
        let token = answer.service_token.unwrap();
        assert_eq!(token.id, expected["id"].as_u64().unwrap(), "{label}");
        assert_eq!(token.name, expected["name"].as_str().unwrap(), "{label}");
        let roles: Vec<&str> = expected["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(token.roles, roles, "{label}");
        let expiration = token.expiration.map(|t| t.seconds * 1000);
        assert_eq!(expiration, expected["expiration_ms"].as_i64(), "{label}");
        assert_eq!(token.created_by, "", "{label}: not recorded back then");
        assert_eq!(token.updated_at, token.created_at, "{label}");
        assert!(!token.disabled && token.description.is_empty() && token.labels.is_empty());
    }
    // Every order lists the old tokens too: sled's order index is built on
    // first open, PostgreSQL's indexes by the migration.
    let mut names: Vec<&str> = tokens
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.push("test-admin");
    names.sort();
    for (order_by, reversed) in [("name", false), ("name desc", true)] {
        let listed = TokenServiceClient::clone(&app.client)
            .list(app.admin(sts::proto::ListRequest {
                order_by: order_by.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let mut shown: Vec<&str> = listed
            .service_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        if reversed {
            shown.reverse();
        }
        assert_eq!(shown, names, "{order_by}");
    }
    for order_by in ["expiration", "last_used desc", "created"] {
        let listed = TokenServiceClient::clone(&app.client)
            .list(app.admin(sts::proto::ListRequest {
                order_by: order_by.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.service_tokens.len(), names.len(), "{order_by}");
    }
    let old_admin = tokens["admin"]["token"].as_str().unwrap();
    let ci = &tokens["ci"];
    let ci_id = ci["id"].as_u64().unwrap();
    let rotated = client
        .clone()
        .rotate(with_key(
            old_admin,
            sts::proto::RotateRequest {
                id: ci_id,
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(validate_on(&client, &rotated.token).await.unwrap().valid);
    let old = validate_on(&client, ci["token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(old.valid && old.previous_secret);
    let described = ServiceToken {
        id: ci_id,
        description: "upgraded".into(),
        ..Default::default()
    };
    let updated = client
        .clone()
        .update(with_key(
            old_admin,
            sts::proto::UpdateRequest {
                service_token: Some(described),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    assert_eq!(updated.description, "upgraded");
    assert_eq!(updated.roles, ["deployer", "reader"]);
}

#[tokio::test]
async fn a_sled_data_dir_of_the_previous_release_opens_serves_and_rotates() {
    let tokens = fixture_tokens();
    let dir = sled_copy();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    assert_eq!(store.count().await.unwrap(), 3);
    let app = spawn_app_on(dir, store).await;
    the_old_tokens_work_and_take_new_operations(&app, &tokens["sled"]).await;
    // And it all survives a restart in the new format.
    let app = crate::support::restart(app.stop().await).await;
    let legacy = &tokens["sled"]["legacy"];
    assert!(app.validate(legacy["token"].as_str().unwrap()).await.valid);
    let ci = app
        .list_all()
        .await
        .into_iter()
        .find(|t| t.id == tokens["sled"]["ci"]["id"].as_u64().unwrap())
        .unwrap();
    assert_eq!(ci.description, "upgraded");
    assert!(ci.previous_secret_expiration.is_some());
}

#[tokio::test]
async fn a_postgres_schema_of_the_previous_release_is_migrated_and_serves() {
    let Some(database) = TestDatabase::create("upgrade_release_0").await else {
        return;
    };
    let script = std::fs::read_to_string(Path::new(FIXTURE).join("postgres.sql")).unwrap();
    database.run_script(&script).await;
    let url = sts::config::StoreUrl::parse(&database.url).unwrap();
    let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 2);
    let app = spawn_app_on(tempfile::tempdir().unwrap(), store).await;
    the_old_tokens_work_and_take_new_operations(&app, &fixture_tokens()["postgres"]).await;
    use sqlx::Row;
    let versions: Vec<i64> = database
        .query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .await
        .iter()
        .map(|row| row.get("version"))
        .collect();
    let every: Vec<i64> = (1..=migration_count()).collect();
    assert_eq!(versions, every);
    app.stop().await;
    database.drop().await;
}

/// How many migrations this release ships (`migrations/`).
pub fn migration_count() -> i64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let path = entry.as_ref().unwrap().path();
            path.extension().is_some_and(|e| e == "sql")
        })
        .count() as i64
}
