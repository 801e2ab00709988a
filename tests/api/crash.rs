//! Crash safety: the real `sts-server` is killed with SIGKILL while Creates
//! and Deletes are in flight, then restarted on the same data dir, cycle
//! after cycle. Every acknowledged create must validate afterwards, every
//! acknowledged delete must stay deleted, nothing half-written may appear,
//! and the server must start cleanly every time.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use sts::proto::{
    CreateResponse, DeleteRequest, InvalidReason, token_service_client::TokenServiceClient,
};
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::{
    support::pg::TestDatabase,
    support::process::{ServerProcess, bootstrap_with},
    support::{channel, create_request, eventually, list_all, validate_on, with_key},
};

/// Kill/restart cycles in the default run; `STS_CRASH_CYCLES` asks for more.
const DEFAULT_CYCLES: usize = 20;
/// Concurrent clients creating and deleting while the kill comes.
const WRITERS: usize = 8;
/// Longest a cycle may take before the test fails instead of hanging.
const CYCLE_LIMIT: Duration = Duration::from_secs(60);

/// What the writers of one cycle do. Cycles of creates only and of deletes
/// only matter: in a mixed cycle, a delete's flush also makes earlier
/// creates durable, which would hide a create that skipped its own flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    Both,
    CreatesOnly,
    DeletesOnly,
}

/// What the clients know about one token (keyed by its unique name).
#[derive(Debug, Clone)]
struct Entry {
    roles: Vec<String>,
    /// Known once a create was acknowledged, or the token was seen in a listing.
    id: Option<u64>,
    /// Known only from an acknowledged create.
    secret: Option<String>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Created and acknowledged (or found after a restart): must be there.
    Live,
    /// Deleted and acknowledged (or not found after a restart): must stay gone.
    Gone,
    /// The create was sent, no answer came: either outcome is allowed.
    CreateInDoubt,
    /// The delete was sent, no answer came: either outcome is allowed.
    DeleteInDoubt,
}

type Ledger = Arc<Mutex<BTreeMap<String, Entry>>>;

/// One kill/restart cycle, as its writers share it.
#[derive(Clone)]
struct Cycle {
    number: usize,
    mix: Mix,
    admin: String,
    ledger: Ledger,
    /// The kill comes once this many writes were acknowledged.
    kill_after: usize,
    acknowledged: Arc<AtomicUsize>,
    /// Told when `acknowledged` reaches `kill_after`.
    enough: Arc<Notify>,
}

impl Cycle {
    /// A writer's write was acknowledged.
    fn acked(&self) {
        if self.acknowledged.fetch_add(1, Ordering::SeqCst) + 1 >= self.kill_after {
            self.enough.notify_one();
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_and_nothing_half_written_appears() {
    crash_cycles(&[], DEFAULT_CYCLES, None).await;
}

/// The same against PostgreSQL: what the server acknowledged is committed,
/// whatever happens to the server.
#[tokio::test]
async fn on_postgres_acknowledged_writes_survive_sigkill_of_the_server() {
    let Some(database) = TestDatabase::create("crash_postgres").await else {
        return;
    };
    let sessions = SessionsOf {
        database: &database,
        application_name: format!("sts-crash-{}", database.schema),
    };
    let url = format!(
        "{}&application_name={}",
        database.url, sessions.application_name
    );
    crash_cycles(&[("STS_STORE", &url)], DEFAULT_CYCLES / 2, Some(&sessions)).await;
    database.drop().await;
}

/// The database sessions of the server under test, told apart by their
/// application name.
struct SessionsOf<'a> {
    database: &'a TestDatabase,
    application_name: String,
}

impl SessionsOf<'_> {
    /// Waits until every session of the killed server has ended. The
    /// database outlives the server: a statement it sent before the kill
    /// still commits (or aborts) after it, and a check made before then
    /// would take a create that lands late for one that never happened.
    async fn ended(&self) {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{}'",
            self.application_name
        );
        eventually("the killed server's database sessions end", || async {
            self.database.query(&sql).await.is_empty()
        })
        .await;
    }
}

