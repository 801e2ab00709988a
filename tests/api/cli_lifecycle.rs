//! The lifecycle commands of the real `sts` binary: describe, update,
//! disable, enable, rotate, and the list's filters and `--wide` columns.

use sts::proto::InvalidReason;

use crate::{cli::Terminal, support::spawn_app};

#[tokio::test]
async fn describe_update_disable_enable_and_rotate() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let (secret, created) = app.create("ci", &["reader"]).await;
    let id = created.id.to_string();

    let updated = terminal
        .sts(&[
            "service-token",
            "update",
            &id,
            "--name",
            "ci-2",
            "--roles",
            "reader,deployer",
            "--expiration",
            "2099-01-01",
            "--description",
            "nightly build",
            "--label",
            "team=ci",
            "--label",
            "tier=1",
        ])
        .await
        .ok();
    assert_eq!(
        updated.stdout.trim(),
        format!("Service token updated: {id}")
    );
    let labels = terminal
        .sts(&[
            "service-token",
            "update",
            &id,
            "--remove-label",
            "tier",
            "--label",
            "owner=build",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        labels["service-token"]["labels"],
        serde_json::json!({"owner": "build", "team": "ci"})
    );

    let described = terminal.sts(&["service-token", "describe", &id]).await.ok();
    for row in [
        "NAME                      | ci-2".to_owned(),
        "ROLES                     | [reader deployer]".to_owned(),
        "EXPIRATION                | 2099-01-01".to_owned(),
        "STATUS                    | active".to_owned(),
        "DESCRIPTION               | nightly build".to_owned(),
        "LABELS                    | owner=build,team=ci".to_owned(),
        format!("CREATED BY                | {}", created.created_by),
        "LAST USED                 | never".to_owned(),
    ] {
        assert!(
            described.stdout.lines().any(|l| l == row),
            "{row:?} not in\n{}",
            described.stdout
        );
    }
    let json = terminal
        .sts(&["service-token", "describe", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["service-token"]["name"], "ci-2");
    assert_eq!(json["service-token"]["description"], "nightly build");
    assert!(
        json["service-token"]["updatedAt"].as_i64() > json["service-token"]["createdAt"].as_i64()
            || json["service-token"]["updatedAt"] == json["service-token"]["createdAt"]
    );

    let never = terminal
        .sts(&[
            "service-token",
            "update",
            &id,
            "--no-expiration",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert!(never["service-token"].get("expiration").is_none());

    let disabled = terminal.sts(&["service-token", "disable", &id]).await.ok();
    assert_eq!(
        disabled.stdout.trim(),
        format!("Service token disabled: {id}")
    );
    assert_eq!(
        app.validate(&secret).await.reason(),
        InvalidReason::Disabled
    );
    let listed = terminal
        .sts(&["service-token", "list", "--disabled", "-o", "json"])
        .await
        .ok()
        .json();
    let ids: Vec<u64> = listed["service-tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [created.id]);
    terminal.sts(&["service-token", "enable", &id]).await.ok();
    assert!(app.validate(&secret).await.valid);

    // Rotate prints the new secret as create does; the old one works for the grace.
    let rotated = terminal
        .sts(&[
            "service-token",
            "rotate",
            &id,
            "--grace",
            "24h",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let token = &rotated["service-token"];
    assert_eq!(token["id"], created.id);
    assert_eq!(token["name"], "ci-2");
    let new = token["token"].as_str().unwrap();
    assert!(app.validate(new).await.valid);
    assert!(app.validate(&secret).await.previous_secret);
    let text = terminal.sts(&["service-token", "rotate", &id]).await.ok();
    let newest = text
        .stdout
        .trim()
        .strip_prefix("Service token rotated: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert!(app.validate(newest).await.valid);
    // No grace given: an hour, so running clients switch without an outage.
    assert!(app.validate(new).await.previous_secret, "the default grace");
    let ended = terminal
        .sts(&["service-token", "rotate", &id, "--grace", "0s"])
        .await
        .ok();
    assert!(ended.stdout.starts_with("Service token rotated: "));
    assert_eq!(app.validate(newest).await.reason(), InvalidReason::NotFound);

    // Mistakes are refused, naming the problem.
    let nothing = terminal.sts(&["service-token", "update", &id]).await;
    assert_ne!(nothing.code, 0);
    assert!(
        nothing.stderr.contains("nothing to change"),
        "{}",
        nothing.stderr
    );
    let bad_label = terminal
        .sts(&["service-token", "update", &id, "--label", "novalue"])
        .await;
    assert!(
        bad_label.stderr.contains("key=value"),
        "{}",
        bad_label.stderr
    );
    let missing = terminal.sts(&["service-token", "describe", "1"]).await;
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    // A server's refusal reads as one line naming the flag that was typed.
    let no_policy = terminal
        .sts(&["service-token", "list", "--over-policy"])
        .await;
    assert_ne!(no_policy.code, 0);
    let said = no_policy.stderr.trim();
    assert!(
        said.contains("--over-policy: this server has no maximum"),
        "{said}"
    );
    for jargon in [
        "the server answered",
        "InvalidArgument",
        "invalid argument",
        "over_policy",
    ] {
        assert!(!said.contains(jargon), "{said}");
    }
    assert_eq!(said.lines().count(), 1, "{said}");
}

/// The sorted names `sts` lists with `args`.
pub async fn names(terminal: &Terminal, args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let listed = terminal.sts(&args).await.ok().json();
    let mut names: Vec<String> = listed["service-tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_list_keeps_stackstate_s_columns_and_widens_on_request() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let (used, _) = app.create("ci-used", &["reader"]).await;
    app.create("ci-idle", &["reader"]).await;
    app.create("ops", &["admin-ish"]).await;
    assert!(app.validate(&used).await.valid);

    let plain = terminal.sts(&["service-token", "list"]).await.ok();
    let header = plain.stdout.lines().next().unwrap();
    assert_eq!(header, "ID               | NAME       | EXPIRATION | ROLES");

    let wide = terminal
        .sts(&["service-token", "list", "--wide"])
        .await
        .ok();
    let header = wide.stdout.lines().next().unwrap();
    let columns: Vec<&str> = header.split('|').map(str::trim).collect();
    assert_eq!(
        columns,
        [
            "ID",
            "NAME",
            "EXPIRATION",
            "ROLES",
            "STATUS",
            "LAST USED",
            "CREATED BY",
            "DESCRIPTION",
            "BOUND"
        ]
    );
    assert!(
        wide.stdout
            .lines()
            .any(|l| l.contains("ci-idle") && l.contains("| active ") && l.contains("| never ")),
        "{}",
        wide.stdout
    );

    assert_eq!(
        names(
            &terminal,
            &["service-token", "list", "--name-prefix", "ci-"]
        )
        .await,
        ["ci-idle", "ci-used"]
    );
    assert_eq!(
        names(&terminal, &["service-token", "list", "--role", "admin-ish"]).await,
        ["ops"]
    );
    // Never used counts from creation: made seconds ago, they have not
    // been unused for 90 days; they have been for no time at all.
    let list = [
        "service-token",
        "list",
        "--name-prefix",
        "ci-",
        "--unused-for",
    ];
    assert!(
        names(&terminal, &[&list[..], &["90d"]].concat())
            .await
            .is_empty()
    );
    assert_eq!(
        names(&terminal, &[&list[..], &["0s"]].concat()).await,
        ["ci-idle", "ci-used"]
    );
    assert!(
        names(
            &terminal,
            &["service-token", "list", "--expiring-within", "30d"]
        )
        .await
        .is_empty()
    );
    let bad = terminal
        .sts(&["service-token", "list", "--unused-for", "soon"])
        .await;
    assert_ne!(bad.code, 0);
}

#[tokio::test]
async fn a_rotation_the_lifetime_policy_refuses_says_how_to_fix_it() {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };
    use sts::{
        config::{LifetimePolicy, ServiceConfig},
        model::NewToken,
        store::{Store, sled::SledStore},
        token::Secret,
    };
    // A token from before the policy (never expires), on a server that
    // now allows 90 days at most.
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(data_dir.path()).unwrap());
    let legacy = NewToken::parse("legacy", &["r"], None).unwrap();
    let legacy = store
        .insert(Secret::generate().hash(), &legacy, SystemTime::now(), None)
        .await
        .unwrap();
    let service = ServiceConfig {
        lifetime: LifetimePolicy::new(Some(Duration::from_secs(90 * 86_400)), None).unwrap(),
        ..ServiceConfig::default()
    };
    let app = crate::support::spawn_app_on_with(data_dir, store, service).await;
    let terminal = Terminal::logged_in(&app).await;
    let id = legacy.id.get().to_string();
    let refused = terminal.sts(&["service-token", "rotate", &id]).await;
    assert_ne!(refused.code, 0);
    let said = refused.stderr.trim();
    assert!(
        said.contains(&format!("sts service-token update {id} --expiration")),
        "{said}"
    );
    assert!(said.contains("90d"), "{said}");
}

#[tokio::test]
async fn rotating_the_token_the_context_uses_moves_the_context_to_the_new_secret() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let admin_id = app.admin_id().await.to_string();
    let (_, other) = app.create("other", &["r"]).await;
    let rotated = terminal
        .sts(&["service-token", "rotate", &admin_id])
        .await
        .ok();
    assert!(
        rotated.stderr.contains("now uses the new secret"),
        "{}",
        rotated.stderr
    );
    // A rotated-out secret cannot manage: this works only because the
    // context holds the new one.
    terminal.sts(&["service-token", "list"]).await.ok();
    // Rotating another token leaves the context alone.
    let again = terminal
        .sts(&["service-token", "rotate", &other.id.to_string()])
        .await
        .ok();
    assert!(again.stderr.is_empty(), "{}", again.stderr);
}

#[tokio::test]
async fn bindings_are_given_shown_listed_and_cleared_from_the_terminal() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let created = terminal
        .sts(&[
            "service-token",
            "create",
            "--name",
            "ci",
            "--roles",
            "deployer",
            "--allow-source",
            "10.0.0.0/8,2001:db8::/32",
            "--allow-source",
            "192.0.2.7",
            "--audience",
            "https://ci.example",
            "--allow-route",
            "GET,head /api/v1/*",
            "--allow-route",
            "/hooks/**",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let id = created["service-token"]["id"].to_string();
    let described = terminal.sts(&["service-token", "describe", &id]).await.ok();
    for row in [
        "ALLOWED SOURCES           | 10.0.0.0/8, 2001:db8::/32, 192.0.2.7",
        "AUDIENCES                 | https://ci.example",
        "ALLOWED ROUTES            | GET,HEAD /api/v1/*, /hooks/**",
        "RECENT SOURCES            | ",
    ] {
        assert!(
            described
                .stdout
                .lines()
                .any(|l| l.trim_end() == row.trim_end()),
            "{row:?} not in\n{}",
            described.stdout
        );
    }
    let json = terminal
        .sts(&["service-token", "describe", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        json["service-token"]["allowedRoutes"],
        serde_json::json!([
            {"methods": ["GET", "HEAD"], "path": "/api/v1/*"},
            {"path": "/hooks/**"},
        ])
    );
    app.create("plain", &["deployer"]).await;
    let wide = terminal
        .sts(&["service-token", "list", "--wide"])
        .await
        .ok();
    let bound_of = |name: &str| {
        let line = wide
            .stdout
            .lines()
            .find(|l| l.contains(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("{name} not in\n{}", wide.stdout));
        line.rsplit('|').next().unwrap().trim().to_owned()
    };
    assert_eq!(bound_of("ci"), "source,audience,route");
    assert_eq!(bound_of("plain"), "-");

    // A new list replaces the old; --clear-... removes one.
    terminal
        .sts(&[
            "service-token",
            "update",
            &id,
            "--allow-source",
            "::1",
            "--clear-audiences",
            "--clear-allowed-routes",
        ])
        .await
        .ok();
    let json = terminal
        .sts(&["service-token", "describe", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        json["service-token"]["allowedSources"],
        serde_json::json!(["::1"])
    );
    assert!(json["service-token"].get("audiences").is_none(), "{json}");
    assert!(
        json["service-token"].get("allowedRoutes").is_none(),
        "{json}"
    );

    // What the server refuses is refused before anything changes.
    for (flag, value, named) in [
        ("--allow-source", "10.0.0.0/33", "allowed_sources"),
        ("--allow-route", "GET api/v1", "--allow-route"),
        ("--allow-route", "GET", "--allow-route"),
    ] {
        let refused = terminal
            .sts(&["service-token", "update", &id, flag, value])
            .await;
        assert_ne!(refused.code, 0, "{flag} {value}");
        assert!(
            refused.stderr.contains(named),
            "{flag} {value}: {}",
            refused.stderr
        );
    }
    let after = terminal
        .sts(&["service-token", "describe", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(after, json);
}

#[tokio::test]
async fn rate_limits_are_given_shown_replaced_and_cleared_from_the_terminal() {
    let app = spawn_app().await;
    let terminal = Terminal::logged_in(&app).await;
    let created = terminal
        .sts(&[
            "service-token",
            "create",
            "--name",
            "ci",
            "--roles",
            "deployer",
            "--rate-limit",
            "burst=20/1s",
            "--rate-limit",
            "daily=100000/1d",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let id = created["service-token"]["id"].to_string();
    let described = terminal.sts(&["service-token", "describe", &id]).await.ok();
    let row = "RATE LIMITS               | burst=20/1s, daily=100000/1d";
    assert!(
        described.stdout.lines().any(|l| l.trim_end() == row),
        "{row:?} not in\n{}",
        described.stdout
    );
    let json = |id: String| {
        let terminal = &terminal;
        async move {
            terminal
                .sts(&["service-token", "describe", &id, "-o", "json"])
                .await
                .ok()
                .json()
        }
    };
    assert_eq!(
        json(id.clone()).await["service-token"]["rateLimits"],
        serde_json::json!([
            {"name": "burst", "limit": 20, "periodSeconds": 1},
            {"name": "daily", "limit": 100000, "periodSeconds": 86400},
        ])
    );
    terminal
        .sts(&["service-token", "update", &id, "--rate-limit", "m=5/90s"])
        .await
        .ok();
    assert_eq!(
        json(id.clone()).await["service-token"]["rateLimits"],
        serde_json::json!([{"name": "m", "limit": 5, "periodSeconds": 90}])
    );
    let before = json(id.clone()).await;
    for (value, named) in [
        ("m=5", "--rate-limit"),
        ("m=5/1w", "--rate-limit"),
        ("m=0/1s", "--rate-limit: limit m: the number must be from 1"),
        ("m=5/25h", "--rate-limit: limit m: the period must be"),
    ] {
        let refused = terminal
            .sts(&["service-token", "update", &id, "--rate-limit", value])
            .await;
        assert_ne!(refused.code, 0, "{value}");
        assert!(
            refused.stderr.contains(named),
            "{value}: {}",
            refused.stderr
        );
    }
    assert_eq!(json(id.clone()).await, before);
    terminal
        .sts(&["service-token", "update", &id, "--clear-rate-limits"])
        .await
        .ok();
    let cleared = json(id.clone()).await;
    assert!(
        cleared["service-token"].get("rateLimits").is_none(),
        "{cleared}"
    );
    let none = terminal
        .sts(&[
            "service-token",
            "create",
            "--name",
            "batch",
            "--roles",
            "r",
            "--no-rate-limit",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let described = terminal
        .sts(&[
            "service-token",
            "describe",
            &none["service-token"]["id"].to_string(),
        ])
        .await
        .ok();
    assert!(
        described
            .stdout
            .lines()
            .any(|l| l.trim_end() == "RATE LIMITS               | none"),
        "{}",
        described.stdout
    );
}
