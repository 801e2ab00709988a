//! Who may manage tokens: the two documented credential forms, and the
//! status codes for every way a credential can be missing or wrong.

use std::time::Duration;

use sts::{
    clock::Clock,
    config::ServiceConfig,
    model::Role,
    proto::{CreateRequest, DeleteRequest, ListRequest},
    token::Secret,
};
use tonic::{Code, Request, metadata::MetadataValue};

use crate::support::{
    ADMIN_ROLE, TestApp, assert_code, create_request, spawn_app, spawn_app_with, with_key,
};

/// Request metadata: (header, value) pairs, repeated names allowed.
type Credential = Vec<(&'static str, String)>;

fn key(token: &str) -> Credential {
    vec![("x-api-key", token.to_owned())]
}

fn request<T>(credential: &Credential, message: T) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in credential {
        request
            .metadata_mut()
            .append(*name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    request
}

/// Runs Create, List and Delete with `credential`; returns each call's
/// status code and message.
async fn management_calls(app: &TestApp, credential: &Credential) -> Vec<(Code, String)> {
    let mut client = app.client.clone();
    let outcome = |result: Result<(), tonic::Status>| match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    vec![
        outcome(
            client
                .create(request(credential, create_request("x", &["r"])))
                .await
                .map(drop),
        ),
        outcome(
            client
                .list(request(credential, ListRequest::default()))
                .await
                .map(drop),
        ),
        // An id that surely does not exist: an authorized call answers NOT_FOUND.
        outcome(
            client
                .delete(request(
                    credential,
                    DeleteRequest {
                        id: 1,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
        ),
    ]
}

fn codes(results: &[(Code, String)]) -> Vec<Code> {
    results.iter().map(|(code, _)| *code).collect()
}

fn authorized() -> Vec<Code> {
    vec![Code::Ok, Code::Ok, Code::NotFound]
}

#[tokio::test]
async fn every_credential_form_is_accepted() {
    let app = spawn_app().await;
    let token = app.admin_token.clone();
    for credential in [
        key(&token),
        vec![("authorization", format!("ApiKey {token}"))],
        vec![("authorization", format!("apikey {token}"))],
        vec![("authorization", format!("Bearer {token}"))],
        vec![
            ("x-api-key", token.clone()),
            ("authorization", format!("ApiKey {token}")),
        ],
    ] {
        let results = management_calls(&app, &credential).await;
        assert_eq!(codes(&results), authorized(), "{credential:?}");
    }
}

#[tokio::test]
async fn missing_or_unusable_credentials_are_unauthenticated() {
    let app = spawn_app().await;
    let unknown = Secret::generate().expose_secret().to_owned();
    let admin = app.admin_token.clone();
    let cases: Vec<(&str, Credential)> = vec![
        ("none", vec![]),
        ("empty key", key("")),
        ("malformed", key("not-a-token")),
        ("unknown", key(&unknown)),
        ("basic", vec![("authorization", format!("Basic {admin}"))]),
        ("no scheme", vec![("authorization", admin.clone())]),
        ("too long", key(&"a".repeat(2000))),
        (
            "conflicting",
            vec![
                ("x-api-key", admin.clone()),
                ("authorization", format!("ApiKey {unknown}")),
            ],
        ),
        (
            "repeated",
            vec![("x-api-key", admin.clone()), ("x-api-key", unknown.clone())],
        ),
    ];
    for (case, credential) in cases {
        let results = management_calls(&app, &credential).await;
        assert_eq!(
            codes(&results),
            vec![Code::Unauthenticated; 3],
            "{case}: {results:?}"
        );
        for (_, message) in &results {
            assert!(
                !message.contains(&admin[7..]) && !message.contains(&unknown[7..]),
                "{case}: a secret leaked into {message:?}"
            );
        }
    }
    assert_eq!(app.list_all().await.len(), 1, "nothing was created");
}

#[tokio::test]
async fn expired_and_deleted_admin_tokens_stop_working_at_once() {
    let app = spawn_app().await;
    let (expiring, _) = app
        .create_with(CreateRequest {
            expiration: Some((app.clock.now() + Duration::from_secs(60)).into()),
            ..create_request("expiring-admin", &[ADMIN_ROLE])
        })
        .await;
    let (deleted, deleted_record) = app.create("deleted-admin", &[ADMIN_ROLE]).await;
    for token in [&expiring, &deleted] {
        assert_eq!(
            codes(&management_calls(&app, &key(token)).await),
            authorized()
        );
    }

    app.clock.advance(Duration::from_secs(60));
    let results = management_calls(&app, &key(&expiring)).await;
    assert_eq!(codes(&results), vec![Code::Unauthenticated; 3]);
    assert!(results[0].1.contains("expired"), "{results:?}");

    app.client
        .clone()
        .delete(app.admin(DeleteRequest {
            id: deleted_record.id,
            ..Default::default()
        }))
        .await
        .unwrap();
    let results = management_calls(&app, &key(&deleted)).await;
    assert_eq!(codes(&results), vec![Code::Unauthenticated; 3]);
}

#[tokio::test]
async fn a_valid_token_without_the_admin_role_is_permission_denied() {
    let app = spawn_app().await;
    let (viewer, _) = app
        .create("viewer", &["stackstate-k8s-troubleshooter"])
        .await;
    let before = app.list_all().await;
    let results = management_calls(&app, &key(&viewer)).await;
    assert_eq!(
        codes(&results),
        vec![Code::PermissionDenied; 3],
        "{results:?}"
    );
    assert!(results[0].1.contains(ADMIN_ROLE), "{results:?}");
    assert_eq!(app.list_all().await, before, "nothing changed");
}

#[tokio::test]
async fn the_admin_role_is_configurable() {
    let service = ServiceConfig::with_admin_role(Role::parse("token-admins").unwrap());
    let app = spawn_app_with(service, crate::support::server_config()).await;
    // The bootstrap token carries the configured role.
    assert_eq!(
        codes(&management_calls(&app, &key(&app.admin_token)).await),
        authorized()
    );
    let (default_admin, _) = app.create("default-admin", &[ADMIN_ROLE]).await;
    let status = assert_code(
        app.client
            .clone()
            .list(with_key(&default_admin, ListRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("token-admins"), "{status:?}");
}
