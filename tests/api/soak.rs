//! Soak: the real binary under mixed load for a fixed time. Validate at a
//! high rate (gRPC and HTTP forward-auth), Create and Delete at a lower rate
//! (gRPC and REST), List paging (gRPC and REST), all at once. No answer may
//! be an error or contradict what was acknowledged; memory and descriptors
//! must not grow without bound; at the end the store holds exactly what the
//! acknowledged operations say.
//!
//! `STS_SOAK_SECONDS` sets the length (default 10; e.g. 600 for a real soak).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IteratorRandom};
use serde_json::json;
use sts::proto::{
    CreateRequest, DeleteRequest, InvalidReason, ListRequest,
    token_service_client::TokenServiceClient,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::support::Rest;
use crate::{
    support::process::{ServerProcess, bootstrap},
    support::{channel, eventually, list_all, validate_on, with_key},
};

const DEFAULT_SECONDS: u64 = 10;
/// Tokens the writers keep alive: they create below it and delete above.
const LIVE_TARGET: usize = 200;

#[derive(Clone)]
struct Live {
    secret: String,
    roles: Vec<String>,
}

/// What the acknowledged operations say the store holds.
#[derive(Default)]
struct Ledger {
    live: HashMap<u64, Live>,
    /// A delete was sent and not yet answered: either answer is right.
    deleting: HashSet<u64>,
    deleted: HashMap<u64, String>,
}

struct Soak {
    addr: std::net::SocketAddr,
    admin: String,
    ledger: Mutex<Ledger>,
    problems: Mutex<Vec<String>>,
    counts: [AtomicU64; 4],
    until: Instant,
}

const VALIDATES: usize = 0;
const WRITES: usize = 1;
const LIST_PASSES: usize = 2;
const HTTP_CALLS: usize = 3;

impl Soak {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 50 {
            problems.push(what);
        }
    }

    fn count(&self, which: usize) {
        self.counts[which].fetch_add(1, Ordering::Relaxed);
    }

    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    /// A token to check: live (and not being deleted), or one whose delete
    /// was acknowledged. `true` means it must be valid.
    fn pick(&self, rng: &mut StdRng) -> Option<(u64, String, Option<Vec<String>>)> {
        let ledger = self.ledger.lock().unwrap();
        if rng.random_bool(0.2)
            && let Some((id, secret)) = ledger.deleted.iter().choose(rng)
        {
            return Some((*id, secret.clone(), None));
        }
        let (id, live) = ledger
            .live
            .iter()
            .filter(|(id, _)| !ledger.deleting.contains(id))
            .choose(rng)?;
        Some((*id, live.secret.clone(), Some(live.roles.clone())))
    }

    /// Judges an answer about token `id`: `valid` with `roles`, or not.
    fn judge(&self, id: u64, expected: &Option<Vec<String>>, valid: bool, roles: &[String]) {
        match (expected, valid) {
            (Some(expected), true) if roles != expected.as_slice() => {
                self.problem(format!(
                    "token {id} validated with roles {roles:?}, not {expected:?}"
                ));
            }
            (Some(_), true) | (None, false) => {}
            (Some(_), false) => {
                // Only a delete that started meanwhile may explain it.
                let ledger = self.ledger.lock().unwrap();
                if !ledger.deleting.contains(&id) && !ledger.deleted.contains_key(&id) {
                    self.problem(format!("live token {id} was refused"));
                }
            }
            (None, true) => self.problem(format!("deleted token {id} validated")),
        }
    }
}

async fn grpc_validator(soak: Arc<Soak>, client: TokenServiceClient<Channel>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while soak.running() {
        let Some((id, secret, expected)) = soak.pick(&mut rng) else {
            tokio::task::yield_now().await;
            continue;
        };
        match validate_on(&client, &secret).await {
            Ok(answer) => {
                if !answer.valid && answer.reason() != InvalidReason::NotFound {
                    soak.problem(format!("token {id}: invalid for {:?}", answer.reason()));
                }
                let roles = answer.service_token.map(|t| t.roles).unwrap_or_default();
                soak.judge(id, &expected, answer.valid, &roles);
            }
            Err(status) => soak.problem(format!("Validate: {status:?}")),
        }
        soak.count(VALIDATES);
    }
}

async fn http_validator(soak: Arc<Soak>, http: reqwest::Client, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let url = Rest::at(soak.addr).url("/api/auth");
    while soak.running() {
        let Some((id, secret, expected)) = soak.pick(&mut rng) else {
            tokio::task::yield_now().await;
            continue;
        };
        let header = if rng.random_bool(0.5) {
            ("authorization", format!("ApiKey {secret}"))
        } else {
            ("x-api-key", secret)
        };
        match http.get(&url).header(header.0, header.1).send().await {
            Ok(answer) if answer.status() == 200 || answer.status() == 401 => {
                let valid = answer.status() == 200;
                let roles = answer
                    .headers()
                    .get("x-service-token-roles")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default();
                soak.judge(id, &expected, valid, &roles);
            }
            Ok(answer) => soak.problem(format!("forward-auth answered {}", answer.status())),
            Err(e) => soak.problem(format!("forward-auth: {e:?}")),
        }
        soak.count(VALIDATES);
        soak.count(HTTP_CALLS);
    }
}

