//! Delegated administration over gRPC and REST: a manager token makes and
//! manages tokens within its own rights (roles, expiration, bindings,
//! limits), sees only its own, keeps them through a deleted manager in the
//! middle, loses them with a role, and is counted as a manager.

use sts::{
    config::ServiceConfig,
    proto::{
        CreateRequest, CreateResponse, DeleteRequest, GetRequest, GetUsageRequest, ListRequest,
        RotateRequest, ServiceToken, UpdateRequest,
    },
};
use tonic::{Code, Status};

use crate::support::{
    ReadAnswer, TestApp, assert_code, create_request, rate_limit, server_config, spawn_app_with,
    with_key,
};

const MANAGER: &str = "token-manager";

fn delegating(may_delegate: bool) -> ServiceConfig {
    ServiceConfig {
        managers_may_delegate: may_delegate,
        ..ServiceConfig::default()
    }
}

async fn app(may_delegate: bool) -> TestApp {
    spawn_app_with(delegating(may_delegate), server_config()).await
}

async fn create_as(
    app: &TestApp,
    key: &str,
    request: CreateRequest,
) -> Result<CreateResponse, Status> {
    let answer = app.client.clone().create(with_key(key, request)).await;
    answer.map(|r| r.into_inner())
}

async fn get_as(app: &TestApp, key: &str, id: u64) -> Result<ServiceToken, Status> {
    let answer = app
        .client
        .clone()
        .get(with_key(key, GetRequest { id }))
        .await;
    answer.map(|r| r.into_inner().service_token.unwrap())
}

