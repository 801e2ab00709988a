//! A token's whole life over gRPC: Get, Update (field masks, AIP-134),
//! disable and enable, Rotate with a grace period, the lockout rule, and
//! what each leaves in the audit log and the metrics.

use std::time::{Duration, SystemTime};

use sts::{
    proto::{
        DeleteRequest, GetRequest, InvalidReason, ListRequest, RotateRequest, RotateResponse,
        ServiceToken, UpdateRequest, ValidateRequest, token_service_client::TokenServiceClient,
    },
    service::AUDIT,
};
use tonic::Code;

use crate::support::ReadAnswer;
use crate::support::{TestApp, assert_code, create_request, spawn_app, with_key};

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

impl TestApp {
    pub async fn get(&self, id: u64) -> Result<ServiceToken, tonic::Status> {
        let answer = self
            .client
            .clone()
            .get(self.admin(GetRequest { id }))
            .await?;
        Ok(answer.into_inner().service_token.unwrap())
    }

    pub async fn update(
        &self,
        token: ServiceToken,
        paths: &[&str],
    ) -> Result<ServiceToken, tonic::Status> {
        let request = UpdateRequest {
            service_token: Some(token),
            update_mask: mask(paths),
        };
        let answer = self.client.clone().update(self.admin(request)).await?;
        Ok(answer.into_inner().service_token.unwrap())
    }

    pub async fn rotate(&self, id: u64, grace: Duration) -> Result<RotateResponse, tonic::Status> {
        let request = RotateRequest {
            id,
            grace_period: Some(prost_types::Duration {
                seconds: grace.as_secs() as i64,
                nanos: grace.subsec_nanos() as i32,
            }),
        };
        Ok(self
            .client
            .clone()
            .rotate(self.admin(request))
            .await?
            .into_inner())
    }

    /// The admin token's own id.
    pub async fn admin_id(&self) -> u64 {
        self.validate(&self.admin_token)
            .await
            .service_token
            .unwrap()
            .id
    }
}

