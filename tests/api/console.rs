//! The web console over HTTP as a browser without JavaScript uses it:
//! sessions (sign-in, cookies, timeouts, ending with their token), CSRF,
//! the security headers, escaping, every action, the prefix and the
//! switch, the logs, the metrics, and sessions across PostgreSQL replicas.
//! `browser.rs` drives the same pages in a real Chromium.

use std::time::Duration;

use sts::{
    config::{ConsoleConfig, ConsolePrefix, ServiceConfig},
    proto::ServiceToken,
    source::TrustedProxies,
};

use crate::support::{
    console::ConsoleClient, logs::capture_logs, server_config, spawn_app, spawn_app_with, within,
};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Every page's security headers.
fn assert_guarded(page: &crate::support::console::Page) {
    let header = |name: &str| {
        page.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-security-policy"), CSP);
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn a_session_stands_for_a_sign_in_until_sign_out() {
    let app = spawn_app().await;
    let mut console = ConsoleClient::new(app.addr);
    // Signed out, every page leads to the sign-in page.
    for path in ["/", "/tokens", "/tokens/new", "/tokens/1"] {
        let page = console.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location(), "/console/sign-in", "{path}");
        assert_guarded(&page);
    }
    assert_eq!(console.get("").await.location(), "/console/");

    let answer = console.sign_in(&app.admin_token).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = answer
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("sts_console="))
        .unwrap();
    assert!(
        cookie.ends_with("; Path=/console; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    let session = console.session().unwrap().to_owned();
    assert_ne!(session, app.admin_token);

    let overview = console.get("/").await;
    assert_eq!(overview.status, 200);
    assert_guarded(&overview);
    assert_eq!(overview.headers["cache-control"], "no-store");
    assert!(overview.body.contains("Signed in as"), "{}", overview.body);
    assert!(overview.body.contains("<dd>sled</dd>"));
    assert!(!overview.body.contains(&app.admin_token));
    assert!(!overview.body.contains(&session));

    // The assets: hashed names, kept a year; nothing else is served there.
    let css = overview
        .body
        .split("href=\"/console/assets/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(css.starts_with("console.") && css.ends_with(".css"));
    let asset = console.get(&format!("/assets/{css}")).await;
    assert_eq!(asset.status, 200);
    assert_eq!(
        asset.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(console.get("/assets/console.css").await.status, 404);

    let csrf = overview.field("csrf");
    let out = console.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.location(), "/console/sign-in?ended=signed-out");
    // The old cookie opens nothing: the session is gone on the server.
    let mut replay = ConsoleClient::new(app.addr);
    replay.cookies.push(("sts_console".into(), session));
    assert_eq!(replay.get("/").await.location(), "/console/sign-in");
}

/// Sessions live in the store: a restart signs nobody out.
#[tokio::test]
async fn a_restart_signs_nobody_out() {
    let app = spawn_app().await;
    let console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    let cookies = console.cookies.clone();
    let dir = app.stop().await;
    let app = crate::support::restart(dir).await;
    let mut again = ConsoleClient::new(app.addr);
    again.cookies = cookies;
    let page = again.get("/").await;
    assert_eq!(page.status, 200, "{} {}", page.location(), page.body);
}

#[tokio::test]
async fn only_a_current_managing_secret_signs_in_and_attempts_are_limited() {
    let app = spawn_app().await;
    let (reader, _) = app.create("reader", &["reader"]).await;
    let mut console = ConsoleClient::new(app.addr);
    let refused = console.sign_in(&reader).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .body
            .contains("neither the admin nor the manager role")
    );
    assert!(console.session().is_none());

    // A rotated-out secret, still in its grace, checks but never manages.
    let (old, created) = app.create("ops", &["stackstate-admin"]).await;
    app.rotate(created.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(app.validate(&old).await.valid);
    let refused = console.sign_in(&old).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(console.session().is_none());

    // A form from elsewhere (no matching form cookie) signs nobody in.
    let mut other = ConsoleClient::new(app.addr);
    let forged = other
        .post(
            "/sign-in",
            &[("token", &app.admin_token), ("form_token", "x")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(other.session().is_none());

    // Attempts from one address are limited, whatever their outcome.
    let mut limited = None;
    for _ in 0..sts::service::SIGN_INS_PER_MINUTE + 1 {
        let answer = console.sign_in("svctok-wrong").await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("sign-ins were never limited");
    assert!(limited.body.contains("Too many sign-in attempts"));
    assert_eq!(
        app.metric(r#"sts_management_calls_total{rpc="SignIn",status="RESOURCE_EXHAUSTED",caller="none",transport="console"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token() {
    let app = spawn_app().await;
    let (_, target) = app.create("target", &["reader"]).await;
    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    let path = format!("/tokens/{}/disable", target.id);
    for csrf in ["", "0123456789abcdef0123456789abcdef"] {
        let refused = console.post(&path, &[("csrf", csrf)]).await;
        assert_eq!(refused.status, 403, "{csrf:?}");
    }
    let made = console
        .post(
            "/tokens/new",
            &[("csrf", "nope"), ("name", "x"), ("roles", "a")],
        )
        .await;
    assert_eq!(made.status, 403);
    assert_eq!(app.list_all().await.len(), 2);
    assert!(!app.get(target.id).await.unwrap().disabled);
    // With it, the same form works.
    let csrf = console.csrf().await;
    let done = console.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(app.get(target.id).await.unwrap().disabled);
}

/// A session ends at once when its token is rotated (with a grace or
/// without), disabled, deleted, or loses its role.
#[tokio::test]
async fn a_session_ends_with_its_tokens_right_to_manage() {
    let app = spawn_app().await;
    for how in [
        "rotated",
        "rotated with grace",
        "disabled",
        "deleted",
        "lost its role",
    ] {
        let (secret, token) = app.create(how, &["stackstate-admin"]).await;
        let mut console = ConsoleClient::signed_in(app.addr, &secret).await;
        assert_eq!(console.get("/tokens").await.status, 200, "{how}");
        match how {
            "rotated" => drop(app.rotate(token.id, Duration::ZERO).await.unwrap()),
            "rotated with grace" => drop(
                app.rotate(token.id, Duration::from_secs(3600))
                    .await
                    .unwrap(),
            ),
            "disabled" => drop(
                app.update(
                    ServiceToken {
                        disabled: true,
                        ..token
                    },
                    &["disabled"],
                )
                .await
                .unwrap(),
            ),
            "deleted" => drop(
                app.client
                    .clone()
                    .delete(app.admin(sts::proto::DeleteRequest {
                        id: token.id,
                        etag: String::new(),
                    }))
                    .await
                    .unwrap(),
            ),
            _ => drop(
                app.update(
                    ServiceToken {
                        roles: vec!["reader".into()],
                        ..token
                    },
                    &["roles"],
                )
                .await
                .unwrap(),
            ),
        }
        let ended = console.get("/tokens").await;
        assert_eq!(ended.status, 303, "{how}");
        assert_eq!(ended.location(), "/console/sign-in?ended=refused", "{how}");
        assert!(console.session().is_none(), "{how}: the cookie is cleared");
    }
}

#[tokio::test]
async fn a_session_ends_when_idle_and_at_its_absolute_lifetime() {
    let app = spawn_app().await;
    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    let session = console.session().unwrap().to_owned();
    // Used every 10 minutes it lives on, up to 8 hours.
    for _ in 0..47 {
        app.clock.advance(Duration::from_secs(600));
        assert_eq!(console.get("/").await.status, 200);
    }
    app.service.keep_sessions().await.unwrap();
    app.clock.advance(Duration::from_secs(600));
    let ended = console.get("/").await;
    assert_eq!(ended.location(), "/console/sign-in", "past 8 hours");

    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    assert_ne!(console.session().unwrap(), session);
    app.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(console.get("/").await.status, 200);
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(
        console.get("/").await.location(),
        "/console/sign-in",
        "idle"
    );
}

#[tokio::test]
async fn the_console_creates_finds_edits_rotates_disables_and_deletes() {
    let app = spawn_app().await;
    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    let csrf = console.csrf().await;

    // A refusal says what the API says, and keeps what was typed.
    let bad = console
        .post(
            "/tokens/new",
            &[("csrf", &csrf), ("name", "ci"), ("roles", "a b")],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("roles"), "{}", bad.body);
    assert!(bad.body.contains("value=\"ci\""));

    let made = console
        .post(
            "/tokens/new",
            &[
                ("csrf", &csrf),
                ("name", "ci-deployer"),
                ("roles", "deploy, read"),
                ("labels", "team=ci\nenv=prod"),
                ("description", "deploys"),
                ("expiration", "2999-01-01T00:00"),
                ("audiences", "deploy-api"),
                ("rate_limits", "burst=10/1s"),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.headers["cache-control"], "no-store");
    assert!(made.body.contains("It will not be shown again"));
    let secret = shown_secret(&made.body);
    // Bound to an audience: a check without one fails closed, so it is
    // known by its answer, not by being valid.
    let checked = app.validate(&secret).await;
    assert_eq!(
        checked.reason(),
        sts::proto::InvalidReason::AudienceNotAllowed,
        "{secret}"
    );
    let created = app
        .list_all()
        .await
        .into_iter()
        .find(|t| t.name == "ci-deployer")
        .unwrap();
    assert_eq!(created.roles, ["deploy", "read"]);
    assert_eq!(created.audiences, ["deploy-api"]);
    assert_eq!(created.labels["env"], "prod");

    // Found by search, by label, by state; sorted.
    for query in [
        "?q=ci-",
        "?label=team%3Dci",
        "?label=env",
        "?bound=bound",
        "?state=enabled&order=created+desc",
    ] {
        let page = console.get(&format!("/tokens{query}")).await;
        assert_eq!(page.status, 200, "{query}");
        assert!(
            page.body.contains(">ci-deployer</a>"),
            "{query}: {}",
            page.body
        );
    }
    for query in [
        "?q=nope",
        "?label=team%3Dops",
        "?state=disabled",
        "?bound=unbound&q=ci",
    ] {
        let page = console.get(&format!("/tokens{query}")).await;
        assert!(!page.body.contains(">ci-deployer</a>"), "{query}");
    }
    let invalid = console.get("/tokens?label=%3D%3D&order=sideways").await;
    assert_eq!(invalid.status, 400);

    // The token's page and an edit of one field: only it changes.
    let path = format!("/tokens/{}", created.id);
    let shown = console.get(&path).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains("burst=10/1s") && shown.body.contains("deploy-api"));
    let edit = console.get(&format!("{path}/edit")).await;
    let etag = edit.field("etag");
    let mut form: Vec<(&str, String)> = [
        "name",
        "roles",
        "labels",
        "expiration",
        "sources",
        "audiences",
        "routes",
        "rate_limits",
    ]
    .iter()
    .map(|name| (*name, field_text(&edit.body, name)))
    .collect();
    form.push(("csrf", csrf.clone()));
    form.push(("etag", etag));
    form.push(("description", "deploys, reviewed".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let saved = console.post(&format!("{path}/edit"), &pairs).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let after = app.get(created.id).await.unwrap();
    assert_eq!(after.description, "deploys, reviewed");
    assert_eq!(after.name, "ci-deployer");
    assert_eq!(after.rate_limits, created.rate_limits);
    // The same form again changes nothing; another change made from the
    // page as it was (its etag stale now) is refused and changes nothing.
    let again = console.post(&format!("{path}/edit"), &pairs).await;
    assert_eq!(again.location(), format!("/console{path}?done=unchanged"));
    let mut late = pairs.clone();
    late.retain(|(k, _)| *k != "description");
    late.push(("description", "a late change"));
    let stale = console.post(&format!("{path}/edit"), &late).await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert!(
        stale.body.contains("a late change"),
        "what was typed is kept"
    );
    assert_eq!(
        app.get(created.id).await.unwrap().description,
        "deploys, reviewed"
    );

    // Rotate with a grace: the old secret still checks, the new one is shown once.
    let rotated = console
        .post(
            &format!("{path}/rotate"),
            &[("csrf", &csrf), ("grace", "1h")],
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(rotated.body.contains("keeps working until"));
    let for_deploy = sts::proto::ValidateRequest {
        token: secret.clone(),
        audience: "deploy-api".into(),
        ..Default::default()
    };
    let old = app
        .client
        .clone()
        .validate(for_deploy)
        .await
        .unwrap()
        .into_inner();
    assert!(old.valid && old.previous_secret, "{old:?}");
    let page = console.get(&path).await;
    assert!(page.body.contains("previous secret in grace"));

    // Disable, enable.
    let disabled = console
        .post(&format!("{path}/disable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(disabled.location(), format!("/console{path}?done=disabled"));
    assert!(console.get(&path).await.body.contains("state-disabled"));
    console
        .post(&format!("{path}/enable"), &[("csrf", &csrf)])
        .await;
    assert!(!app.get(created.id).await.unwrap().disabled);

    // Delete only with the name typed.
    let kept = console
        .post(
            &format!("{path}/delete"),
            &[("csrf", &csrf), ("confirm", "ci")],
        )
        .await;
    assert_eq!(kept.status, 400);
    assert!(app.get(created.id).await.is_ok());
    let deleted = console
        .post(
            &format!("{path}/delete"),
            &[("csrf", &csrf), ("confirm", "ci-deployer")],
        )
        .await;
    assert_eq!(deleted.location(), "/console/tokens?notice=deleted");
    assert!(app.get(created.id).await.is_err());

    // Counted under the console's transport.
    let metrics = app.metrics_text().await;
    for rpc in [
        "SignIn", "Create", "List", "Get", "Update", "Rotate", "Delete",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"rpc="{rpc}",status="OK",caller="admin",transport="console""#
            )),
            "{rpc}"
        );
    }
}

/// The secret a page shows once.
fn shown_secret(body: &str) -> String {
    let value = body
        .split("id=\"secret\" type=\"text\" value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no secret in\n{body}"));
    crate::support::console::html_unescape(value.split('"').next().unwrap())
}

/// The text a form's input or textarea `name` holds.
fn field_text(body: &str, name: &str) -> String {
    let input = format!("name=\"{name}\" value=\"");
    if let Some(at) = body.find(&input) {
        let rest = &body[at + input.len()..];
        return crate::support::console::html_unescape(&rest[..rest.find('"').unwrap()]);
    }
    let textarea = format!("name=\"{name}\"");
    let at = body.find(&textarea).unwrap_or_else(|| panic!("no {name}"));
    let rest = &body[at..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    crate::support::console::html_unescape(&rest[..rest.find("</textarea>").unwrap()])
}

#[tokio::test]
async fn markup_and_misleading_characters_are_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(sts::store::SledStore::open(dir.path()).unwrap());
    // Names an earlier release could store: bidi override, zero-width space.
    let lying = crate::support::old_token(&*store, "evil\u{202e}gnp.exe\u{200b}").await;
    let app = crate::support::spawn_app_on(dir, store).await;
    let (_, marked) = app
        .create_with(sts::proto::CreateRequest {
            name: "<script>alert('name')</script>".into(),
            roles: vec!["reader".into()],
            description: "<img src=x onerror=alert(1)>".into(),
            labels: [("team".to_owned(), "\"><script>alert(2)</script>".to_owned())].into(),
            ..Default::default()
        })
        .await;
    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    for path in [
        "/tokens".to_owned(),
        format!("/tokens/{}", marked.id),
        format!("/tokens/{lying}"),
        format!("/tokens/{lying}/edit"),
    ] {
        let page = console.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<img src=x"));
        assert!(
            !page.body.contains('\u{202e}') && !page.body.contains('\u{200b}'),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains(" style="));
    }
    let list = console.get("/tokens").await.body;
    assert!(list.contains("&#60;script&#62;alert(&#39;name&#39;)&#60;/script&#62;"));
    assert!(list.contains(r"evil\u{202e}gnp.exe\u{200b}"), "{list}");
}

#[tokio::test]
async fn the_console_can_be_off_or_under_another_prefix() {
    let off = spawn_app_with(
        ServiceConfig::default(),
        sts::config::ServerConfig {
            console: None,
            ..server_config()
        },
    )
    .await;
    let mut console = ConsoleClient::new(off.addr);
    assert_eq!(console.get("/").await.status, 404);
    assert_eq!(console.get("/sign-in").await.status, 404);

    let moved = spawn_app_with(
        ServiceConfig::default(),
        sts::config::ServerConfig {
            console: Some(ConsoleConfig {
                prefix: ConsolePrefix::parse("/ops/tokens").unwrap(),
            }),
            ..server_config()
        },
    )
    .await;
    assert_eq!(ConsoleClient::new(moved.addr).get("/").await.status, 404);
    let mut console = ConsoleClient::at(moved.addr, "/ops/tokens");
    assert_eq!(console.get("/").await.location(), "/ops/tokens/sign-in");
    let answer = console.sign_in(&moved.admin_token).await;
    assert_eq!(answer.location(), "/ops/tokens/");
    assert!(
        answer
            .set_cookies()
            .iter()
            .any(|c| c.contains("Path=/ops/tokens;"))
    );
    let page = console.get("/tokens").await;
    assert!(page.body.contains("action=\"/ops/tokens/sign-out\""));
    assert!(page.body.contains("href=\"/ops/tokens/assets/console."));
}

#[tokio::test]
async fn cookies_are_secure_behind_a_trusted_proxy_that_says_https() {
    let trusting = spawn_app_with(
        ServiceConfig::default(),
        sts::config::ServerConfig {
            trusted_proxies: TrustedProxies::parse("127.0.0.1/32").unwrap(),
            ..server_config()
        },
    )
    .await;
    let sign_in = |addr, proto: &'static str| async move {
        let http = reqwest::Client::new();
        http.get(format!("http://{addr}/console/sign-in"))
            .header("x-forwarded-proto", proto)
            .send()
            .await
            .unwrap()
            .headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(sign_in(trusting.addr, "https").await.ends_with("; Secure"));
    assert!(!sign_in(trusting.addr, "http").await.contains("Secure"));
    // An untrusted peer's header is not believed.
    let plain = spawn_app().await;
    assert!(!sign_in(plain.addr, "https").await.contains("Secure"));
}

#[tokio::test]
async fn no_secret_or_session_id_reaches_the_log() {
    let (_guard, logs) = capture_logs();
    let app = spawn_app().await;
    let mut console = ConsoleClient::signed_in(app.addr, &app.admin_token).await;
    let csrf = console.csrf().await;
    let made = console
        .post(
            "/tokens/new",
            &[("csrf", &csrf), ("name", "logged"), ("roles", "a")],
        )
        .await;
    let secret = made
        .body
        .split("value=\"svctok-")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    console.sign_in("svctok-not-a-secret-at-all").await;
    let session = console.session().map(str::to_owned);
    let text = format!("{:?}", logs.events());
    assert!(text.contains("console session opened"));
    assert!(!text.contains(&app.admin_token));
    assert!(!text.contains(&secret));
    assert!(!text.contains(&csrf));
    if let Some(session) = session {
        assert!(!text.contains(&session));
    }
}

/// Sessions live in the shared store: one opened on replica A serves on
/// replica B, and ends on B when A disables its token.
#[tokio::test]
async fn a_session_serves_on_every_replica_and_ends_on_all() {
    let Some(database) = crate::support::pg::TestDatabase::create("console_replicas").await else {
        return;
    };
    let url = sts::config::StoreUrl::parse(&database.url).unwrap();
    let a = crate::support::spawn_app_on(
        tempfile::tempdir().unwrap(),
        std::sync::Arc::new(sts::store::PostgresStore::connect(&url).await.unwrap()),
    )
    .await;
    let b = crate::support::spawn_app_on_with(
        tempfile::tempdir().unwrap(),
        std::sync::Arc::new(sts::store::PostgresStore::connect(&url).await.unwrap()),
        ServiceConfig::default(),
    )
    .await;
    let admin = a
        .list_all()
        .await
        .into_iter()
        .filter(|t| t.name == "test-admin")
        .count();
    assert_eq!(admin, 2, "each replica bootstrapped an admin");
    let (secret, token) = a.create("ops", &["stackstate-admin"]).await;
    let mut on_a = ConsoleClient::signed_in(a.addr, &secret).await;
    let mut on_b = ConsoleClient::new(b.addr);
    on_b.cookies = on_a.cookies.clone();
    let page = on_b.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<dd>postgresql</dd>"));
    assert_eq!(on_a.get("/").await.status, 200);

    a.update(
        ServiceToken {
            disabled: true,
            ..token
        },
        &["disabled"],
    )
    .await
    .unwrap();
    within(Duration::from_secs(5), "B ends the session", || {
        let mut probe = ConsoleClient::new(b.addr);
        probe.cookies = on_b.cookies.clone();
        async move { probe.get("/").await.status == 303 }
    })
    .await;
    a.stop().await;
    b.stop().await;
    database.drop().await;
}
