//! When the store fails (injected faults, a corrupt record, a real full
//! disk): clear UNAVAILABLE / INTERNAL statuses, never a
//! wrong "valid", never a panic, and service resumes when the store does.

use std::sync::{Arc, atomic::Ordering};

use sts::{
    proto::{DeleteRequest, InvalidReason, ListRequest, ValidateRequest},
    token::Secret,
};
use tonic::Code;

use crate::{
    support::faults::FaultyStore,
    support::{assert_code, create_request, spawn_app, spawn_app_on},
};

#[tokio::test]
async fn a_failing_store_is_unavailable_not_a_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    let (secret, created) = app.create("ci", &["r"]).await;

    store.failing.store(true, Ordering::SeqCst);
    let mut client = app.client.clone();
    let validate = |token: &str| ValidateRequest {
        token: token.into(),
        ..Default::default()
    };
    assert_code(client.validate(validate(&secret)).await, Code::Unavailable);
    assert_code(
        client.create(app.admin(create_request("x", &["r"]))).await,
        Code::Unavailable,
    );
    assert_code(
        client.list(app.admin(ListRequest::default())).await,
        Code::Unavailable,
    );
    assert_code(
        client
            .delete(app.admin(DeleteRequest {
                id: created.id,
                ..Default::default()
            }))
            .await,
        Code::Unavailable,
    );
    // A malformed token needs no store to be rejected.
    let malformed = client.validate(validate("garbage")).await.unwrap();
    assert_eq!(malformed.into_inner().reason(), InvalidReason::Malformed);

    store.failing.store(false, Ordering::SeqCst);
    assert!(app.validate(&secret).await.valid);
}

#[tokio::test]
async fn when_writes_fail_creates_and_deletes_are_unavailable_and_validation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = spawn_app_on(dir, store.clone()).await;
    let (secret, created) = app.create("ci", &["r"]).await;

    store.writes_failing.store(true, Ordering::SeqCst);
    let mut client = app.client.clone();
    let status = assert_code(
        client.create(app.admin(create_request("x", &["r"]))).await,
        Code::Unavailable,
    );
    assert!(!status.message().contains("svctok-"), "{status:?}");
    assert_code(
        client
            .delete(app.admin(DeleteRequest {
                id: created.id,
                ..Default::default()
            }))
            .await,
        Code::Unavailable,
    );
    // Reads go on: the token validates, the admin lists, nothing changed.
    assert!(app.validate(&secret).await.valid);
    let names: Vec<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"x".to_owned()), "{names:?}");

    store.writes_failing.store(false, Ordering::SeqCst);
    app.create("x", &["r"]).await;
}

#[tokio::test]
async fn a_corrupt_record_is_logged_skipped_in_lists_and_internal_on_lookup() {
    use crate::{
        support::process::ServerProcess,
        support::{channel, list_all},
    };
    use sts::proto::token_service_client::TokenServiceClient;

    let app = spawn_app().await;
    let (damaged, damaged_record) = app.create("damaged", &["r"]).await;
    let (intact, _) = app.create("intact", &["r"]).await;
    let admin = app.admin_token.clone();
    let dir = app.stop().await;

    {
        // The store was just closed in this process: wait for its lock
        // (see `helpers::reopen`).
        let db = crate::support::eventually_some("the data dir's lock released", || async {
            match sled::open(dir.path()) {
                Ok(db) => Some(db),
                Err(e) if e.to_string().contains("could not acquire lock") => None,
                Err(e) => panic!("{e}"),
            }
        })
        .await;
        let tokens = db.open_tree("tokens").unwrap();
        tokens
            .insert(
                damaged_record.id.to_be_bytes(),
                &b"\xff\xff not a record"[..],
            )
            .unwrap();
        db.flush().unwrap();
    }

    // The real binary, for its log.
    let server = ServerProcess::start(dir.path()).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    let names: Vec<String> = list_all(&client, &admin)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"intact".to_owned()), "{names:?}");
    assert!(!names.contains(&"damaged".to_owned()), "{names:?}");
    let validate = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .validate(ValidateRequest {
                    token,
                    ..Default::default()
                })
                .await
        }
    };
    assert!(validate(intact).await.unwrap().into_inner().valid);
    let status = assert_code(validate(damaged).await, Code::Internal);
    assert!(status.message().contains("corrupt"), "{status:?}");
    assert!(!status.message().contains("svctok-"), "{status:?}");
    // Unknown tokens still answer normally.
    let unknown = validate(Secret::generate().expose_secret().to_owned()).await;
    assert_eq!(
        unknown.unwrap().into_inner().reason(),
        InvalidReason::NotFound
    );

    let (_, log) = server.terminate().await;
    let skipped = log
        .iter()
        .find(|line| line.contains("skipping a corrupt token record"))
        .unwrap_or_else(|| panic!("the skip is logged: {log:#?}"));
    assert!(skipped.contains("ERROR"), "{skipped}");
    assert!(
        skipped.contains(&damaged_record.id.to_string()),
        "names the record: {skipped}"
    );
}

