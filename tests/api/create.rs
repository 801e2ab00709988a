//! Create: the token it hands out, the record it keeps, and what it refuses.

use std::time::{Duration, SystemTime};

use sts::clock::Clock;

use sts::{model::MAX_ID, proto::CreateRequest, token};
use tonic::Code;

use crate::support::{assert_code, checked, create_request, spawn_app};

#[tokio::test]
async fn create_returns_a_well_formed_secret_and_the_record() {
    let app = spawn_app().await;
    let expiration = SystemTime::now() + Duration::from_secs(86_400);
    let (secret, created) = app
        .create_with(CreateRequest {
            name: "  my-service-token ".into(),
            roles: vec![
                "stackstate-k8s-troubleshooter".into(),
                "b".into(),
                "stackstate-k8s-troubleshooter".into(),
            ],
            expiration: Some(expiration.into()),
            ..Default::default()
        })
        .await;

    assert!(secret.starts_with("svctok-"), "{secret}");
    assert_eq!(secret.len(), token::TOKEN_LEN);
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    );
    assert!(token::Secret::parse(&secret).is_ok());

    assert!((1..=MAX_ID).contains(&created.id));
    assert_eq!(created.name, "my-service-token", "names are trimmed");
    assert_eq!(
        created.roles,
        ["stackstate-k8s-troubleshooter", "b"],
        "duplicates dropped"
    );
    // Kept to the microsecond, as every store keeps it.
    let kept = SystemTime::try_from(created.expiration.unwrap()).unwrap();
    let dropped = expiration.duration_since(kept).unwrap();
    assert!(dropped < Duration::from_micros(1), "{dropped:?}");
    assert_eq!(created.expiration.unwrap().nanos % 1000, 0);
    let created_at = SystemTime::try_from(created.created_at.unwrap()).unwrap();
    assert!(created_at <= SystemTime::now());

    let validation = app.validate(&secret).await;
    assert!(validation.valid);
    assert_eq!(validation.service_token, Some(checked(created)));
}

#[tokio::test]
async fn every_token_and_id_is_new() {
    let app = spawn_app().await;
    let mut secrets = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for i in 0..20 {
        let (secret, created) = app.create(&format!("t{i}"), &["r"]).await;
        assert!(secrets.insert(secret));
        assert!(ids.insert(created.id));
    }
}

#[tokio::test]
async fn bad_arguments_name_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let before = app.list_all().await;
    let past = SystemTime::now() - Duration::from_secs(1);
    let cases = [
        (create_request("", &["r"]), "name: is required"),
        (create_request("   ", &["r"]), "name: is required"),
        (
            create_request(&"n".repeat(129), &["r"]),
            "name: is 129 characters long",
        ),
        (
            create_request("a\u{7}b", &["r"]),
            "name: must not contain control characters",
        ),
        (
            create_request("n", &[]),
            "roles: at least one role is required",
        ),
        (
            create_request("n", &["ok", ""]),
            "roles[1]: must not be empty",
        ),
        (create_request("n", &["a b"]), "roles[0]: contains ' '"),
        (create_request("n", &["a,b"]), "roles[0]: contains ','"),
        (
            create_request("n", &[&"r".repeat(65)]),
            "roles[0]: must be at most 64 characters",
        ),
        (
            CreateRequest {
                expiration: Some(past.into()),
                ..create_request("n", &["r"])
            },
            "expiration: must be in the future",
        ),
        (
            CreateRequest {
                expiration: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                }),
                ..create_request("n", &["r"])
            },
            "expiration: must lie between the years 1 and 9999",
        ),
        (
            CreateRequest {
                expiration: Some(prost_types::Timestamp {
                    seconds: 4_000_000_000,
                    nanos: -1,
                }),
                ..create_request("n", &["r"])
            },
            "expiration: nanos must be within 0..1000000000",
        ),
        (
            CreateRequest {
                expiration: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..create_request("n", &["r"])
            },
            "expiration: must lie between the years 1 and 9999",
        ),
    ];
    for (request, expected) in cases {
        let status = assert_code(
            app.client.clone().create(app.admin(request)).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().contains(expected),
            "{:?} should contain {expected:?}",
            status.message()
        );
    }
    assert_eq!(app.list_all().await, before);
}

