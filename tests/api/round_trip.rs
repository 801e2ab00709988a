//! One token with every field set to a value no default gives, through
//! every way a token is kept or shown: the sled record, the PostgreSQL row,
//! an export read back, an event's body, gRPC, REST and the CLI's JSON. The
//! fixture names every field (no `..`), so a new field fails to compile
//! here until it is set, and a surface that drops it fails the test.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use sts::{
    events::{Actor, Draft},
    model::{
        AllowedRoutes, AllowedSources, Audiences, Bindings, Description, Labels, Owners,
        PreviousSecret, RateLimits, RecentSources, Roles, RouteRule, ServiceToken, StoredToken,
        TokenId, TokenName,
    },
    store::{Imported, PostgresStore, SledStore, Store},
    token::Secret,
};

use crate::support::ReadAnswer;
use crate::{
    support::pg::TestDatabase,
    support::{checked, spawn_app_on},
};

/// Whole seconds from now: every surface keeps them exactly (REST's
/// milliseconds too).
fn at(seconds_from_now: i64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    SystemTime::UNIX_EPOCH + Duration::from_secs((now + seconds_from_now) as u64)
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every field set, none to what a default or a fresh token would hold.
fn every_field() -> StoredToken {
    StoredToken {
        token: ServiceToken {
            id: TokenId::parse(4_503_599_627_370_401).unwrap(),
            name: TokenName::parse("every-field").unwrap(),
            roles: Roles::parse(&["deployer", "reader"]).unwrap(),
            expiration: Some(at(86_400 * 30)),
            created_at: at(-86_400),
            description: Description::parse("a token with every field set").unwrap(),
            labels: Labels::parse([("team", "ci"), ("tier", "1")]).unwrap(),
            disabled: true,
            last_used_at: Some(at(-3_600)),
            created_by: "7 (the-admin)".into(),
            updated_at: at(-7_200),
            previous_secret: Some(PreviousSecret {
                expiration: at(86_400),
                last_used_at: Some(at(-60)),
            }),
            bindings: Bindings {
                sources: AllowedSources::parse(
                    "allowed_sources",
                    &[
                        "10.0.0.0/8",
                        "2001:db8::/32",
                        "::ffff:192.0.2.0/120",
                        "198.51.100.7",
                    ],
                )
                .unwrap(),
                audiences: Audiences::parse("audiences", &["https://ci.example", "deployer"])
                    .unwrap(),
                routes: AllowedRoutes::new(
                    "allowed_routes",
                    vec![
                        RouteRule::parse("allowed_routes", &["get", "HEAD"], "/api/v1/*/items")
                            .unwrap(),
                        RouteRule::parse("allowed_routes", &[] as &[&str], "/hooks/**").unwrap(),
                    ],
                )
                .unwrap(),
            },
            recent_sources: {
                let mut recent = RecentSources::of([
                    ("10.1.2.3".parse().unwrap(), at(-120)),
                    ("2001:db8::5".parse().unwrap(), at(-3_600)),
                ]);
                recent.announce(at(-120));
                recent
            },
            rate_limits: RateLimits::parse_texts("rate_limits", &["burst=20/1s", "hourly=5000/1h"])
                .unwrap(),
            owners: Owners::parse("owners", &[4_503_599_627_370_402, 77]).unwrap(),
            lifetime: Some(Duration::from_micros(86_400 * 31 * 1_000_000 + 7)),
        },
        hash: Secret::generate().hash(),
        previous_hash: Some(Secret::generate().hash()),
        retired: vec![Secret::generate().hash(), Secret::generate().hash()],
    }
}

async fn kept_and_read_back(store: &dyn Store, fixture: &StoredToken) {
    let imported = store.import(std::slice::from_ref(fixture)).await.unwrap();
    assert_eq!(imported, [Imported::Added]);
    let read = store.get(fixture.token.id).await.unwrap().unwrap();
    assert_eq!(&read, fixture);
    let by_previous = store
        .find_by_hash(fixture.previous_hash.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&by_previous, fixture);
    // A retired secret finds its token too (what reuse detection needs).
    let by_retired = store
        .find_by_hash(&fixture.retired[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&by_retired, fixture);
}

/// `json` shows every field of `token` as the REST API names them (the CLI
/// uses the same names).
fn shows_every_field(json: &Value, token: &ServiceToken) {
    let ServiceToken {
        id,
        name,
        roles,
        expiration,
        created_at,
        description,
        labels,
        disabled,
        last_used_at,
        created_by,
        updated_at,
        previous_secret,
        bindings,
        recent_sources,
        rate_limits,
        owners,
        // gRPC's and `describe`'s table only.
        lifetime: _,
    } = token;
    assert_eq!(json["ownerId"], owners.direct().unwrap().get());
    let previous = previous_secret.unwrap();
    assert_eq!(rate_limits.as_slice().len(), 2);
    assert_eq!(
        json["rateLimits"],
        serde_json::json!([
            {"name": "burst", "limit": 20, "periodSeconds": 1},
            {"name": "hourly", "limit": 5000, "periodSeconds": 3600},
        ])
    );
    assert_eq!(
        json["allowedSources"],
        serde_json::json!(bindings.sources.texts())
    );
    assert_eq!(
        json["allowedSources"],
        serde_json::json!([
            "10.0.0.0/8",
            "2001:db8::/32",
            "192.0.2.0/24",
            "198.51.100.7"
        ])
    );
    assert_eq!(
        json["audiences"],
        serde_json::json!(bindings.audiences.as_slice())
    );
    assert_eq!(
        json["allowedRoutes"],
        serde_json::json!([
            {"methods": ["GET", "HEAD"], "path": "/api/v1/*/items"},
            {"path": "/hooks/**"},
        ])
    );
    let recent: Vec<Value> = recent_sources
        .iter()
        .map(|(address, seen)| {
            serde_json::json!({"address": address.to_string(), "lastSeenAt": millis(seen)})
        })
        .collect();
    assert_eq!(recent.len(), 2);
    assert_eq!(json["recentSources"], serde_json::json!(recent));
    assert_eq!(json["id"], id.get(), "{json}");
    assert_eq!(json["name"], name.as_str());
    assert_eq!(json["roles"], serde_json::json!(["deployer", "reader"]));
    assert_eq!(roles.iter().count(), 2);
    assert_eq!(json["expiration"], millis(expiration.unwrap()));
    assert_eq!(json["createdAt"], millis(*created_at));
    assert_eq!(json["description"], description.as_str());
    assert_eq!(json["labels"], serde_json::json!(labels.as_map()));
    assert_eq!(json["disabled"], *disabled);
    assert_eq!(json["lastUsedAt"], millis(last_used_at.unwrap()));
    assert_eq!(json["createdBy"], created_by.as_str());
    assert_eq!(json["updatedAt"], millis(*updated_at));
    assert_eq!(
        json["previousSecretExpiration"],
        millis(previous.expiration)
    );
    assert_eq!(
        json["previousSecretLastUsedAt"],
        millis(previous.last_used_at.unwrap())
    );
    assert_eq!(json["etag"], sts::model::Etag::of(token).to_string());
}

#[tokio::test]
async fn a_token_with_every_field_set_survives_every_round_trip() {
    let fixture = every_field();

    // sled, and an export of it read back into another sled store.
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    kept_and_read_back(&sled, &fixture).await;
    let mut exported = Vec::new();
    sts::export::export(&sled, &mut exported).await.unwrap();
    let again = tempfile::tempdir().unwrap();
    let other = SledStore::open(again.path()).unwrap();
    let summary = sts::export::import(&other, exported.as_slice())
        .await
        .unwrap();
    assert_eq!(summary.added, 1, "{summary:?}");
    assert_eq!(other.get(fixture.token.id).await.unwrap().unwrap(), fixture);
    drop(other);

    // PostgreSQL.
    if let Some(database) = TestDatabase::create("round_trip").await {
        let url = sts::config::StoreUrl::parse(&database.url).unwrap();
        let postgres = PostgresStore::connect(&url).await.unwrap();
        kept_and_read_back(&postgres, &fixture).await;
        drop(postgres);
        database.drop().await;
    }

    // An event's body.
    let admin = every_field().token;
    let event = Draft::edited(Actor::of(&admin), at(0)).event(&fixture.token, &fixture.token);
    let body: Value = serde_json::from_slice(&event.body).unwrap();
    let token = &body["token"];
    let rfc3339 = sts::clock::rfc3339;
    let ServiceToken {
        id,
        name,
        roles: _,
        expiration,
        created_at,
        description,
        labels,
        disabled,
        last_used_at,
        created_by,
        updated_at,
        previous_secret,
        bindings,
        // Usage: `token.new_source` events carry them, not every event.
        recent_sources: _,
        rate_limits,
        owners,
        // How the token renews itself: not in events.
        lifetime: _,
    } = &fixture.token;
    assert_eq!(token["owner_id"], owners.direct().unwrap().get());
    assert_eq!(rate_limits.as_slice().len(), 2);
    assert_eq!(
        token["rate_limits"],
        serde_json::json!([
            {"name": "burst", "limit": 20, "period_secs": 1},
            {"name": "hourly", "limit": 5000, "period_secs": 3600},
        ])
    );
    assert_eq!(
        token["allowed_sources"],
        serde_json::json!(bindings.sources.texts())
    );
    assert_eq!(
        token["audiences"],
        serde_json::json!(bindings.audiences.as_slice())
    );
    assert_eq!(
        token["allowed_routes"],
        serde_json::json!([
            {"methods": ["GET", "HEAD"], "path": "/api/v1/*/items"},
            {"path": "/hooks/**"},
        ])
    );
    assert!(token.get("recent_sources").is_none(), "{token}");
    assert_eq!(token["id"], id.get(), "{token}");
    assert_eq!(token["name"], name.as_str());
    assert_eq!(token["roles"], serde_json::json!(["deployer", "reader"]));
    assert_eq!(token["expiration"], rfc3339(expiration.unwrap()));
    assert_eq!(token["created_at"], rfc3339(*created_at));
    assert_eq!(token["description"], description.as_str());
    assert_eq!(token["labels"], serde_json::json!(labels.as_map()));
    assert_eq!(token["disabled"], *disabled);
    assert_eq!(token["last_used_at"], rfc3339(last_used_at.unwrap()));
    assert_eq!(token["created_by"], created_by.as_str());
    assert_eq!(token["updated_at"], rfc3339(*updated_at));
    assert_eq!(
        token["previous_secret_expiration"],
        rfc3339(previous_secret.unwrap().expiration)
    );

    // gRPC, REST and the CLI, from a server over the sled store.
    drop(sled);
    let sled = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
    let app = spawn_app_on(dir, sled).await;
    let id = fixture.token.id.get();
    let got = app.get(id).await.unwrap();
    let expected = sts::proto::ServiceToken::from(fixture.token.clone());
    assert_eq!(got, expected, "gRPC shows every field");
    assert_eq!(checked(got).etag, "");
    let rest: Value = reqwest::Client::new()
        .get(app.rest().url(&format!("/api/security/tokens/{id}")))
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    shows_every_field(&rest, &fixture.token);
    let terminal = crate::cli::Terminal::new();
    terminal.log_in(&app).await;
    let described = terminal
        .sts(&["service-token", "describe", &id.to_string(), "-o", "json"])
        .await
        .ok();
    let cli: Value = serde_json::from_str(&described.stdout).unwrap();
    shows_every_field(&cli["service-token"], &fixture.token);
}