/// Creates below the target, deletes above it; gRPC and REST in turn.
async fn writer(
    soak: Arc<Soak>,
    client: TokenServiceClient<Channel>,
    http: reqwest::Client,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while soak.running() {
        pace.tick().await;
        n += 1;
        let over = soak.ledger.lock().unwrap().live.len() >= LIVE_TARGET;
        if over || rng.random_bool(0.3) {
            delete_one(&soak, &client, &http, &mut rng, n.is_multiple_of(2)).await;
        } else {
            create_one(&soak, &client, &http, seed, n, n.is_multiple_of(2)).await;
        }
        soak.count(WRITES);
    }
}

async fn create_one(
    soak: &Soak,
    client: &TokenServiceClient<Channel>,
    http: &reqwest::Client,
    seed: u64,
    n: u64,
    over_grpc: bool,
) {
    let name = format!("soak-{seed}-{n}");
    let roles = vec![format!("role-{}", n % 7), "reader".to_owned()];
    let created = if over_grpc {
        let request = CreateRequest {
            name,
            roles: roles.clone(),
            expiration: None,
            ..Default::default()
        };
        match client.clone().create(with_key(&soak.admin, request)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                Some((answer.service_token.unwrap().id, answer.token))
            }
            Err(status) => {
                soak.problem(format!("Create: {status:?}"));
                None
            }
        }
    } else {
        let answer = http
            .post(Rest::at(soak.addr).url("/api/security/tokens"))
            .header("x-api-key", &soak.admin)
            .json(&json!({ "name": name, "roles": roles }))
            .send()
            .await;
        soak.count(HTTP_CALLS);
        match answer {
            Ok(answer) if answer.status().is_success() => {
                let body: serde_json::Value = answer.json().await.unwrap();
                Some((
                    body["id"].as_u64().unwrap(),
                    body["token"].as_str().unwrap().to_owned(),
                ))
            }
            Ok(answer) => {
                soak.problem(format!("REST create answered {}", answer.status()));
                None
            }
            Err(e) => {
                soak.problem(format!("REST create: {e:?}"));
                None
            }
        }
    };
    if let Some((id, secret)) = created {
        soak.ledger
            .lock()
            .unwrap()
            .live
            .insert(id, Live { secret, roles });
    }
}

async fn delete_one(
    soak: &Soak,
    client: &TokenServiceClient<Channel>,
    http: &reqwest::Client,
    rng: &mut StdRng,
    over_grpc: bool,
) {
    let id = {
        let mut ledger = soak.ledger.lock().unwrap();
        let Some(id) = ledger
            .live
            .keys()
            .filter(|id| !ledger.deleting.contains(id))
            .copied()
            .choose(rng)
        else {
            return;
        };
        ledger.deleting.insert(id);
        id
    };
    let acknowledged = if over_grpc {
        match client
            .clone()
            .delete(with_key(
                &soak.admin,
                DeleteRequest {
                    id,
                    ..Default::default()
                },
            ))
            .await
        {
            Ok(_) => true,
            Err(status) => {
                soak.problem(format!("Delete {id}: {status:?}"));
                false
            }
        }
    } else {
        soak.count(HTTP_CALLS);
        let answer = http
            .delete(Rest::at(soak.addr).url(&format!("/api/security/tokens/{id}")))
            .header("x-api-key", &soak.admin)
            .send()
            .await;
        match answer {
            Ok(answer) if answer.status().is_success() => true,
            other => {
                soak.problem(format!("REST delete {id}: {other:?}"));
                false
            }
        }
    };
    let mut ledger = soak.ledger.lock().unwrap();
    ledger.deleting.remove(&id);
    if acknowledged {
        let live = ledger.live.remove(&id).unwrap();
        ledger.deleted.insert(id, live.secret);
    }
}