#[tokio::test]
async fn expiration_must_lie_in_the_future_of_the_server_clock() {
    let app = spawn_app().await;
    let expiration = app.clock.now() + Duration::from_secs(60);
    app.clock.advance(Duration::from_secs(60));
    let request = CreateRequest {
        expiration: Some(expiration.into()),
        ..create_request("n", &["r"])
    };
    assert_code(
        app.client.clone().create(app.admin(request)).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_unread() {
    let app = spawn_app().await;
    let huge = create_request(&"n".repeat(10 * 1024 * 1024), &["r"]);
    let status = app
        .client
        .clone()
        .create(app.admin(huge))
        .await
        .expect_err("a 10 MB request is refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The server keeps serving.
    app.create("after", &["r"]).await;
}

#[tokio::test]
async fn names_that_lie_on_screen_are_refused_over_every_transport() {
    let spoofs = [
        (
            "evil\u{202e}gnp.exe",
            "must not contain invisible Unicode format characters",
        ),
        (
            "\u{200b}",
            "is empty once its invisible format characters are removed",
        ),
    ];
    let app = spawn_app().await;
    let router = crate::support::spawn_router().await;
    for (name, problem) in spoofs {
        let status = assert_code(
            app.client
                .clone()
                .create(app.admin(create_request(name, &["r"])))
                .await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains(problem), "{status:?}");

        let body = serde_json::json!({"name": name, "roles": ["r"]}).to_string();
        let response = router.admin("POST", "/api/security/tokens", &body).await;
        assert_eq!(response.status, 400);
        assert!(
            response.json()["message"]
                .as_str()
                .unwrap()
                .contains(problem),
            "{:?}",
            response.json()
        );

        let dir = tempfile::tempdir().unwrap();
        let output = crate::support::process::sts_server()
            .args(["bootstrap", "--name", name, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains(problem));
    }
    assert_eq!(app.list_all().await.len(), 1, "only the admin token");
}

/// The service cuts every time it hands a store to the microsecond (the
/// stores keep what they are given): the clock's now in a creation, a
/// disable and a rotation, and a grace period given to the nanosecond.
#[tokio::test]
async fn every_time_the_service_writes_is_to_the_microsecond() {
    use sts::proto::{GetRequest, RotateRequest, ServiceToken, UpdateRequest};
    let app = spawn_app().await;
    // A clock with a sub-microsecond part, whatever the real one had.
    app.clock.advance(Duration::from_nanos(1_001));
    let (_, created) = app.create("micro", &["r"]).await;
    let micro = |t: Option<prost_types::Timestamp>| t.unwrap().nanos % 1_000 == 0;
    assert!(micro(created.created_at) && micro(created.updated_at));
    app.clock.advance(Duration::from_nanos(1_001));
    let disabled = UpdateRequest {
        service_token: Some(ServiceToken {
            id: created.id,
            disabled: true,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    let disabled = app
        .client
        .clone()
        .update(app.admin(disabled))
        .await
        .unwrap();
    assert!(micro(
        disabled.into_inner().service_token.unwrap().updated_at
    ));
    let rotate = RotateRequest {
        id: created.id,
        grace_period: Some(prost_types::Duration {
            seconds: 60,
            nanos: 1_001,
        }),
    };
    let rotated = app.client.clone().rotate(app.admin(rotate)).await.unwrap();
    let rotated = rotated.into_inner().service_token.unwrap();
    assert!(micro(rotated.updated_at));
    assert!(micro(rotated.previous_secret_expiration));
    // And a read gives back exactly what the answers said.
    let get = GetRequest { id: created.id };
    let read = app.client.clone().get(app.admin(get)).await.unwrap();
    assert_eq!(
        checked(read.into_inner().service_token.unwrap()),
        checked(rotated)
    );
}
