//! The token lifecycle over StackState-style REST: `GET` and `PATCH` (a JSON
//! merge patch) of one token, `POST …/rotate`, list filters and pages with a
//! `Link` header, and forward-auth's word on a rotated-out secret.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use sts::clock::Clock;

use crate::support::{TestRouter, spawn_router};

const TOKENS: &str = "/api/security/tokens";

impl TestRouter {
    async fn created(&self, body: Value) -> Value {
        let answer = self.admin("POST", TOKENS, &body.to_string()).await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
        answer.json()
    }

    async fn forward_auth(&self, token: &str) -> crate::support::TestResponse {
        self.call("GET", "/api/auth", &[("x-api-key", token.as_bytes())], "")
            .await
    }
}

#[tokio::test]
async fn get_and_patch_one_token() {
    let app = spawn_router().await;
    let created = app
        .created(json!({"name": "ci", "roles": ["reader", "writer"], "description": "nightly", "labels": {"team": "ci", "tier": "1"}}))
        .await;
    let id = created["id"].as_u64().unwrap();
    let path = format!("{TOKENS}/{id}");
    let got = app.admin("GET", &path, "").await;
    assert_eq!(got.status, 200);
    let got = got.json();
    assert_eq!(got["name"], "ci");
    assert_eq!(got["description"], "nightly");
    assert_eq!(got["labels"], json!({"team": "ci", "tier": "1"}));
    assert!(got.get("token").is_none(), "never a secret");

    let expiry = app.clock.now() + Duration::from_secs(86_400);
    let expiry_ms = expiry.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let patch = json!({
        "name": "ci-2",
        "roles": ["reader"],
        "expiryDate": expiry_ms,
        "description": null,
        "labels": {"tier": null, "owner": "build"},
    });
    let patched = app.admin("PATCH", &path, &patch.to_string()).await;
    assert_eq!(patched.status, 200, "{:?}", patched.json());
    let patched = patched.json();
    assert_eq!(patched["name"], "ci-2");
    assert_eq!(patched["roles"], json!(["reader"]));
    assert_eq!(patched["expiration"], expiry_ms);
    assert_eq!(patched["description"], "");
    assert_eq!(
        patched["labels"],
        json!({"owner": "build", "team": "ci"}),
        "merged: one removed, one added, one kept"
    );
    assert_eq!(app.admin("GET", &path, "").await.json(), patched);

    // null expiryDate: never expires; disabled: refused at once.
    let patched = app
        .admin("PATCH", &path, r#"{"expiryDate": null, "disabled": true}"#)
        .await
        .json();
    assert!(patched.get("expiration").is_none());
    assert_eq!(patched["disabled"], true);
    let secret = created["token"].as_str().unwrap();
    let refused = app.forward_auth(secret).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
}

#[tokio::test]
async fn bad_patches_are_400_and_change_nothing() {
    let app = spawn_router().await;
    let created = app.created(json!({"name": "ci", "roles": ["r"]})).await;
    let id = created["id"].as_u64().unwrap();
    let path = format!("{TOKENS}/{id}");
    let before = app.admin("GET", &path, "").await.json();
    for (body, field) in [
        ("[]", "body"),
        ("{}", "body"),
        ("not json", "body"),
        (r#"{"name": null}"#, "name"),
        (r#"{"name": 7}"#, "name"),
        (r#"{"roles": []}"#, "roles"),
        (r#"{"expiryDate": 1000}"#, "expiryDate"),
        (r#"{"expiryDate": "soon"}"#, "expiryDate"),
        (r#"{"labels": {"Bad Key": "x"}}"#, "labels"),
        (r#"{"labels": {"k": 1}}"#, "labels"),
        (r#"{"disabled": "yes"}"#, "disabled"),
        (r#"{"id": 5}"#, "id"),
        (r#"{"name": "ok", "createdBy": "me"}"#, "createdBy"),
    ] {
        let answer = app.admin("PATCH", &path, body).await;
        assert_eq!(answer.status, 400, "{body}: {:?}", answer.json());
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert_eq!(app.admin("GET", &path, "").await.json(), before);
    assert_eq!(
        app.admin("GET", &format!("{TOKENS}/1"), "").await.status,
        404
    );
    assert_eq!(
        app.admin("PATCH", &format!("{TOKENS}/1"), r#"{"name": "x"}"#)
            .await
            .status,
        404
    );
    assert_eq!(
        app.admin("GET", &format!("{TOKENS}/abc"), "").await.status,
        400
    );
    let reader = app.created(json!({"name": "reader", "roles": ["r"]})).await;
    let key = reader["token"].as_str().unwrap();
    let denied = app
        .call("GET", &path, &[("x-api-key", key.as_bytes())], "")
        .await;
    assert_eq!(denied.status, 403);
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_patched_or_deleted_away() {
    let app = spawn_router().await;
    let me = app
        .call(
            "GET",
            "/api/server/status",
            &[("x-api-key", app.admin_token.as_bytes())],
            "",
        )
        .await
        .json();
    let id = me["serviceToken"]["id"].as_u64().unwrap();
    let path = format!("{TOKENS}/{id}");
    for (method, body) in [
        ("PATCH", r#"{"disabled": true}"#),
        ("PATCH", r#"{"roles": ["reader"]}"#),
        ("DELETE", ""),
    ] {
        let answer = app.admin(method, &path, body).await;
        assert_eq!(answer.status, 409, "{method} {body}");
        assert_eq!(answer.json()["error"], "FAILED_PRECONDITION");
    }
}

#[tokio::test]
async fn rotate_answers_the_new_secret_once_and_the_old_one_keeps_working_for_the_grace() {
    let app = spawn_router().await;
    let created = app.created(json!({"name": "ci", "roles": ["r"]})).await;
    let id = created["id"].as_u64().unwrap();
    let old = created["token"].as_str().unwrap().to_owned();
    let rotated = app
        .admin(
            "POST",
            &format!("{TOKENS}/{id}/rotate"),
            r#"{"gracePeriodSeconds": 3600}"#,
        )
        .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.json());
    let rotated = rotated.json();
    let keys: Vec<&str> = rotated
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "name", "token"], "create's shape");
    assert_eq!(rotated["id"], id);
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, old);

    let by_new = app.forward_auth(new).await;
    assert_eq!(by_new.status, 200);
    assert_eq!(by_new.header("x-service-token-previous-secret"), None);
    let by_old = app.forward_auth(&old).await;
    assert_eq!(by_old.status, 200, "in the grace period");
    assert_eq!(
        by_old.header("x-service-token-previous-secret"),
        Some("true")
    );
    assert_eq!(
        by_old.header("x-service-token-id"),
        Some(id.to_string().as_str())
    );
    let got = app.admin("GET", &format!("{TOKENS}/{id}"), "").await.json();
    assert!(got["previousSecretExpiration"].is_i64());

    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(app.forward_auth(&old).await.status, 401);
    // No body: no grace.
    let again = app
        .admin("POST", &format!("{TOKENS}/{id}/rotate"), "")
        .await
        .json();
    assert_eq!(app.forward_auth(new).await.status, 401);
    assert_eq!(
        app.forward_auth(again["token"].as_str().unwrap())
            .await
            .status,
        200
    );
    for body in [r#"{"gracePeriodSeconds": -1}"#, r#"{"grace": 5}"#, "nope"] {
        let answer = app
            .admin("POST", &format!("{TOKENS}/{id}/rotate"), body)
            .await;
        assert_eq!(answer.status, 400, "{body}");
    }
    assert_eq!(
        app.admin("POST", &format!("{TOKENS}/1/rotate"), "")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_list_filters_and_pages_without_changing_its_shape() {
    let app = spawn_router().await;
    for i in 0..7 {
        let roles = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        app.created(json!({"name": format!("ci-{i}"), "roles": roles}))
            .await;
    }
    let names = |answer: &Value| -> Vec<String> {
        answer
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // Everything, one array (the admin token included).
    let all = app.admin("GET", TOKENS, "").await;
    assert_eq!(all.header("link"), None);
    assert_eq!(names(&all.json()).len(), 8);
    let even = app
        .admin("GET", &format!("{TOKENS}?role=even&namePrefix=ci-"), "")
        .await
        .json();
    let mut even = names(&even);
    even.sort();
    assert_eq!(even, ["ci-0", "ci-2", "ci-4", "ci-6"]);
    // Pages of 3, following Link.
    let mut seen = Vec::new();
    let mut next = format!("{TOKENS}?namePrefix=ci-&limit=3");
    let mut pages = 0;
    loop {
        let page = app.admin("GET", &next, "").await;
        assert_eq!(page.status, 200);
        seen.extend(names(&page.json()));
        pages += 1;
        let Some(link) = page.header("link") else {
            break;
        };
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("{link}"));
        assert!(
            target.starts_with(TOKENS) && target.contains("namePrefix=ci-"),
            "{target}"
        );
        next = target.to_owned();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    for bad in [
        "limit=-1",
        "pageToken=nope",
        "role=a%20b",
        "unusedSince=x",
        "disabled=maybe",
    ] {
        let answer = app.admin("GET", &format!("{TOKENS}?{bad}"), "").await;
        assert_eq!(answer.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_unpaged_list_streams_more_than_a_page_as_one_array() {
    let config = sts::config::ServiceConfig {
        max_page_size: 3,
        ..Default::default()
    };
    let app = crate::support::spawn_router_with(config).await;
    for i in 0..10 {
        app.created(json!({"name": format!("t{i}"), "roles": ["r"]}))
            .await;
    }
    let all = app.admin("GET", TOKENS, "").await;
    assert_eq!(all.header("content-type"), Some("application/json"));
    let tokens = all.json();
    let ids: Vec<u64> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 11);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "ascending, once each");
    let none = app
        .admin("GET", &format!("{TOKENS}?namePrefix=zzz"), "")
        .await;
    assert_eq!(none.json(), json!([]));
}

#[tokio::test]
async fn concurrent_label_merges_all_land_over_rest_grpc_and_the_cli() {
    use sts::proto::{ServiceToken, UpdateRequest};
    let app = crate::support::spawn_app().await;
    let (_, created) = app.create("ci", &["r"]).await;
    let url = app.rest().url(&format!("{TOKENS}/{}", created.id));
    // Twenty patches at once, each adding its own label.
    let mut patches = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (url, admin) = (url.clone(), app.admin_token.clone());
        patches.spawn(async move {
            let body = json!({ "labels": { format!("k{n}"): "v" } }).to_string();
            let answer = reqwest::Client::new()
                .patch(&url)
                .header("x-api-key", admin)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
        });
    }
    patches.join_all().await;
    let labels = app.get(created.id).await.unwrap().labels;
    assert_eq!(labels.len(), 20, "{labels:?}");

    // gRPC: `labels.<key>` sets that key, or removes it when the message
    // lacks it; the others stay.
    let update = UpdateRequest {
        service_token: Some(ServiceToken {
            id: created.id,
            labels: [("team".to_owned(), "ci".to_owned())].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["labels.team".into(), "labels.k0".into()],
        }),
    };
    let updated = app
        .client
        .clone()
        .update(app.admin(update))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    assert_eq!(updated.labels.len(), 20);
    assert_eq!(updated.labels["team"], "ci");
    assert!(!updated.labels.contains_key("k0"));

    // The CLI, ten at once.
    let terminal = crate::cli::Terminal::new();
    terminal.log_in(&app).await;
    let id = created.id.to_string();
    let runs = (0..10).map(|n| {
        let label = format!("c{n}=v");
        let (terminal, id) = (&terminal, &id);
        async move {
            terminal
                .sts(&["service-token", "update", id, "--label", &label])
                .await
                .ok();
        }
    });
    futures_util::future::join_all(runs).await;
    let labels = app.get(created.id).await.unwrap().labels;
    assert_eq!(labels.len(), 30, "{labels:?}");

    // A merge past the most labels is refused, and changes nothing.
    let too_many: serde_json::Map<String, Value> =
        (0..5).map(|n| (format!("x{n}"), json!("v"))).collect();
    let refused = reqwest::Client::new()
        .patch(&url)
        .header("x-api-key", &app.admin_token)
        .body(json!({ "labels": too_many }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("at most 32"));
    assert_eq!(app.get(created.id).await.unwrap().labels.len(), 30);
}

/// AIP-154 over REST: `GET` answers the token's etag (header and field);
/// `PATCH` and `DELETE` with `If-Match` change the token only while it is
/// as read (412 otherwise, nothing changed); of twenty whole-map label
/// replacements sent at once with one etag, exactly one lands. gRPC's
/// Update and Delete hold to the same etag (ABORTED).
#[tokio::test]
async fn whole_field_replacements_are_safe_with_an_etag() {
    use sts::proto::{DeleteRequest, GetRequest, ServiceToken, UpdateRequest};
    let app = crate::support::spawn_app().await;
    let (_, created) = app.create("ci", &["r"]).await;
    let url = app.rest().url(&format!("{TOKENS}/{}", created.id));
    let http = reqwest::Client::new();
    let admin = app.admin_token.clone();
    let got = http
        .get(&url)
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    let etag = got.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(got.json::<Value>().await.unwrap()["etag"], etag.as_str());
    assert_eq!(created.etag, etag, "gRPC and REST give one etag");

    let mut patches = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (http, url, admin, etag) = (http.clone(), url.clone(), admin.clone(), etag.clone());
        patches.spawn(async move {
            let body = json!({ "labels": { "owner": format!("team-{n}") } }).to_string();
            let answer = http
                .patch(&url)
                .header("x-api-key", admin)
                .header("if-match", etag)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let new_etag = answer
                .headers()
                .get("etag")
                .map(|e| e.to_str().unwrap().to_owned());
            (status, new_etag, answer.json::<Value>().await.unwrap())
        });
    }
    let answers = patches.join_all().await;
    let landed: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert_eq!(landed.len(), 1, "{answers:?}");
    let (_, new_etag, body) = landed[0];
    let new_etag = new_etag.clone().unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(body["etag"], new_etag.as_str());
    for (status, _, body) in &answers {
        if *status != 200 {
            assert_eq!(*status, 412, "{body}");
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains(&new_etag), "{message}");
        }
    }
    let stored = app.get(created.id).await.unwrap();
    assert_eq!(
        stored.labels,
        landed[0].2["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    );

    // Not one etag, or not an etag: 400, nothing changed.
    for bad in [
        format!("{etag}, {new_etag}"),
        "W/\"abc\"".to_owned(),
        "nope".to_owned(),
    ] {
        let answer = http
            .patch(&url)
            .header("x-api-key", &admin)
            .header("if-match", bad.as_str())
            .body(r#"{"description": "x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{bad}");
    }
    // `*`: any current token.
    let star = http
        .patch(&url)
        .header("x-api-key", &admin)
        .header("if-match", "*")
        .body(r#"{"description": "starred"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(star.status(), 200);
    let current = star.headers()["etag"].to_str().unwrap().to_owned();

    // gRPC: a stale etag is ABORTED and changes nothing; the current one
    // (quotes or none) lands.
    let update = |etag: &str| UpdateRequest {
        service_token: Some(ServiceToken {
            id: created.id,
            description: "by grpc".into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["description".into()],
        }),
    };
    let mut client = app.client.clone();
    let stale = client.update(app.admin(update(&etag))).await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    let fetched = client
        .get(app.admin(GetRequest { id: created.id }))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    assert_eq!(fetched.description, "starred");
    assert_eq!(fetched.etag, current);
    let updated = client
        .update(app.admin(update(current.trim_matches('"'))))
        .await
        .unwrap()
        .into_inner()
        .service_token
        .unwrap();
    assert_eq!(updated.description, "by grpc");

    // Deletes: stale refused (both transports), current deletes.
    let stale = http
        .delete(&url)
        .header("x-api-key", &admin)
        .header("if-match", current.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let stale = client
        .delete(app.admin(DeleteRequest {
            id: created.id,
            etag: current.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted);
    assert!(app.get(created.id).await.is_ok(), "nothing deleted");
    client
        .delete(app.admin(DeleteRequest {
            id: created.id,
            etag: updated.etag.clone(),
        }))
        .await
        .unwrap();
    assert!(app.get(created.id).await.is_err());
}