/// Pages through everything over gRPC (small pages) and REST; a token
/// deleted before a pass began must not appear in it.
async fn lister(soak: Arc<Soak>, client: TokenServiceClient<Channel>, http: reqwest::Client) {
    while soak.running() {
        let gone: HashSet<u64> = soak
            .ledger
            .lock()
            .unwrap()
            .deleted
            .keys()
            .copied()
            .collect();
        let mut seen = HashSet::new();
        let mut page_token = String::new();
        loop {
            let request = ListRequest {
                page_size: 50,
                page_token: page_token.clone(),
                ..Default::default()
            };
            match client.clone().list(with_key(&soak.admin, request)).await {
                Ok(page) => {
                    let page = page.into_inner();
                    for token in &page.service_tokens {
                        if gone.contains(&token.id) {
                            soak.problem(format!("deleted token {} listed", token.id));
                        }
                        if !seen.insert(token.id) {
                            soak.problem(format!("token {} listed twice in one pass", token.id));
                        }
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                Err(status) => {
                    soak.problem(format!("List: {status:?}"));
                    break;
                }
            }
        }
        let rest = http
            .get(Rest::at(soak.addr).url("/api/security/tokens"))
            .header("x-api-key", &soak.admin)
            .send()
            .await;
        soak.count(HTTP_CALLS);
        if !matches!(&rest, Ok(answer) if answer.status() == 200) {
            soak.problem(format!("REST list: {rest:?}"));
        }
        soak.count(LIST_PASSES);
    }
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_for_a_while_leaves_exactly_what_was_acknowledged() {
    let seconds = std::env::var("STS_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let seed: u64 = rand::random();
    eprintln!("soak: {seconds} s, seed {seed}");

    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap(dir.path());
    let server = ServerProcess::start(dir.path()).await;
    let pid = server.pid();
    let (_, idle_fds) = usage(pid);

    let duration = Duration::from_secs(seconds);
    let started = Instant::now();
    let soak = Arc::new(Soak {
        addr: server.addr,
        admin: admin.clone(),
        ledger: Mutex::default(),
        problems: Mutex::default(),
        counts: Default::default(),
        until: started + duration,
    });
    let grpc = TokenServiceClient::new(channel(server.addr).await);
    let http = reqwest::Client::new();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2 {
        tasks.spawn(writer(soak.clone(), grpc.clone(), http.clone(), seed + i));
    }
    for i in 0..4 {
        tasks.spawn(grpc_validator(soak.clone(), grpc.clone(), seed + 10 + i));
    }
    for i in 0..2 {
        tasks.spawn(http_validator(soak.clone(), http.clone(), seed + 20 + i));
    }
    tasks.spawn(lister(soak.clone(), grpc.clone(), http.clone()));

    // Measure once warmed up and again at the end: this sleep marks the
    // measuring point, it waits for nothing.
    tokio::time::sleep_until(started + duration / 4).await;
    let (warm_rss, warm_fds) = usage(pid);
    while let Some(finished) = tasks.join_next().await {
        finished.unwrap();
    }
    let (end_rss, end_fds) = usage(pid);

    let counts: Vec<u64> = soak
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "soak: {} validates, {} writes, {} list passes, {} HTTP calls; RSS {warm_rss} -> {end_rss} KiB, fds {warm_fds} -> {end_fds}",
        counts[VALIDATES], counts[WRITES], counts[LIST_PASSES], counts[HTTP_CALLS]
    );
    let problems = soak.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(counts[VALIDATES] > 100 * seconds, "{counts:?}");
    assert!(
        counts[WRITES] > 10 * seconds && counts[LIST_PASSES] > 0,
        "{counts:?}"
    );

    // Bounded: no growth per request worth the name, no descriptor leak.
    assert!(
        end_rss <= warm_rss + warm_rss / 2 + 16 * 1024,
        "RSS grew from {warm_rss} to {end_rss} KiB"
    );
    assert!(
        end_fds <= warm_fds + 4,
        "descriptors grew from {warm_fds} to {end_fds}"
    );

    // Exactly what was acknowledged: listed, validating with its roles; and
    // no deleted token anywhere.
    let ledger = std::mem::take(&mut *soak.ledger.lock().unwrap());
    let listed = list_all(&grpc, &admin).await;
    let listed_ids: HashSet<u64> = listed.iter().map(|t| t.id).collect();
    let admin_id = validate_on(&grpc, &admin)
        .await
        .unwrap()
        .service_token
        .unwrap()
        .id;
    let mut expected: HashSet<u64> = ledger.live.keys().copied().collect();
    expected.insert(admin_id);
    assert_eq!(listed_ids, expected);
    for (id, live) in &ledger.live {
        let answer = validate_on(&grpc, &live.secret).await.unwrap();
        assert!(answer.valid, "live token {id}");
        assert_eq!(answer.service_token.unwrap().roles, live.roles);
    }
    for (id, secret) in &ledger.deleted {
        let answer = validate_on(&grpc, secret).await.unwrap();
        assert_eq!(
            answer.reason(),
            InvalidReason::NotFound,
            "deleted token {id}"
        );
    }

    // Once the clients are gone, the server's descriptors return to idle.
    drop((grpc, http, soak));
    eventually(
        "descriptors back to idle after the clients left",
        || async { usage(pid).1 <= idle_fds + 2 },
    )
    .await;
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!log.iter().any(|l| l.contains("ERROR")), "{log:#?}");
}
