//! Validate: valid tokens answer with their identity; malformed, unknown and
//! expired ones are normal answers, not errors; no credential is needed.

use std::time::{Duration, SystemTime};

use sts::{
    clock::Clock,
    proto::{CreateRequest, InvalidReason, ValidateRequest},
    token::Secret,
};

use crate::support::{checked, create_request, spawn_app};

#[tokio::test]
async fn a_valid_token_answers_with_its_identity() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["a", "b"]).await;
    // No credential metadata at all: the token in the body is the credential.
    let response = app
        .client
        .clone()
        .validate(ValidateRequest {
            token: secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.valid);
    assert_eq!(response.reason(), InvalidReason::Unspecified);
    let identity = response.service_token.unwrap();
    assert_eq!(identity, checked(created));
    assert_eq!(identity.roles, ["a", "b"]);
}

#[tokio::test]
async fn malformed_tokens_are_rejected_as_malformed() {
    let app = spawn_app().await;
    let (secret, _) = app.create("ci", &["r"]).await;
    let mut typo = secret.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let truncated = &secret[..secret.len() - 1];
    for presented in [
        "",
        "garbage",
        "svctok-",
        truncated,
        &typo,
        &format!("{secret} "),
    ] {
        let response = app.validate(presented).await;
        assert!(!response.valid, "{presented:?}");
        assert_eq!(response.reason(), InvalidReason::Malformed, "{presented:?}");
        assert_eq!(response.service_token, None);
    }
}

#[tokio::test]
async fn well_formed_unknown_tokens_are_not_found() {
    let app = spawn_app().await;
    let response = app.validate(Secret::generate().expose_secret()).await;
    assert!(!response.valid);
    assert_eq!(response.reason(), InvalidReason::NotFound);
}

#[tokio::test]
async fn tokens_expire_at_their_expiration() {
    let app = spawn_app().await;
    let expiration = SystemTime::now() + Duration::from_secs(3600);
    let (secret, _) = app
        .create_with(CreateRequest {
            expiration: Some(expiration.into()),
            ..create_request("short-lived", &["r"])
        })
        .await;
    let (forever, _) = app.create("forever", &["r"]).await;
    assert!(app.validate(&secret).await.valid);

    let now = app.clock.now();
    app.clock.advance(expiration.duration_since(now).unwrap());
    let response = app.validate(&secret).await;
    assert!(!response.valid);
    assert_eq!(response.reason(), InvalidReason::Expired);
    assert_eq!(response.service_token, None);

    app.clock.advance(Duration::from_secs(10 * 365 * 86_400));
    assert!(
        app.validate(&forever).await.valid,
        "no expiration means never"
    );
}
