//! The lockout rule with a margin: no change may leave no enabled admin
//! token valid for at least `--admin-keep-margin` (24 h by default) from
//! now. An admin token about to expire does not let the last long-lived
//! one go (it would be gone seconds later, and nobody could manage tokens);
//! an admin token with a long life left does, and giving the last admin an
//! expiration beyond the margin is allowed.

use std::time::{Duration, SystemTime};

use sts::proto::{CreateRequest, ServiceToken, UpdateRequest};
use tonic::Code;

use crate::support::{TestApp, assert_code, create_request, spawn_app, with_key};

const ADMIN: &str = "stackstate-admin";
const DAY: Duration = Duration::from_secs(86_400);

/// A new admin token expiring `life` from now: (secret, token).
async fn admin_expiring_in(app: &TestApp, name: &str, life: Duration) -> (String, ServiceToken) {
    let request = CreateRequest {
        expiration: Some((SystemTime::now() + life).into()),
        ..create_request(name, &[ADMIN])
    };
    app.create_with(request).await
}

async fn disable(app: &TestApp, token: &ServiceToken) -> Result<ServiceToken, tonic::Status> {
    let disabled = ServiceToken {
        disabled: true,
        ..token.clone()
    };
    app.update(disabled, &["disabled"]).await
}

async fn expire_in(
    app: &TestApp,
    token: &ServiceToken,
    life: Duration,
) -> Result<ServiceToken, tonic::Status> {
    let changed = ServiceToken {
        expiration: Some((SystemTime::now() + life).into()),
        ..token.clone()
    };
    app.update(changed, &["expiration"]).await
}

#[tokio::test]
async fn a_short_lived_admin_does_not_let_the_last_long_lived_one_go() {
    let app = spawn_app().await;
    let first = app.get(app.admin_id().await).await.unwrap();
    admin_expiring_in(&app, "short", Duration::from_secs(4)).await;
    // S is valid now, but gone in 4 s: disabling the first would leave
    // nobody able to manage tokens then.
    let refused = assert_code(disable(&app, &first).await, Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .starts_with("refused: disabling service token"),
        "{refused:?}"
    );
    assert!(
        !app.get(first.id).await.unwrap().disabled,
        "nothing changed"
    );
    assert_code(
        expire_in(&app, &first, DAY / 2).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn an_admin_with_a_long_life_left_lets_another_go_and_the_last_may_get_a_far_expiration() {
    let app = spawn_app().await;
    let first = app.get(app.admin_id().await).await.unwrap();
    // The last admin: an expiration a year away keeps access long enough.
    let first = expire_in(&app, &first, DAY * 365).await.unwrap();
    // But not one inside the margin.
    assert_code(
        expire_in(&app, &first, DAY / 2).await,
        Code::FailedPrecondition,
    );

    let (secret, long) = admin_expiring_in(&app, "long", DAY * 30).await;
    disable(&app, &first)
        .await
        .expect("another admin keeps access for 30 days");
    // Now `long` is the last: it may not be cut below the margin, by
    // itself or anyone.
    let cut = UpdateRequest {
        service_token: Some(ServiceToken {
            expiration: Some((SystemTime::now() + DAY / 2).into()),
            ..long.clone()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expiration".into()],
        }),
    };
    let answer = app.client.clone().update(with_key(&secret, cut)).await;
    assert_code(answer, Code::FailedPrecondition);
}