/// Kill/restart cycles of the real binary with `env` (which store), checked
/// against a ledger of acknowledged writes. With a database, each check
/// waits for the killed server's `sessions` to end.
async fn crash_cycles(
    env: &[(&str, &str)],
    default_cycles: usize,
    sessions: Option<&SessionsOf<'_>>,
) {
    let cycles = std::env::var("STS_CRASH_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_cycles);
    let seed: u64 = rand::rng().random();
    println!("crash test seed {seed} (cycles: {cycles})");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let admin = bootstrap_with(dir.path(), env);
    let ledger: Ledger = Ledger::default();

    for cycle in 0..cycles {
        let live = count(&ledger, State::Live);
        let (mix, kill_after) = match cycle % 3 {
            1 => (Mix::CreatesOnly, rng.random_range(1..=40)),
            // Deletes only of tokens there are: at most half of them, so
            // the writers cannot run out before the kill.
            2 if live >= 10 => (Mix::DeletesOnly, rng.random_range(1..=live / 2)),
            _ => (Mix::Both, rng.random_range(1..=40)),
        };
        let plan = Cycle {
            number: cycle,
            mix,
            admin: admin.clone(),
            ledger: ledger.clone(),
            kill_after,
            acknowledged: Arc::default(),
            enough: Arc::default(),
        };
        let cycle_run = kill_while_writing(dir.path(), env, plan, rng.random());
        tokio::time::timeout(CYCLE_LIMIT, cycle_run)
            .await
            .unwrap_or_else(|_| panic!("cycle {cycle} ({mix:?}), seed {seed}: no progress"));
        if let Some(sessions) = sessions {
            sessions.ended().await;
        }
    }

    let server = ServerProcess::start_with(dir.path(), env).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    verify(&client, &admin, &ledger, cycles).await;
    let (exit, log) = server.terminate().await;
    assert!(exit.success(), "{exit:?}\n{}", log.join("\n"));
    let (live, gone) = (count(&ledger, State::Live), count(&ledger, State::Gone));
    println!("after {cycles} kills: {live} tokens live, {gone} gone, all as acknowledged");
    assert!(
        live > 0 && gone > 0,
        "the test exercised both creates and deletes"
    );
}

fn count(ledger: &Ledger, state: State) -> usize {
    let entries = ledger.lock().unwrap();
    entries.values().filter(|e| e.state == state).count()
}

/// One cycle: start the server, check it against the ledger, write until
/// `kill_after` writes were acknowledged, then SIGKILL it while the other
/// writers still have calls in flight.
async fn kill_while_writing(dir: &std::path::Path, env: &[(&str, &str)], plan: Cycle, seed: u64) {
    let cycle = plan.number;
    let server = ServerProcess::start_with(dir, env).await;
    let client = TokenServiceClient::new(channel(server.addr).await);
    verify(&client, &plan.admin, &plan.ledger, cycle).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let prefix = format!("c{cycle}-w{writer}");
            let seed = seed.wrapping_add(writer as u64);
            tokio::spawn(write_until_killed(
                client.clone(),
                plan.clone(),
                prefix,
                seed,
            ))
        })
        .collect();
    while plan.acknowledged.load(Ordering::SeqCst) < plan.kill_after {
        let notified = plan.enough.notified();
        if plan.acknowledged.load(Ordering::SeqCst) >= plan.kill_after {
            break;
        }
        notified.await;
    }
    let exited = server.kill();
    for writer in &writers {
        writer.abort();
    }
    let log = exited.await.unwrap();
    assert!(
        !log.iter().any(|line| line.contains("ERROR")),
        "cycle {cycle}: errors before the kill:\n{}",
        log.join("\n")
    );
}