async fn update_as(
    app: &TestApp,
    key: &str,
    token: ServiceToken,
    paths: &[&str],
) -> Result<ServiceToken, Status> {
    let request = UpdateRequest {
        service_token: Some(token),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let answer = app.client.clone().update(with_key(key, request)).await;
    answer.map(|r| r.into_inner().service_token.unwrap())
}

async fn list_as(app: &TestApp, key: &str, owner_id: u64) -> Vec<u64> {
    let request = ListRequest {
        page_size: 1000,
        owner_id,
        ..ListRequest::default()
    };
    let answer = app
        .client
        .clone()
        .list(with_key(key, request))
        .await
        .unwrap();
    let mut ids: Vec<u64> = answer
        .into_inner()
        .service_tokens
        .iter()
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// A manager made by the admin with `roles` besides the manager role.
async fn manager(app: &TestApp, name: &str, roles: &[&str]) -> CreateResponse {
    let mut all = vec![MANAGER];
    all.extend_from_slice(roles);
    let (token, service_token) = app.create(name, &all).await;
    CreateResponse {
        token,
        service_token: Some(service_token),
    }
}

fn id(created: &CreateResponse) -> u64 {
    created.service_token.as_ref().unwrap().id
}

fn denied_naming(result: Result<impl std::fmt::Debug, Status>, named: &str) {
    let status = assert_code(result, Code::PermissionDenied);
    assert!(
        status.message().contains(named),
        "{named} not named: {}",
        status.message()
    );
}

#[tokio::test]
async fn a_manager_makes_tokens_with_its_own_roles_only_and_never_the_admin_or_manager_role() {
    let (_guard, logs) = crate::support::logs::capture_logs();
    let app = app(false).await;
    let team = manager(&app, "team-ci", &["deploy", "read"]).await;
    let made = create_as(&app, &team.token, create_request("ci-job", &["deploy"]))
        .await
        .unwrap();
    let job = made.service_token.unwrap();
    assert_eq!(job.owner_id, id(&team));
    assert_eq!(job.created_by, format!("{} (team-ci)", id(&team)));
    assert!(app.validate(&made.token).await.valid);
    // The audit names the acting manager.
    let created: Vec<_> = logs
        .target(sts::service::AUDIT)
        .into_iter()
        .filter(|e| e["fields"]["rpc"] == "Create" && e["fields"]["token.id"] == job.id)
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["fields"]["caller.id"], id(&team));

    denied_naming(
        create_as(&app, &team.token, create_request("x", &["deploy", "prod"])).await,
        "`prod`",
    );
    denied_naming(
        create_as(
            &app,
            &team.token,
            create_request("x", &["stackstate-admin"]),
        )
        .await,
        "`stackstate-admin`",
    );
    denied_naming(
        create_as(&app, &team.token, create_request("x", &[MANAGER])).await,
        "--managers-may-delegate",
    );
    // Nothing was made by the refusals.
    assert_eq!(list_as(&app, &team.token, 0).await, [job.id]);

    // A token without the manager role manages nothing.
    let plain = create_as(&app, &app.admin_token, create_request("plain", &["read"]))
        .await
        .unwrap();
    let refused = create_as(&app, &plain.token, create_request("x", &["read"])).await;
    assert_code(refused, Code::PermissionDenied);

    // Counted by caller kind.
    let metrics = app.metrics_text().await;
    for line in [
        r#"sts_management_calls_total{rpc="Create",status="OK",caller="manager",transport="grpc"} 1"#,
        r#"sts_management_calls_total{rpc="Create",status="PERMISSION_DENIED",caller="manager",transport="grpc"} 3"#,
        r#"sts_management_calls_total{rpc="Create",status="PERMISSION_DENIED",caller="none",transport="grpc"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_managers_tokens_expire_with_it_and_are_bound_and_limited_within_it() {
    let app = app(false).await;
    let in_days = |days: i64| prost_types::Timestamp {
        seconds: app.clock.now_millis() / 1000 + days * 86_400,
        nanos: 0,
    };
    let team = create_as(
        &app,
        &app.admin_token,
        CreateRequest {
            expiration: Some(in_days(30)),
            allowed_sources: vec!["127.0.0.0/8".into()],
            rate_limits: vec![rate_limit("team", 600, 60)],
            ..create_request("team", &[MANAGER, "deploy"])
        },
    )
    .await
    .unwrap();
    // Unasked, a token gets the manager's expiration and limits.
    let job = create_as(
        &app,
        &team.token,
        CreateRequest {
            allowed_sources: vec!["127.0.0.1".into()],
            ..create_request("job", &["deploy"])
        },
    )
    .await
    .unwrap()
    .service_token
    .unwrap();
    assert_eq!(
        job.expiration,
        team.service_token.as_ref().unwrap().expiration
    );
    assert_eq!(job.rate_limits, [rate_limit("team", 600, 60)]);

    let later = CreateRequest {
        expiration: Some(in_days(31)),
        allowed_sources: vec!["127.0.0.1".into()],
        ..create_request("later", &["deploy"])
    };
    denied_naming(create_as(&app, &team.token, later).await, "expiration");
    let anywhere = CreateRequest {
        expiration: Some(in_days(1)),
        ..create_request("anywhere", &["deploy"])
    };
    denied_naming(
        create_as(&app, &team.token, anywhere).await,
        "allowed_sources",
    );
    let unlimited = CreateRequest {
        expiration: Some(in_days(1)),
        allowed_sources: vec!["127.0.0.1".into()],
        no_rate_limits: true,
        ..create_request("unlimited", &["deploy"])
    };
    denied_naming(create_as(&app, &team.token, unlimited).await, "rate_limits");

    // A change never lifts the expiration past the manager's, nor loosens
    // a limit; narrowing is fine.
    let mut lifted = job.clone();
    lifted.expiration = Some(in_days(40));
    denied_naming(
        update_as(&app, &team.token, lifted, &["expiration"]).await,
        "expiration",
    );
    let mut looser = job.clone();
    looser.rate_limits = vec![rate_limit("team", 6000, 60)];
    denied_naming(
        update_as(&app, &team.token, looser, &["rate_limits"]).await,
        "rate_limits",
    );
    let mut wider = job.clone();
    wider.allowed_sources = vec!["0.0.0.0/0".into()];
    denied_naming(
        update_as(&app, &team.token, wider, &["allowed_sources"]).await,
        "allowed_sources",
    );
    let mut narrower = job.clone();
    narrower.expiration = Some(in_days(7));
    narrower.rate_limits = vec![rate_limit("team", 60, 60)];
    let narrowed = update_as(&app, &team.token, narrower, &["expiration", "rate_limits"])
        .await
        .unwrap();
    assert_eq!(narrowed.expiration, Some(in_days(7)));
    // Nor may a manager move a token to another owner.
    let mut moved = job.clone();
    moved.owner_id = 0;
    denied_naming(
        update_as(&app, &team.token, moved, &["owner_id"]).await,
        "owner_id",
    );
}

#[tokio::test]
async fn a_manager_sees_and_manages_only_its_own_tokens() {
    let app = app(false).await;
    let team = manager(&app, "team", &["deploy"]).await;
    let other = manager(&app, "other", &["deploy"]).await;
    let mine = create_as(&app, &team.token, create_request("mine", &["deploy"]))
        .await
        .unwrap();
    let theirs = create_as(&app, &other.token, create_request("theirs", &["deploy"]))
        .await
        .unwrap();
    let (mine_id, theirs_id) = (id(&mine), id(&theirs));

    assert_eq!(list_as(&app, &team.token, 0).await, [mine_id]);
    assert_eq!(
        get_as(&app, &team.token, mine_id).await.unwrap().name,
        "mine"
    );
    // Another team's token, its own token and the admin's are as unknown.
    for stranger in [theirs_id, id(&team), id(&other)] {
        assert_code(get_as(&app, &team.token, stranger).await, Code::NotFound);
    }
    let mut renamed = get_as(&app, &app.admin_token, theirs_id).await.unwrap();
    renamed.name = "hijacked".into();
    assert_code(
        update_as(&app, &team.token, renamed, &["name"]).await,
        Code::NotFound,
    );
    let delete = |id| {
        with_key(
            &team.token,
            DeleteRequest {
                id,
                ..Default::default()
            },
        )
    };
    assert_code(
        app.client.clone().delete(delete(theirs_id)).await,
        Code::NotFound,
    );
    let usage = with_key(
        &team.token,
        GetUsageRequest {
            id: theirs_id,
            days: 1,
        },
    );
    assert_code(app.client.clone().get_usage(usage).await, Code::NotFound);
    assert!(app.validate(&theirs.token).await.valid, "untouched");

    // Its own: used, disabled, enabled, rotated, deleted.
    let usage = with_key(
        &team.token,
        GetUsageRequest {
            id: mine_id,
            days: 1,
        },
    );
    app.client.clone().get_usage(usage).await.unwrap();
    let mut disabled = get_as(&app, &team.token, mine_id).await.unwrap();
    disabled.disabled = true;
    update_as(&app, &team.token, disabled, &["disabled"])
        .await
        .unwrap();
    assert!(!app.validate(&mine.token).await.valid);
    let rotate = with_key(
        &team.token,
        RotateRequest {
            id: mine_id,
            grace_period: None,
        },
    );
    let rotated = app
        .client
        .clone()
        .rotate(rotate)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, mine.token);
    app.client.clone().delete(delete(mine_id)).await.unwrap();
    assert_code(
        get_as(&app, &app.admin_token, mine_id).await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn deleting_a_manager_in_the_middle_leaves_its_tokens_working_and_owned_by_the_one_above() {
    a_manager_deleted_in_the_middle(&app(true).await).await;
}

#[tokio::test]
async fn a_manager_that_loses_a_role_loses_the_tokens_holding_it_and_an_admin_moves_tokens() {
    a_manager_losing_a_role_and_tokens_moved(&app(false).await).await;
}

/// The same, over PostgreSQL: its list filters (the chain, the roles a
/// manager could grant) are SQL of their own.
#[tokio::test]
async fn on_postgres_managers_reach_through_the_chain_and_lose_what_their_roles_no_longer_cover() {
    let Some(database) = crate::support::pg::TestDatabase::create("delegation").await else {
        return;
    };
    let url = sts::config::StoreUrl::parse(&database.url).unwrap();
    let store = sts::store::PostgresStore::connect(&url).await.unwrap();
    let app = crate::support::spawn_app_on_with(
        tempfile::tempdir().unwrap(),
        std::sync::Arc::new(store),
        delegating(true),
    )
    .await;
    a_manager_deleted_in_the_middle(&app).await;
    a_manager_losing_a_role_and_tokens_moved(&app).await;
    app.stop().await;
    database.drop().await;
}

async fn a_manager_deleted_in_the_middle(app: &TestApp) {
    let top = manager(app, "top", &["deploy"]).await;
    let middle = create_as(
        app,
        &top.token,
        create_request("middle", &[MANAGER, "deploy"]),
    )
    .await
    .unwrap();
    let leaf = create_as(app, &middle.token, create_request("leaf", &["deploy"]))
        .await
        .unwrap();
    let (middle_id, leaf_id) = (id(&middle), id(&leaf));
    // The top manager owns both, through the middle one.
    assert_eq!(list_as(app, &top.token, 0).await, {
        let mut both = vec![middle_id, leaf_id];
        both.sort_unstable();
        both
    });
    let delete = with_key(
        &top.token,
        DeleteRequest {
            id: middle_id,
            ..Default::default()
        },
    );
    app.client.clone().delete(delete).await.unwrap();

    assert!(app.validate(&leaf.token).await.valid, "still working");
    let kept = get_as(app, &top.token, leaf_id).await.unwrap();
    assert_eq!(kept.owner_id, middle_id, "its owner stays on record");
    // Admins find the deleted manager's tokens by its id.
    assert_eq!(list_as(app, &app.admin_token, middle_id).await, [leaf_id]);
    assert_eq!(list_as(app, &top.token, 0).await, [leaf_id]);
}

async fn a_manager_losing_a_role_and_tokens_moved(app: &TestApp) {
    let team = manager(app, "team", &["deploy", "read"]).await;
    let deployer = create_as(app, &team.token, create_request("deployer", &["deploy"]))
        .await
        .unwrap();
    let reader = create_as(app, &team.token, create_request("reader", &["read"]))
        .await
        .unwrap();
    let mut narrowed = get_as(app, &app.admin_token, id(&team)).await.unwrap();
    narrowed.roles = vec![MANAGER.into(), "read".into()];
    update_as(app, &app.admin_token, narrowed, &["roles"])
        .await
        .unwrap();
    assert_eq!(list_as(app, &team.token, 0).await, [id(&reader)]);
    assert_code(
        get_as(app, &team.token, id(&deployer)).await,
        Code::NotFound,
    );
    assert!(app.validate(&deployer.token).await.valid, "still working");

    // An admin hands the deployer to another manager, and back to admins.
    let other = manager(app, "other", &["deploy"]).await;
    let mut handed = get_as(app, &app.admin_token, id(&deployer)).await.unwrap();
    handed.owner_id = id(&other);
    let handed = update_as(app, &app.admin_token, handed, &["owner_id"])
        .await
        .unwrap();
    assert_eq!(handed.owner_id, id(&other));
    assert_eq!(list_as(app, &other.token, 0).await, [id(&deployer)]);
    // Not to a token that cannot manage, nor to one it owns.
    let mut bad = handed.clone();
    bad.owner_id = id(&reader);
    let refused = update_as(app, &app.admin_token, bad, &["owner_id"]).await;
    let status = assert_code(refused, Code::InvalidArgument);
    assert!(
        status.message().contains("owner_id"),
        "{}",
        status.message()
    );
    let mut own = get_as(app, &app.admin_token, id(&other)).await.unwrap();
    own.owner_id = id(&other);
    assert_code(
        update_as(app, &app.admin_token, own, &["owner_id"]).await,
        Code::InvalidArgument,
    );
    let mut back = handed.clone();
    back.owner_id = 0;
    let back = update_as(app, &app.admin_token, back, &["owner_id"])
        .await
        .unwrap();
    assert_eq!(back.owner_id, 0);
    assert!(list_as(app, &other.token, 0).await.is_empty());
}

#[tokio::test]
async fn rest_takes_a_managers_calls_the_owner_filter_and_an_admins_new_owner() {
    let app = app(false).await;
    let team = manager(&app, "team", &["deploy"]).await;
    let rest = app.rest();
    let (status, created) = answer(
        rest.post("/api/security/tokens")
            .header("x-api-key", &team.token)
            .body(r#"{"name": "job", "roles": ["deploy"]}"#),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let job = created["id"].as_u64().unwrap();
    let path = format!("/api/security/tokens/{job}");
    let shown = rest
        .get(&path)
        .header("x-api-key", &team.token)
        .json_body()
        .await;
    assert_eq!(shown["ownerId"], id(&team));
    let (status, denied) = answer(
        rest.post("/api/security/tokens")
            .header("x-api-key", &team.token)
            .body(r#"{"name": "prod", "roles": ["prod"]}"#),
    )
    .await;
    assert_eq!(status, 403, "{denied}");
    assert!(
        denied["message"].as_str().unwrap().contains("`prod`"),
        "{denied}"
    );

    let owned: serde_json::Value = rest
        .get(&format!("/api/security/tokens?ownerId={}", id(&team)))
        .header("x-api-key", &app.admin_token)
        .json_body()
        .await;
    let ids: Vec<u64> = owned
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [job]);
    let (status, patched) = answer(
        rest.patch(&path)
            .header("x-api-key", &app.admin_token)
            .body(r#"{"ownerId": null}"#),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("ownerId").is_none(), "{patched}");
    let (status, _) = answer(rest.get(&path).header("x-api-key", &team.token)).await;
    assert_eq!(status, 404);
}

/// A request's status and JSON body, whatever the status.
async fn answer(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// docs/delegation.md's walk-through, with the CLI alone: the admin makes
/// the team's manager, the team makes and lists its tokens (a role it
/// lacks refused by name), the admin finds them by owner and takes one
/// back.
#[tokio::test]
async fn delegating_to_a_team_with_the_cli_alone() {
    let app = app(false).await;
    let admin = crate::cli::Terminal::logged_in(&app).await;
    let secret_of = |run: &crate::cli::Run| {
        run.stdout
            .trim()
            .strip_prefix("Service token created: ")
            .unwrap_or_else(|| panic!("{}", run.stdout))
            .to_owned()
    };
    let id_of = |run: &crate::cli::Run| {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("Its id is "))
            .unwrap();
        line.trim_start_matches("Its id is ")
            .trim_end_matches('.')
            .to_owned()
    };
    let made = admin
        .sts(&[
            "service-token",
            "create",
            "--name",
            "team-ci",
            "--roles",
            "token-manager,deploy,read",
        ])
        .await
        .ok();
    let (manager_secret, manager_id) = (secret_of(&made), id_of(&made));

    let team = crate::cli::Terminal::new();
    team.log_in_with(&app, &manager_secret).await;
    let built = team
        .sts(&[
            "service-token",
            "create",
            "--name",
            "nightly-build",
            "--roles",
            "deploy",
        ])
        .await
        .ok();
    let build_id = id_of(&built);
    assert!(app.validate(&secret_of(&built)).await.valid);
    let refused = team
        .sts(&[
            "service-token",
            "create",
            "--name",
            "oops",
            "--roles",
            "deploy,prod",
        ])
        .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("role `prod`: a manager grants only roles it holds"),
        "{}",
        refused.stderr
    );
    let listed = team.sts(&["service-token", "list"]).await.ok();
    assert!(listed.stdout.contains("nightly-build"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("team-ci"), "{}", listed.stdout);

    let owned = admin
        .sts(&["service-token", "list", "--owner", &manager_id])
        .await
        .ok();
    assert!(owned.stdout.contains(&build_id), "{}", owned.stdout);
    let described = admin
        .sts(&["service-token", "describe", &build_id])
        .await
        .ok();
    assert!(
        described
            .stdout
            .lines()
            .any(|l| l.starts_with("OWNER") && l.contains(&manager_id)),
        "{}",
        described.stdout
    );
    admin
        .sts(&["service-token", "update", &build_id, "--owner", "0"])
        .await
        .ok();
    let gone = team.sts(&["service-token", "describe", &build_id]).await;
    assert_ne!(gone.code, 0, "{}", gone.stdout);
}

/// Two real replicas on one PostgreSQL: what a manager makes through one
/// it manages through the other, and a role taken from it on one replica
/// takes its tokens from it on the other within the revocation bound.
#[tokio::test]
async fn a_manager_works_across_two_replicas_and_loses_its_tokens_on_both_with_a_role() {
    use crate::support::process::{ServerProcess, bootstrap_store};
    use sts::proto::token_service_client::TokenServiceClient;
    let Some(database) = crate::support::pg::TestDatabase::create("delegation_replicas").await
    else {
        return;
    };
    let env = [("STS_STORE", database.url.as_str())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_with(dir_a.path(), &env).await;
    let b = ServerProcess::start_with(dir_b.path(), &env).await;
    let admin = bootstrap_store(&database.url).await;
    let client_a = TokenServiceClient::new(crate::support::channel(a.addr).await);
    let client_b = TokenServiceClient::new(crate::support::channel(b.addr).await);
    let create = |client: &TokenServiceClient<tonic::transport::Channel>, key: &str, request| {
        let (mut client, request) = (client.clone(), with_key(key, request));
        async move { client.create(request).await.map(|r| r.into_inner()) }
    };
    let team = create(
        &client_a,
        &admin,
        create_request("team", &[MANAGER, "deploy"]),
    )
    .await
    .unwrap();
    let job = create(&client_b, &team.token, create_request("job", &["deploy"]))
        .await
        .unwrap();
    let job_id = id(&job);
    let get = |client: &TokenServiceClient<tonic::transport::Channel>, key: &str| {
        let (mut client, request) = (client.clone(), with_key(key, GetRequest { id: job_id }));
        async move { client.get(request).await.map(|r| r.into_inner()) }
    };
    assert_eq!(
        get(&client_a, &team.token)
            .await
            .unwrap()
            .service_token
            .unwrap()
            .owner_id,
        id(&team)
    );
    let mut narrowed = team.service_token.clone().unwrap();
    narrowed.roles = vec![MANAGER.into()];
    let update = UpdateRequest {
        service_token: Some(narrowed),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["roles".into()],
        }),
    };
    client_a
        .clone()
        .update(with_key(&admin, update))
        .await
        .unwrap();
    crate::support::eventually("B to take the job from the manager", || async {
        get(&client_b, &team.token)
            .await
            .is_err_and(|status| status.code() == Code::NotFound)
    })
    .await;
    assert!(
        crate::support::validate_on(&client_b, &job.token)
            .await
            .unwrap()
            .valid
    );
    drop((a, b));
    database.drop().await;
}
