//! Delete: revocation takes effect at once; unknown and invalid ids are refused.

use sts::{model::MAX_ID, proto::DeleteRequest, proto::InvalidReason};
use tonic::Code;

use crate::support::{assert_code, spawn_app};

#[tokio::test]
async fn a_deleted_token_is_rejected_at_once() {
    let app = spawn_app().await;
    let (secret, created) = app.create("ci", &["r"]).await;
    let (kept, _) = app.create("kept", &["r"]).await;
    assert!(app.validate(&secret).await.valid);

    app.client
        .clone()
        .delete(app.admin(DeleteRequest {
            id: created.id,
            ..Default::default()
        }))
        .await
        .unwrap();

    let response = app.validate(&secret).await;
    assert!(!response.valid);
    assert_eq!(response.reason(), InvalidReason::NotFound);
    assert!(
        app.validate(&kept).await.valid,
        "other tokens are untouched"
    );
    assert!(app.list_all().await.iter().all(|t| t.id != created.id));
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let app = spawn_app().await;
    let (_, created) = app.create("ci", &["r"]).await;
    let mut client = app.client.clone();
    client
        .delete(app.admin(DeleteRequest {
            id: created.id,
            ..Default::default()
        }))
        .await
        .unwrap();
    let status = assert_code(
        client
            .delete(app.admin(DeleteRequest {
                id: created.id,
                ..Default::default()
            }))
            .await,
        Code::NotFound,
    );
    assert!(
        status.message().contains(&created.id.to_string()),
        "{status:?}"
    );
    assert_code(
        client
            .delete(app.admin(DeleteRequest {
                id: 42,
                ..Default::default()
            }))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn out_of_range_ids_are_invalid_arguments() {
    let app = spawn_app().await;
    for id in [0, MAX_ID + 1, u64::MAX] {
        let status = assert_code(
            app.client
                .clone()
                .delete(app.admin(DeleteRequest {
                    id,
                    ..Default::default()
                }))
                .await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains("id"), "{status:?}");
    }
}