/// One client: creates and deletes (as the cycle's mix says; deletes take
/// any live token), writing down what was acknowledged, until the task is
/// aborted.
async fn write_until_killed(
    mut client: TokenServiceClient<Channel>,
    plan: Cycle,
    prefix: String,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Cycle {
        mix, admin, ledger, ..
    } = &plan;
    let mix = *mix;
    for n in 0.. {
        let delete = match mix {
            Mix::Both => rng.random_bool(0.3),
            Mix::CreatesOnly => false,
            Mix::DeletesOnly => true,
        };
        let victim = if delete {
            claim_for_delete(ledger)
        } else {
            None
        };
        if mix == Mix::DeletesOnly && victim.is_none() {
            return;
        }
        if let Some((name, id)) = victim {
            let deleted = client
                .delete(with_key(
                    admin,
                    DeleteRequest {
                        id,
                        ..Default::default()
                    },
                ))
                .await;
            if deleted.is_ok() {
                ledger.lock().unwrap().get_mut(&name).unwrap().state = State::Gone;
                plan.acked();
            }
            continue;
        }
        let name = format!("{prefix}-{n}");
        let roles = vec![format!("role-{}", n % 3), format!("{prefix}-reader")];
        ledger.lock().unwrap().insert(
            name.clone(),
            Entry {
                roles: roles.clone(),
                id: None,
                secret: None,
                state: State::CreateInDoubt,
            },
        );
        let role_refs: Vec<&str> = roles.iter().map(String::as_str).collect();
        let created = client
            .create(with_key(admin, create_request(&name, &role_refs)))
            .await;
        if let Ok(response) = created {
            let CreateResponse {
                token,
                service_token,
            } = response.into_inner();
            let mut entries = ledger.lock().unwrap();
            let entry = entries.get_mut(&name).unwrap();
            entry.id = Some(service_token.unwrap().id);
            entry.secret = Some(token);
            entry.state = State::Live;
            drop(entries);
            plan.acked();
        }
    }
}

/// Picks a live token and marks it as being deleted, so no other writer
/// deletes it too.
fn claim_for_delete(ledger: &Ledger) -> Option<(String, u64)> {
    let mut entries = ledger.lock().unwrap();
    let (name, entry) = entries
        .iter_mut()
        .find(|(_, entry)| entry.state == State::Live && entry.id.is_some())?;
    entry.state = State::DeleteInDoubt;
    Some((name.clone(), entry.id?))
}

/// Checks the restarted server against the ledger, then settles every doubt
/// by what the server now holds.
async fn verify(client: &TokenServiceClient<Channel>, admin: &str, ledger: &Ledger, cycle: usize) {
    let listed = list_all(client, admin).await;
    let mut entries = ledger.lock().unwrap().clone();
    for token in &listed {
        if token.name == "bootstrap-admin" {
            continue;
        }
        let entry = entries.get(&token.name).unwrap_or_else(|| {
            panic!("cycle {cycle}: a token nobody created is listed: {token:?}")
        });
        assert_eq!(
            token.roles, entry.roles,
            "cycle {cycle}: {} listed with the wrong roles",
            token.name
        );
        if let Some(id) = entry.id {
            assert_eq!(token.id, id, "cycle {cycle}: {} changed id", token.name);
        }
    }
    let by_name: BTreeMap<&str, u64> = listed.iter().map(|t| (t.name.as_str(), t.id)).collect();
    for (name, entry) in entries.iter_mut() {
        let listed_id = by_name.get(name.as_str()).copied();
        match entry.state {
            State::Live => assert!(
                listed_id.is_some(),
                "cycle {cycle}: acknowledged create of {name} lost"
            ),
            State::Gone => assert!(
                listed_id.is_none(),
                "cycle {cycle}: acknowledged delete of {name} came back"
            ),
            State::CreateInDoubt | State::DeleteInDoubt => {
                entry.state = if listed_id.is_some() {
                    State::Live
                } else {
                    State::Gone
                };
                entry.id = entry.id.or(listed_id);
            }
        }
        if let Some(secret) = &entry.secret {
            let answer = validate_on(client, secret).await.unwrap();
            if entry.state == State::Live {
                assert!(
                    answer.valid,
                    "cycle {cycle}: {name} does not validate: {answer:?}"
                );
                let identity = answer.service_token.unwrap();
                assert_eq!(identity.name, *name);
                assert_eq!(identity.roles, entry.roles);
                assert_eq!(Some(identity.id), entry.id);
            } else {
                assert!(!answer.valid, "cycle {cycle}: deleted {name} validates");
                assert_eq!(answer.reason(), InvalidReason::NotFound);
            }
        }
    }
    *ledger.lock().unwrap() = entries;
}