#[tokio::test]
async fn http_answers_503_when_the_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::open(dir.path()));
    let app = crate::support::spawn_router_on(dir, store.clone()).await;
    let key = app.admin_token.clone();
    store.failing.store(true, Ordering::SeqCst);
    for (method, path) in [
        ("GET", "/api/server/status"),
        ("GET", "/api/auth"),
        ("GET", "/api/security/tokens"),
    ] {
        let response = app
            .call(method, path, &[("x-api-key", key.as_bytes())], "")
            .await;
        assert_eq!(response.status, 503, "{method} {path}");
        assert_eq!(response.json()["error"], "UNAVAILABLE");
    }
    // The metrics still answer (with the last token count): they are what
    // tells an operator why.
    let metrics = app.call("GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("sts_tokens_stored"));
    store.failing.store(false, Ordering::SeqCst);
    assert_eq!(app.admin("GET", "/api/server/status", "").await.status, 200);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir(at).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !output.status.success() {
            eprintln!(
                "skipping the disk-full test: cannot mount a tmpfs here ({}); it runs as root",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut filler = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    while filler.write_all(&[1u8; 64 * 1024]).is_ok() {}
}

/// The real binary on a disk that fills up. Below the reserve, creates are
/// refused while validation and deletes go on; with the disk completely
/// full (the reserve taken by someone else), writes fail UNAVAILABLE and no
/// answer is ever wrong; after a restart with space, every acknowledged
/// change is there.
#[tokio::test]
async fn a_filling_disk_refuses_creates_keeps_deletes_and_loses_nothing() {
    use crate::{
        support::process::{ServerProcess, bootstrap_with},
        support::{channel, with_key},
    };
    use sts::proto::token_service_client::TokenServiceClient;

    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "16m") else {
        return;
    };
    let data = disk.0.join("data");
    let filler = disk.0.join("filler");
    let reserve = [("STS_DISK_RESERVE_MIB", "2")];
    let admin = bootstrap_with(&data, &reserve);
    let server = ServerProcess::start_with(&data, &reserve).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    let create = |name: &str| with_key(&admin, create_request(name, &["r"]));

    let mut kept = Vec::new();
    for i in 0..4 {
        let answer = client.create(create(&format!("before-{i}"))).await.unwrap();
        kept.push(answer.into_inner());
    }
    let mut deleted = Vec::new();

    // Below the reserve: 1 MiB left of the 2 kept.
    fill(&filler);
    let size = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(size - 1024 * 1024)
        .unwrap();
    let refused = client.create(create("refused")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("nearly full"), "{refused:?}");
    // Rotations and changes wait for space too; a disable does not.
    let target = kept[0].service_token.clone().unwrap();
    let rotate = sts::proto::RotateRequest {
        id: target.id,
        grace_period: None,
    };
    let refused = client.rotate(with_key(&admin, rotate)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("nearly full"), "{refused:?}");
    let edit = |token: sts::proto::ServiceToken, path: &str| sts::proto::UpdateRequest {
        service_token: Some(token),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![path.to_owned()],
        }),
    };
    let renamed = sts::proto::ServiceToken {
        name: "renamed".into(),
        ..target.clone()
    };
    let refused = client
        .update(with_key(&admin, edit(renamed, "name")))
        .await
        .unwrap_err();
    assert!(refused.message().contains("nearly full"), "{refused:?}");
    let disabled = sts::proto::ServiceToken {
        disabled: true,
        ..target.clone()
    };
    client
        .update(with_key(&admin, edit(disabled, "disabled")))
        .await
        .unwrap();
    assert!(!valid(&client, &kept[0].token).await.unwrap());
    kept.remove(0);
    assert_all_valid(&client, &kept).await;
    // Revoking still works, durably.
    let revoked = delete_last(&mut client, &admin, &mut kept).await;
    deleted.push(revoked.token);
    // Space again: creates resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    kept.push(
        client
            .create(create("after-space"))
            .await
            .unwrap()
            .into_inner(),
    );

    // Completely full, no reserve (someone else took it): sled's own writes
    // fail.
    let (_, log) = server.terminate().await;
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    let server = ServerProcess::start_with(&data, &[("STS_DISK_RESERVE_MIB", "0")]).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    fill(&filler);
    // Big records, so sled's already-allocated log space runs out soon.
    let roles: Vec<String> = (0..20)
        .map(|i| format!("role-{i:02}-{}", "x".repeat(50)))
        .collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let mut write_failed = None;
    for i in 0..5000 {
        let request = with_key(&admin, create_request(&format!("full-{i}"), &roles));
        match client.create(request).await {
            Ok(answer) => kept.push(answer.into_inner()),
            Err(status) => {
                write_failed = Some(status);
                break;
            }
        }
    }
    let write_failed = write_failed.expect("a Create on a full disk fails");
    assert_eq!(write_failed.code(), Code::Unavailable, "{write_failed:?}");
    let victim = kept[0].service_token.as_ref().unwrap().id;
    match client
        .delete(with_key(
            &admin,
            DeleteRequest {
                id: victim,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(_) => deleted.push(kept.remove(0).token),
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
    }
    // No answer is wrong: a kept token validates or is UNAVAILABLE (sled may
    // need to write to read), a deleted one never validates.
    for token in &kept {
        match valid(&client, &token.token).await {
            Ok(valid) => assert!(valid),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    for token in &deleted {
        if let Ok(valid) = valid(&client, token).await {
            assert!(!valid);
        }
    }

    std::fs::remove_file(&filler).unwrap();
    let (_, log) = server.terminate().await;
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    let server = ServerProcess::start_with(&data, &reserve).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    assert_all_valid(&client, &kept).await;
    for token in &deleted {
        assert!(!valid(&client, token).await.unwrap());
    }
    client.create(create("after-restart")).await.unwrap();
    let (status, _) = server.terminate().await;
    assert!(status.success());
}

type Client = sts::proto::token_service_client::TokenServiceClient<tonic::transport::Channel>;

async fn valid(client: &Client, token: &str) -> Result<bool, tonic::Status> {
    Ok(crate::support::validate_on(client, token).await?.valid)
}

/// Asserts that every token of `kept` validates.
async fn assert_all_valid(client: &Client, kept: &[sts::proto::CreateResponse]) {
    for token in kept {
        assert!(valid(client, &token.token).await.unwrap());
    }
}

/// Deletes the last token of `kept` (which must work) and hands it back.
async fn delete_last(
    client: &mut Client,
    admin: &str,
    kept: &mut Vec<sts::proto::CreateResponse>,
) -> sts::proto::CreateResponse {
    let last = kept.pop().unwrap();
    let id = last.service_token.as_ref().unwrap().id;
    let request = DeleteRequest {
        id,
        ..Default::default()
    };
    client
        .delete(crate::support::with_key(admin, request))
        .await
        .unwrap();
    last
}

/// The reserve is real space (a ballast file in the data directory): when
/// another process takes every free byte, the server gives the ballast
/// back, so deletes and disables still work and creates are refused; it
/// holds the ballast again once there is room. A server whose disk filled
/// while it was stopped still starts (the ballast given back to let sled
/// open), serves checks and accepts deletes.
#[tokio::test]
async fn the_reserve_is_real_space_given_back_for_deletes_and_to_start_on_a_full_disk() {
    use crate::{
        support::process::{ServerProcess, bootstrap_with},
        support::{channel, eventually, with_key},
    };
    use sts::{proto::token_service_client::TokenServiceClient, store::reserve::BALLAST_FILE};

    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&root.path().join("disk"), "16m") else {
        return;
    };
    let data = disk.0.join("data");
    let ballast = data.join(BALLAST_FILE);
    let filler = disk.0.join("filler");
    let reserve = [("STS_DISK_RESERVE_MIB", "2")];
    let admin = bootstrap_with(&data, &reserve);
    assert_eq!(std::fs::metadata(&ballast).unwrap().len(), 2 << 20);
    let server = ServerProcess::start_with(&data, &reserve).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    let create = |name: &str| with_key(&admin, create_request(name, &["r"]));
    let mut kept = Vec::new();
    for i in 0..4 {
        kept.push(
            client
                .create(create(&format!("t-{i}")))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    // Someone else takes every free byte.
    fill(&filler);
    let refused = client.create(create("refused")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("nearly full"), "{refused:?}");
    // The ballast is given back before the delete writes: it succeeds.
    let gone = delete_last(&mut client, &admin, &mut kept).await;
    assert!(!ballast.exists());
    assert!(!valid(&client, &gone.token).await.unwrap());
    assert!(valid(&client, &kept[0].token).await.unwrap());
    // Still refused: the ballast must be made again first.
    let refused = client.create(create("refused")).await.unwrap_err();
    assert!(refused.message().contains("nearly full"), "{refused:?}");

    // Space again: the ballast comes back (the store check tends it twice
    // a second) and creates resume.
    std::fs::remove_file(&filler).unwrap();
    eventually("the ballast made again", || async { ballast.exists() }).await;
    kept.push(
        client
            .create(create("after-space"))
            .await
            .unwrap()
            .into_inner(),
    );
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("gave back the disk reserve")),
        "{log:#?}"
    );

    // The disk fills while the server is stopped: it starts all the same.
    fill(&filler);
    let server = ServerProcess::start_with(&data, &reserve).await;
    let mut client = TokenServiceClient::new(channel(server.addr).await);
    assert_all_valid(&client, &kept).await;
    let gone = delete_last(&mut client, &admin, &mut kept).await;
    assert!(!valid(&client, &gone.token).await.unwrap());
    let refused = client.create(create("refused")).await.unwrap_err();
    assert!(refused.message().contains("nearly full"), "{refused:?}");
    std::fs::remove_file(&filler).unwrap();
    eventually("the ballast made again", || async { ballast.exists() }).await;
    client.create(create("after-restart")).await.unwrap();
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
}
