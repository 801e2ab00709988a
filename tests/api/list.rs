//! List: keyset pagination with an opaque cursor that stays valid while
//! tokens are created and deleted between pages.

use std::collections::{BTreeSet, HashMap};

use sts::{
    config::ServiceConfig,
    proto::{DeleteRequest, ListRequest, ListResponse},
};
use tonic::Code;

use crate::support::{TestApp, assert_code, spawn_app, spawn_app_with};

async fn page(app: &TestApp, page_size: i32, page_token: &str) -> ListResponse {
    app.client
        .clone()
        .list(app.admin(ListRequest {
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn pages_walk_every_token_once_in_id_order() {
    let app = spawn_app().await;
    for i in 0..24 {
        app.create(&format!("t{i:02}"), &["r"]).await;
    }
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = String::new();
    loop {
        let response = page(&app, 10, &cursor).await;
        sizes.push(response.service_tokens.len());
        ids.extend(response.service_tokens.iter().map(|t| t.id));
        if response.next_page_token.is_empty() {
            break;
        }
        cursor = response.next_page_token;
    }
    assert_eq!(sizes, [10, 10, 5], "24 tokens plus the admin token");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "ascending, no duplicates");
    let names: BTreeSet<String> = app.list_all().await.into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 25);
}

#[tokio::test]
async fn an_exact_last_page_has_no_next_token() {
    let app = spawn_app().await;
    app.create("one", &["r"]).await;
    let response = page(&app, 2, "").await;
    assert_eq!(response.service_tokens.len(), 2);
    assert!(response.next_page_token.is_empty());
}

#[tokio::test]
async fn page_size_defaults_and_is_capped() {
    let service = ServiceConfig {
        default_page_size: 3,
        max_page_size: 5,
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, crate::support::server_config()).await;
    for i in 0..9 {
        app.create(&format!("t{i}"), &["r"]).await;
    }
    assert_eq!(page(&app, 0, "").await.service_tokens.len(), 3);
    assert_eq!(page(&app, 4, "").await.service_tokens.len(), 4);
    assert_eq!(page(&app, 1000, "").await.service_tokens.len(), 5);
}

#[tokio::test]
async fn the_cursor_is_stable_across_creates_and_deletes() {
    let app = spawn_app().await;
    for i in 0..15 {
        app.create(&format!("t{i:02}"), &["r"]).await;
    }
    let everyone: Vec<_> = app.list_all().await;

    // The deletions below must not hit the admin token the test works with.
    let is_admin = |i: usize| everyone[i].name == "test-admin";
    let size = if is_admin(4) { 6 } else { 5 };
    let first = page(&app, size as i32, "").await;
    assert_eq!(first.service_tokens, everyone[..size]);
    // Delete the very token the cursor points after, and one not yet shown.
    let seen_last = everyone[size - 1].id;
    let last = everyone.len() - 1;
    let not_yet_shown = everyone[if is_admin(last) { last - 1 } else { last }].id;
    for id in [seen_last, not_yet_shown] {
        app.client
            .clone()
            .delete(app.admin(DeleteRequest {
                id,
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    for i in 0..10 {
        app.create(&format!("new{i}"), &["r"]).await;
    }

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for token in &first.service_tokens {
        *seen.entry(token.id).or_default() += 1;
    }
    let mut cursor = first.next_page_token;
    while !cursor.is_empty() {
        let response = page(&app, size as i32, &cursor).await;
        for token in &response.service_tokens {
            *seen.entry(token.id).or_default() += 1;
        }
        cursor = response.next_page_token;
    }
    for token in &everyone {
        if token.id == not_yet_shown {
            // Deleted before its page came: never shown.
            assert!(!seen.contains_key(&token.id), "a deleted token was listed");
        } else {
            assert_eq!(seen.get(&token.id), Some(&1), "{} shown once", token.name);
        }
    }
}

#[tokio::test]
async fn bad_page_arguments_are_invalid() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    for (request, field) in [
        (
            ListRequest {
                page_size: -1,
                page_token: String::new(),
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListRequest {
                page_size: 0,
                page_token: "not-a-cursor".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListRequest {
                page_size: 0,
                page_token: "AQAAAAAAAAAA".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let status = assert_code(client.list(app.admin(request)).await, Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }
}

/// `order_by` and `label` over gRPC and REST: pages in the order asked
/// for, a cursor that holds only to its own order, REST's `Link` keeping
/// the order, bad values refused.
#[tokio::test]
async fn lists_sort_by_any_key_and_filter_by_label_on_every_transport() {
    let app = spawn_app().await;
    for (name, team) in [
        ("delta", "ci"),
        ("alpha", "ops"),
        ("charlie", "ci"),
        ("bravo", "ci"),
    ] {
        app.create_with(sts::proto::CreateRequest {
            name: name.into(),
            roles: vec!["r".into()],
            labels: [("team".to_owned(), team.to_owned())].into(),
            ..Default::default()
        })
        .await;
    }
    let list = |order_by: &str, label: &str, page_token: &str| {
        let request = ListRequest {
            page_size: 2,
            page_token: page_token.into(),
            order_by: order_by.into(),
            label: label.into(),
            ..Default::default()
        };
        let mut client = app.client.clone();
        let request = app.admin(request);
        async move { client.list(request).await.map(|r| r.into_inner()) }
    };
    let mut names = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list("name desc", "team=ci", &cursor).await.unwrap();
        names.extend(page.service_tokens.iter().map(|t| t.name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        cursor = page.next_page_token;
    }
    assert_eq!(names, ["delta", "charlie", "bravo"]);
    let first = list("name", "", "").await.unwrap();
    assert_eq!(
        first
            .service_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "bravo"]
    );
    // A cursor is for its own order.
    assert_code(
        list("created", "", &first.next_page_token).await,
        Code::InvalidArgument,
    );
    assert_code(list("id", "", "").await, Code::InvalidArgument);
    assert!(
        list("", "team=", "")
            .await
            .unwrap()
            .service_tokens
            .is_empty(),
        "an empty value is a value"
    );
    assert_code(list("", "no such=key", "").await, Code::InvalidArgument);

    // REST: the same, with the order kept in the next page's link.
    let rest = app.rest();
    let url = rest.url("/api/security/tokens?orderBy=name+desc&label=team%3Dci&limit=2");
    let response = reqwest::Client::new()
        .get(url)
        .header("x-api-key", &app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let link = response.headers()["link"].to_str().unwrap().to_owned();
    assert!(
        link.contains("orderBy=name+desc") && link.contains("pageToken="),
        "{link}"
    );
    let page: Vec<serde_json::Value> = response.json().await.unwrap();
    assert_eq!(page[0]["name"], "delta");
    let refused = reqwest::Client::new()
        .get(rest.url("/api/security/tokens?orderBy=sideways"))
        .header("x-api-key", &app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("orderBy"));
}