#[tokio::test]
async fn get_answers_one_token_with_every_field() {
    let app = spawn_app().await;
    let mut request = create_request("described", &["reader"]);
    request.description = "the CI pipeline".into();
    request.labels = [("team".to_owned(), "ci".to_owned())].into();
    let (_, created) = app.create_with(request).await;
    let got = app.get(created.id).await.unwrap();
    assert_eq!(got, created);
    assert_eq!(got.description, "the CI pipeline");
    assert_eq!(got.labels["team"], "ci");
    let admin_id = app.admin_id().await;
    assert_eq!(got.created_by, format!("{admin_id} (test-admin)"));
    assert_eq!(got.updated_at, got.created_at);
    assert!(!got.disabled);
    assert_eq!(app.get(admin_id).await.unwrap().created_by, "bootstrap");

    assert_code(app.get(created.id ^ 1).await, Code::NotFound);
    assert_code(app.get(0).await, Code::InvalidArgument);
    let (reader, _) = app.create("reader", &["reader"]).await;
    let request = crate::support::with_key(&reader, GetRequest { id: created.id });
    assert_code(
        app.client.clone().get(request).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn create_refuses_bad_descriptions_and_labels() {
    let app = spawn_app().await;
    let mut request = create_request("x", &["r"]);
    request.description = "two\nlines".into();
    let status = assert_code(
        app.client.clone().create(app.admin(request)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("description"), "{status:?}");
    let mut request = create_request("x", &["r"]);
    request.labels = [("Not A Key".to_owned(), String::new())].into();
    let status = assert_code(
        app.client.clone().create(app.admin(request)).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("Kubernetes label key"),
        "{status:?}"
    );
    assert_eq!(app.list_all().await.len(), 1, "nothing was created");
}

#[tokio::test]
async fn update_sets_exactly_the_fields_its_mask_names() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["reader", "writer"]).await;
    let expiration = SystemTime::now() + Duration::from_secs(86_400);
    let wanted = ServiceToken {
        name: "ci-renamed".into(),
        roles: vec!["reader".into()],
        expiration: Some(expiration.into()),
        description: "runs the nightly build".into(),
        labels: [("team".to_owned(), "build".to_owned())].into(),
        // Not in the mask: ignored.
        disabled: true,
        ..created.clone()
    };
    app.clock.advance(Duration::from_secs(1));
    let updated = app
        .update(
            wanted,
            &["name", "roles", "expiration", "description", "labels"],
        )
        .await
        .unwrap();
    assert_eq!(updated.name, "ci-renamed");
    assert_eq!(updated.roles, ["reader"]);
    assert_eq!(updated.description, "runs the nightly build");
    assert_eq!(updated.labels["team"], "build");
    assert!(!updated.disabled, "disabled was not in the mask");
    assert!(updated.updated_at.unwrap().seconds > created.updated_at.unwrap().seconds);
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(app.get(created.id).await.unwrap(), updated);
    let answer = app.validate(&secret).await;
    assert!(answer.valid, "an update keeps the secret");
    assert_eq!(
        answer.service_token.unwrap().roles,
        ["reader"],
        "the next check sees it"
    );

    // Clearing the expiration: never expires.
    let cleared = ServiceToken {
        expiration: None,
        ..updated.clone()
    };
    assert_eq!(
        app.update(cleared, &["expiration"])
            .await
            .unwrap()
            .expiration,
        None
    );
}

#[tokio::test]
async fn update_refuses_what_aip_134_refuses_and_changes_nothing() {
    let app = spawn_app().await;
    let (_, created) = app.create("ci", &["reader"]).await;
    let past = ServiceToken {
        expiration: Some((SystemTime::now() - Duration::from_secs(1)).into()),
        ..created.clone()
    };
    let spoof = ServiceToken {
        name: "evil\u{202e}gnp".into(),
        ..created.clone()
    };
    for (token, paths, field) in [
        (created.clone(), &[][..], "update_mask"),
        (created.clone(), &["id"][..], "update_mask"),
        (created.clone(), &["created_by"][..], "update_mask"),
        (created.clone(), &["nmae"][..], "update_mask"),
        (past, &["expiration"][..], "expiration"),
        (spoof, &["name"][..], "name"),
        (
            ServiceToken {
                roles: vec![],
                ..created.clone()
            },
            &["roles"][..],
            "roles",
        ),
    ] {
        let status = assert_code(app.update(token, paths).await, Code::InvalidArgument);
        assert!(status.message().contains(field), "{paths:?}: {status:?}");
    }
    let missing = ServiceToken {
        id: created.id ^ 1,
        ..created.clone()
    };
    assert_code(app.update(missing, &["name"]).await, Code::NotFound);
    let request = UpdateRequest {
        service_token: None,
        update_mask: mask(&["name"]),
    };
    assert_code(
        app.client.clone().update(app.admin(request)).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        app.get(created.id).await.unwrap(),
        created,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_disabled_token_is_refused_at_once_and_enabled_again_works() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["reader"]).await;
    // Cached first: the disable must still hold on the very next request.
    for _ in 0..3 {
        assert!(app.validate(&secret).await.valid);
    }
    let disabled = ServiceToken {
        disabled: true,
        ..created.clone()
    };
    assert!(app.update(disabled, &["disabled"]).await.unwrap().disabled);
    let answer = app.validate(&secret).await;
    assert!(!answer.valid);
    assert_eq!(answer.reason(), InvalidReason::Disabled);
    let listed = app
        .client
        .clone()
        .list(app.admin(ListRequest {
            disabled: Some(true),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<u64> = listed.service_tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, [created.id], "the disabled filter");
    // A disabled token cannot call anything either.
    let request = crate::support::with_key(&secret, GetRequest { id: created.id });
    let status = assert_code(app.client.clone().get(request).await, Code::Unauthenticated);
    assert!(status.message().contains("disabled"), "{status:?}");

    // Unconditional: made from the copy read before the disable.
    let enabled = ServiceToken {
        disabled: false,
        etag: String::new(),
        ..created
    };
    app.update(enabled, &["disabled"]).await.unwrap();
    assert!(app.validate(&secret).await.valid);
}

#[tokio::test]
async fn a_shortened_expiration_holds_from_the_next_request() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["reader"]).await;
    assert!(app.validate(&secret).await.valid);
    let soon = ServiceToken {
        expiration: Some((SystemTime::now() + Duration::from_secs(60)).into()),
        ..created
    };
    app.update(soon, &["expiration"]).await.unwrap();
    assert!(app.validate(&secret).await.valid);
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(app.validate(&secret).await.reason(), InvalidReason::Expired);
}

#[tokio::test]
async fn rotation_gives_the_same_token_a_new_secret_and_a_grace_period() {
    let app = spawn_app().await;
    let mut request = create_request("ci", &["deployer"]);
    request.labels = [("team".to_owned(), "ci".to_owned())].into();
    let (old, created) = app.create_with(request).await;
    assert!(app.validate(&old).await.valid);

    let rotated = app
        .rotate(created.id, Duration::from_secs(3600))
        .await
        .unwrap();
    let new = rotated.token.clone();
    assert!(new.starts_with("svctok-") && new != old);
    let token = rotated.service_token.unwrap();
    assert_eq!(
        (token.id, &token.name, &token.roles, &token.labels),
        (created.id, &created.name, &created.roles, &created.labels),
        "same identity, new secret"
    );
    assert!(token.previous_secret_expiration.is_some());

    let by_new = app.validate(&new).await;
    assert!(by_new.valid && !by_new.previous_secret);
    let by_old = app.validate(&old).await;
    assert!(by_old.valid, "the old secret works during the grace period");
    assert!(by_old.previous_secret, "and says so");
    assert_eq!(by_old.service_token.unwrap().id, created.id);

    // After the grace period only the new one works.
    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(app.validate(&old).await.reason(), InvalidReason::NotFound);
    assert!(app.validate(&new).await.valid);
    let got = app.get(created.id).await.unwrap();
    assert_eq!(got.previous_secret_expiration, None, "no longer shown");

    // Rotating again ends a previous secret still in its grace at once.
    let second = app
        .rotate(created.id, Duration::from_secs(600))
        .await
        .unwrap();
    let third = app
        .rotate(created.id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(app.validate(&new).await.reason(), InvalidReason::NotFound);
    assert!(app.validate(&second.token).await.previous_secret);
    assert!(app.validate(&third.token).await.valid);

    // No grace: the old secret stops now.
    let fourth = app.rotate(created.id, Duration::ZERO).await.unwrap();
    assert_eq!(
        app.validate(&third.token).await.reason(),
        InvalidReason::NotFound
    );
    assert!(app.validate(&fourth.token).await.valid);
    assert_code(
        app.rotate(created.id ^ 1, Duration::ZERO).await,
        Code::NotFound,
    );
    let negative = RotateRequest {
        id: created.id,
        grace_period: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
    };
    assert_code(
        app.client.clone().rotate(app.admin(negative)).await,
        Code::InvalidArgument,
    );
    assert!(
        app.validate(&fourth.token).await.valid,
        "a refused rotation changes nothing"
    );
}

#[tokio::test]
async fn the_grace_period_never_outlives_the_token() {
    let app = spawn_app().await;
    let mut request = create_request("short", &["r"]);
    let expiration = SystemTime::now() + Duration::from_secs(60);
    request.expiration = Some(expiration.into());
    let (_, created) = app.create_with(request).await;
    let rotated = app
        .rotate(created.id, Duration::from_secs(86_400))
        .await
        .unwrap();
    let token = rotated.service_token.unwrap();
    assert_eq!(token.previous_secret_expiration, token.expiration);
}

#[tokio::test]
async fn the_last_admin_token_cannot_lock_everyone_out() {
    let app = spawn_app().await;
    let admin_id = app.admin_id().await;
    let me = app.get(admin_id).await.unwrap();
    let refusals = [
        (
            assert_code(
                app.client
                    .clone()
                    .delete(app.admin(DeleteRequest {
                        id: admin_id,
                        ..Default::default()
                    }))
                    .await,
                Code::FailedPrecondition,
            ),
            "deleting",
        ),
        (
            assert_code(
                app.update(
                    ServiceToken {
                        disabled: true,
                        ..me.clone()
                    },
                    &["disabled"],
                )
                .await,
                Code::FailedPrecondition,
            ),
            "disabling",
        ),
        (
            assert_code(
                app.update(
                    ServiceToken {
                        roles: vec!["reader".into()],
                        ..me.clone()
                    },
                    &["roles"],
                )
                .await,
                Code::FailedPrecondition,
            ),
            "removing the admin role from",
        ),
        (
            assert_code(
                app.update(
                    ServiceToken {
                        expiration: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
                        ..me.clone()
                    },
                    &["expiration"],
                )
                .await,
                Code::FailedPrecondition,
            ),
            "letting expire",
        ),
    ];
    for (status, what) in refusals {
        assert!(
            status
                .message()
                .starts_with(&format!("refused: {what} service token {admin_id}")),
            "{status:?}"
        );
        assert!(
            status
                .message()
                .contains("create another admin token first"),
            "{status:?}"
        );
    }
    assert_eq!(app.get(admin_id).await.unwrap(), me, "nothing changed");
    // With a second admin token, the first may go.
    let (second, _) = app.create("second-admin", &["stackstate-admin"]).await;
    let request = crate::support::with_key(
        &second,
        DeleteRequest {
            id: admin_id,
            ..Default::default()
        },
    );
    app.client.clone().delete(request).await.unwrap();
    assert!(!app.validate(&app.admin_token).await.valid);
}

/// Through the real binary's JSON log: what an operator's log shipper sees.
#[tokio::test]
async fn updates_rotations_disables_and_enables_are_audited_with_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let admin = crate::support::process::bootstrap(dir.path());
    let server = crate::support::process::ServerProcess::start_with(
        dir.path(),
        &[("STS_LOG_FORMAT", "json")],
    )
    .await;
    let mut grpc = TokenServiceClient::new(crate::support::channel(server.addr).await);
    let created = grpc
        .create(with_key(&admin, create_request("ci", &["reader"])))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    let update = |token: ServiceToken, paths: &[&str]| {
        with_key(
            &admin,
            UpdateRequest {
                // Unconditional: each change is made from an earlier copy.
                service_token: Some(ServiceToken {
                    etag: String::new(),
                    ..token
                }),
                update_mask: mask(paths),
            },
        )
    };
    let renamed = ServiceToken {
        name: "ci-2".into(),
        ..created.clone()
    };
    grpc.update(update(renamed.clone(), &["name"]))
        .await
        .unwrap();
    let disabled = ServiceToken {
        disabled: true,
        ..renamed.clone()
    };
    grpc.update(update(disabled, &["disabled"])).await.unwrap();
    grpc.update(update(renamed, &["disabled"])).await.unwrap();
    let rotate = RotateRequest {
        id: created.id,
        grace_period: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    grpc.rotate(with_key(&admin, rotate)).await.unwrap();
    // A refused change is audited with its caller too.
    let me = grpc
        .validate(ValidateRequest {
            token: admin.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    let admin_id = me.id;
    let lockout = ServiceToken {
        disabled: true,
        ..me
    };
    grpc.update(update(lockout, &["disabled"]))
        .await
        .unwrap_err();

    let (exit, log) = server.terminate().await;
    assert!(exit.success());
    let events: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == AUDIT)
        .collect();
    let event = |rpc: &str, outcome: &str| {
        events
            .iter()
            .find(|e| e["fields"]["rpc"] == rpc && e["fields"]["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {rpc} {outcome} event in {events:#?}"))
            .clone()
    };
    assert_eq!(
        event("Update", "OK")["fields"]["changed"],
        r#"name: "ci" -> "ci-2""#
    );
    assert_eq!(
        event("Disable", "OK")["fields"]["changed"],
        r#"disabled: "false" -> "true""#
    );
    assert_eq!(
        event("Enable", "OK")["fields"]["changed"],
        r#"disabled: "true" -> "false""#
    );
    assert!(event("Rotate", "OK")["fields"]["previous_secret_expiration"].is_string());
    for rpc in ["Update", "Disable", "Enable", "Rotate"] {
        let fields = &event(rpc, "OK")["fields"];
        assert_eq!(fields["caller.id"], admin_id, "{rpc}");
        assert_eq!(fields["caller.name"], "bootstrap-admin", "{rpc}");
        assert_eq!(fields["token.id"], created.id, "{rpc}");
    }
    let refused = event("Update", "FAILED_PRECONDITION");
    assert_eq!(refused["fields"]["caller.id"], admin_id);
    assert!(
        refused["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("refused: disabling"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn metrics_count_disabled_and_previous_secret_validations_and_the_new_calls() {
    let app = spawn_app().await;
    let (old, created) = app.create("ci", &["reader"]).await;
    let rotated = app
        .rotate(created.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(app.validate(&old).await.previous_secret);
    app.update(
        ServiceToken {
            disabled: true,
            ..rotated.service_token.unwrap()
        },
        &["disabled"],
    )
    .await
    .unwrap();
    app.validate(&rotated.token).await;
    app.get(created.id).await.unwrap();
    let text = app.rest().get("/metrics").text_body().await;
    for line in [
        r#"sts_validations_total{outcome="previous_secret"} 1"#,
        r#"sts_validations_total{outcome="disabled"} 1"#,
        r#"sts_management_calls_total{rpc="Rotate",status="OK",caller="admin",transport="grpc"} 1"#,
        r#"sts_management_calls_total{rpc="Update",status="OK",caller="admin",transport="grpc"} 1"#,
        r#"sts_management_calls_total{rpc="Get",status="OK",caller="admin",transport="grpc"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
