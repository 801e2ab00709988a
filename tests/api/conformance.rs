//! One store conformance suite, run against every backend: the same tests,
//! generated once per backend by `conformance!`. What `Store` promises
//! (`src/store/mod.rs`) is checked here, not per backend.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sts::{
    config::DEFAULT_ADMIN_KEEP_MARGIN,
    events::{Actor, Draft, Settle},
    model::{
        AllowedRoutes, AllowedSources, Audiences, Change, Description, Edit, Etag, LabelEdit,
        Labels, ListFilter, ListOrder, MatchedSecret, NewToken, OrderKey, RateLimits,
        RecentSources, Role, Roles, RouteRule, ServiceToken, TokenId, TokenName, TokenSummary,
    },
    store::{Imported, KeepAdmin, Outcome, PostgresStore, SledStore, Store, StoreError, Use},
    token::Secret,
};
use tempfile::TempDir;

use crate::{support::ListAll, support::pg::TestDatabase};

enum Data {
    Sled(TempDir),
    Postgres(TestDatabase),
}

/// A backend's data and one open instance of the store on it.
struct Backend {
    data: Data,
    store: Option<Arc<dyn Store>>,
}

impl Backend {
    async fn sled() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        Backend {
            data: Data::Sled(dir),
            store: Some(store),
        }
    }

    async fn postgres(test: &str) -> Option<Backend> {
        let database = TestDatabase::create(test).await?;
        let store = Arc::new(
            PostgresStore::connect(&sts::config::StoreUrl::parse(&database.url).unwrap())
                .await
                .unwrap(),
        );
        Some(Backend {
            data: Data::Postgres(database),
            store: Some(store),
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone().unwrap()
    }

    /// Another instance on the same data while this one runs: a second
    /// replica. Only a shared database has them (sled locks its directory).
    async fn replica(&self) -> Option<Arc<dyn Store>> {
        match &self.data {
            Data::Sled(_) => None,
            Data::Postgres(database) => Some(Arc::new(
                PostgresStore::connect(&sts::config::StoreUrl::parse(&database.url).unwrap())
                    .await
                    .unwrap(),
            )),
        }
    }

    /// Closes the instance and opens a new one on the same data. The caller
    /// must have dropped its handles: sled's lock goes with the last one.
    async fn restart(&mut self) {
        self.store = None;
        self.store = Some(match &self.data {
            Data::Sled(dir) => Arc::new(crate::support::reopen(dir.path()).await),
            Data::Postgres(database) => Arc::new(
                PostgresStore::connect(&sts::config::StoreUrl::parse(&database.url).unwrap())
                    .await
                    .unwrap(),
            ),
        });
    }

    /// Every byte the backend keeps at rest.
    async fn at_rest(&self) -> Vec<u8> {
        match &self.data {
            Data::Sled(dir) => crate::support::read_all_files(dir.path())
                .into_iter()
                .flat_map(|(_, bytes)| bytes)
                .collect(),
            Data::Postgres(database) => {
                use sqlx::Row;
                let rows = database
                    .query("SELECT row_to_json(t)::text AS row FROM sts_tokens t")
                    .await;
                rows.iter()
                    .flat_map(|row| row.get::<String, _>("row").into_bytes())
                    .collect()
            }
        }
    }

    async fn finish(mut self) {
        self.store = None;
        if let Data::Postgres(database) = self.data {
            database.drop().await;
        }
    }
}

fn new_token(name: &str, roles: &[&str], expiration: Option<SystemTime>) -> NewToken {
    NewToken::parse(name, roles, expiration).unwrap()
}

async fn insert(store: &dyn Store, name: &str) -> (Secret, ServiceToken) {
    let token = Secret::generate();
    let stored = store
        .insert(
            token.hash(),
            &new_token(name, &["r"], None),
            now_micros(),
            None,
        )
        .await
        .unwrap();
    (token, stored)
}

/// Every token, `page` at a time.
async fn list_all(store: &dyn Store, page: usize) -> Vec<ServiceToken> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let batch = store.list(after, page).await.unwrap();
        let Some(last) = batch.last() else {
            return all;
        };
        after = Some(last.id);
        let full = batch.len() == page;
        all.extend(batch);
        if !full {
            return all;
        }
    }
}

async fn a_token_reads_back_as_it_was_inserted(backend: &mut Backend) {
    let store = backend.store();
    let expiration = now_micros() + Duration::from_micros(86_400_000_123);
    let token = Secret::generate();
    let inserted = store
        .insert(
            token.hash(),
            &new_token(
                "Ünïcode name ✓",
                &["zeta", "alpha", "mid"],
                Some(expiration),
            ),
            now_micros(),
            None,
        )
        .await
        .unwrap();
    // Roles keep their order; times (given, as the service gives them, to
    // the microsecond) are kept exactly, and the insert says what a read
    // will say.
    let roles: Vec<&str> = inserted.roles.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, ["zeta", "alpha", "mid"]);
    assert_eq!(inserted.expiration, Some(expiration));
    let found = store.find_by_hash(&token.hash()).await.unwrap().unwrap();
    assert_eq!(found.token, inserted);
    assert!(found.hash.ct_eq(&token.hash()));
    assert_eq!(
        store.list(None, 10).await.unwrap(),
        std::slice::from_ref(&inserted)
    );

    let (_, forever) = insert(&*store, "forever").await;
    assert_eq!(forever.expiration, None);
    drop(store);
    backend.restart().await;
    let store = backend.store();
    assert_eq!(
        store
            .find_by_hash(&token.hash())
            .await
            .unwrap()
            .unwrap()
            .token,
        inserted
    );
    let unknown = Secret::generate().hash();
    assert!(store.find_by_hash(&unknown).await.unwrap().is_none());
}

async fn only_hashes_are_kept_at_rest(backend: &mut Backend) {
    let store = backend.store();
    let mut secrets = Vec::new();
    for i in 0..5 {
        let (token, _) = insert(&*store, &format!("t{i}")).await;
        secrets.push(token.expose_secret().to_owned());
    }
    drop(store);
    backend.restart().await;
    let at_rest = backend.at_rest().await;
    assert!(!at_rest.is_empty());
    for secret in &secrets {
        // The random part alone, in case a prefix were stripped.
        let random = &secret.as_bytes()[7..40];
        assert!(
            !at_rest.windows(random.len()).any(|w| w == random),
            "a secret is stored"
        );
    }
}

async fn ids_are_unique_and_lists_ascend(backend: &mut Backend) {
    let store = backend.store();
    let inserts = (0..100).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { insert(&*store, &format!("t{i}")).await.1.id })
    });
    let mut ids = Vec::new();
    for insert in inserts {
        ids.push(insert.await.unwrap());
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 100);
    let listed: Vec<TokenId> = list_all(&*store, 7).await.iter().map(|t| t.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(store.count().await.unwrap(), 100);
}

async fn a_cursor_holds_while_tokens_come_and_go(backend: &mut Backend) {
    let store = backend.store();
    let mut kept = Vec::new();
    for i in 0..30 {
        kept.push(insert(&*store, &format!("t{i}")).await.1);
    }
    kept.sort_by_key(|t| t.id);
    let first = store.list(None, 10).await.unwrap();
    // Between pages: a token on the next page goes, new ones arrive, the
    // cursor's own token goes.
    let cursor = first.last().unwrap().id;
    let gone = kept.iter().find(|t| t.id > cursor).unwrap().id;
    assert!(crate::support::deleted(&*store, gone).await);
    assert!(crate::support::deleted(&*store, cursor).await);
    for i in 0..10 {
        insert(&*store, &format!("new{i}")).await;
    }
    let mut seen: Vec<TokenId> = first.iter().map(|t| t.id).collect();
    let mut after = Some(cursor);
    loop {
        let page = store.list(after, 10).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|t| t.id));
    }
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ascending");
    assert!(!seen[10..].contains(&gone));
    for token in &kept {
        if token.id != gone {
            assert!(seen.contains(&token.id), "token {} was skipped", token.id);
        }
    }
}

async fn a_delete_removes_everything_once(backend: &mut Backend) {
    let store = backend.store();
    let (token, stored) = insert(&*store, "doomed").await;
    let (survivor, _) = insert(&*store, "survivor").await;
    assert_eq!(store.count().await.unwrap(), 2);
    assert!(crate::support::deleted(&*store, stored.id).await);
    assert!(!crate::support::deleted(&*store, stored.id).await);
    assert!(store.find_by_hash(&token.hash()).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 1);
    assert!(
        !list_all(&*store, 10)
            .await
            .iter()
            .any(|t| t.id == stored.id)
    );
    drop(store);
    backend.restart().await;
    let store = backend.store();
    assert!(store.find_by_hash(&token.hash()).await.unwrap().is_none());
    assert!(
        store
            .find_by_hash(&survivor.hash())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.count().await.unwrap(), 1);
    let never = TokenId::parse(12345).unwrap();
    assert!(!crate::support::deleted(&*store, never).await);
}

async fn a_second_token_with_the_same_hash_is_refused(backend: &mut Backend) {
    let store = backend.store();
    let token = Secret::generate();
    let new = new_token("one", &["r"], None);
    store
        .insert(token.hash(), &new, now_micros(), None)
        .await
        .unwrap();
    let twice = store.insert(token.hash(), &new, now_micros(), None).await;
    assert!(
        matches!(twice, Err(StoreError::Corrupt { .. })),
        "{twice:?}"
    );
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn an_import_keeps_ids_and_hashes_and_can_be_repeated(backend: &mut Backend) {
    // An export from another store of the same kind (another instance's data).
    let source = Backend::sled().await;
    let mut secrets = Vec::new();
    for i in 0..5 {
        let token = Secret::generate();
        let expiration = (i % 2 == 0).then(|| now_micros() + Duration::from_secs(3600));
        source
            .store()
            .insert(
                token.hash(),
                &new_token(&format!("t{i}"), &["a", "b"], expiration),
                now_micros(),
                None,
            )
            .await
            .unwrap();
        secrets.push(token);
    }
    let exported = source.store().list_stored(None, 100).await.unwrap();
    source.finish().await;

    let store = backend.store();
    let (local, local_stored) = insert(&*store, "already-here").await;
    let first = store.import(&exported).await.unwrap();
    assert!(first.iter().all(|o| *o == Imported::Added), "{first:?}");
    let again = store.import(&exported).await.unwrap();
    assert!(
        again.iter().all(|o| *o == Imported::AlreadyThere),
        "{again:?}"
    );
    // Another token's id, or another id for a hash already here: refused.
    let mut same_id = exported[0].clone();
    same_id.token.id = local_stored.id;
    let mut same_hash = exported[1].clone();
    same_hash.hash = local.hash();
    same_hash.token.id = TokenId::parse(42).unwrap();
    let conflicts = store.import(&[same_id, same_hash]).await.unwrap();
    assert!(
        conflicts.iter().all(|o| matches!(o, Imported::Conflict(_))),
        "{conflicts:?}"
    );
    assert_eq!(store.count().await.unwrap(), 6);

    drop(store);
    backend.restart().await;
    let store = backend.store();
    for token in &secrets {
        let original = exported
            .iter()
            .find(|e| e.hash.ct_eq(&token.hash()))
            .unwrap();
        let found = store.find_by_hash(&token.hash()).await.unwrap().unwrap();
        assert_eq!(found.token.id, original.token.id);
        assert_eq!(found.token.roles, original.token.roles);
        let drift = |a: Option<SystemTime>, b: Option<SystemTime>| match (a, b) {
            (Some(a), Some(b)) => {
                a.duration_since(b).or(b.duration_since(a)).unwrap() < Duration::from_micros(1)
            }
            (None, None) => true,
            _ => false,
        };
        assert!(drift(found.token.expiration, original.token.expiration));
        assert!(drift(
            Some(found.token.created_at),
            Some(original.token.created_at)
        ));
    }
}

async fn replicas_see_each_others_writes_at_once(backend: &mut Backend) {
    let other = backend.replica().await.expect("a backend with replicas");
    let store = backend.store();
    // Concurrent inserts through both: no id is given twice.
    let inserts = (0..60).map(|i| {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tokio::spawn(async move { insert(&*store, &format!("t{i}")).await })
    });
    let mut tokens = Vec::new();
    for insert in inserts {
        tokens.push(insert.await.unwrap());
    }
    let ids: HashSet<TokenId> = tokens.iter().map(|(_, t)| t.id).collect();
    assert_eq!(ids.len(), 60);
    // Written on one, read on the other; deleted on one, gone on the other.
    for (i, (token, stored)) in tokens.iter().enumerate() {
        let reader = if i % 2 == 0 { &other } else { &store };
        assert_eq!(
            reader
                .find_by_hash(&token.hash())
                .await
                .unwrap()
                .unwrap()
                .token,
            *stored
        );
    }
    let (doomed, doomed_stored) = &tokens[0];
    assert!(crate::support::deleted(&*other, doomed_stored.id).await);
    assert!(store.find_by_hash(&doomed.hash()).await.unwrap().is_none());
    // A cursor from one replica continues on the other.
    let first = store.list(None, 25).await.unwrap();
    let rest = other
        .list(Some(first.last().unwrap().id), 100)
        .await
        .unwrap();
    let listed: Vec<TokenId> = first.iter().chain(&rest).map(|t| t.id).collect();
    assert_eq!(
        listed,
        list_all(&*store, 1000)
            .await
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    );
    assert_eq!(listed.len(), 59);
}

/// Now, to the microsecond every backend keeps.
fn now_micros() -> SystemTime {
    sts::clock::to_micros(SystemTime::now())
}

fn keep_at(now: SystemTime) -> KeepAdmin {
    KeepAdmin {
        role: Role::parse(ADMIN).unwrap(),
        now,
        margin: DEFAULT_ADMIN_KEEP_MARGIN,
        waived: false,
    }
}

const ADMIN: &str = "stackstate-admin";

async fn change(
    store: &dyn Store,
    id: TokenId,
    change: Change,
    now: SystemTime,
) -> Outcome<(ServiceToken, ServiceToken)> {
    store
        .change(id, &change, &keep_at(now), None, None)
        .await
        .unwrap()
}

fn lockout<T: std::fmt::Debug>(outcome: Outcome<T>) -> &'static str {
    match outcome {
        Outcome::Lockout(what) => what,
        other => panic!("expected a lockout refusal: {other:?}"),
    }
}

fn done<T: std::fmt::Debug>(outcome: Outcome<T>) -> T {
    match outcome {
        Outcome::Done(done) => done,
        other => panic!("expected the change to be made: {other:?}"),
    }
}

async fn a_change_reads_back_everywhere_and_survives_a_restart(backend: &mut Backend) {
    let store = backend.store();
    let (token, inserted) = insert(&*store, "before").await;
    let now = now_micros();
    let expiration = now + Duration::from_secs(3600);
    let edit = Edit {
        name: Some(TokenName::parse("after").unwrap()),
        roles: Some(Roles::parse(&["a", "b"]).unwrap()),
        expiration: Some(Some(expiration)),
        description: Some(Description::parse("for CI ✓").unwrap()),
        labels: Some(LabelEdit::Replace(
            Labels::parse([("team", "ci"), ("example.com/tier", "1")]).unwrap(),
        )),
        disabled: Some(true),
        sources: Some(AllowedSources::parse("allowed_sources", &["10.0.0.0/8", "::1"]).unwrap()),
        audiences: Some(Audiences::parse("audiences", &["ci"]).unwrap()),
        routes: Some(
            AllowedRoutes::new(
                "allowed_routes",
                vec![RouteRule::parse("allowed_routes", &["POST"], "/deploy/**").unwrap()],
            )
            .unwrap(),
        ),
        rate_limits: Some(
            RateLimits::parse_texts("rate_limits", &["burst=20/1s", "daily=1000/1d"]).unwrap(),
        ),
        owners: Some(sts::model::Owners::parse("owners", &[5, 3]).unwrap()),
    };
    let (before, after) = done(change(&*store, inserted.id, Change::Edit(edit), now).await);
    assert_eq!(after.rate_limits.to_string(), "burst=20/1s,daily=1000/1d");
    assert_eq!(after.owners.to_string(), "5 < 3");
    assert_eq!(after.bindings.sources.texts(), ["10.0.0.0/8", "::1"]);
    assert_eq!(after.bindings.audiences.as_slice(), ["ci"]);
    assert_eq!(after.bindings.routes.texts(), ["POST /deploy/**"]);
    assert_eq!(before, inserted);
    assert_eq!(after.name.as_str(), "after");
    assert_eq!(after.expiration, Some(expiration));
    assert!(after.disabled);
    assert_eq!(after.updated_at, now);
    assert_eq!(after.created_at, inserted.created_at);
    assert_eq!(after.labels.to_string(), "example.com/tier=1,team=ci");
    assert_eq!(store.get(inserted.id).await.unwrap().unwrap().token, after);
    let found = store.find_by_hash(&token.hash()).await.unwrap().unwrap();
    assert_eq!(found.token, after);
    // Clearing the expiration and enabling again.
    let edit = Edit {
        expiration: Some(None),
        disabled: Some(false),
        ..Edit::default()
    };
    let (_, enabled) = done(change(&*store, inserted.id, Change::Edit(edit), now).await);
    assert_eq!(enabled.expiration, None);
    assert!(!enabled.disabled);
    assert_eq!(enabled.name.as_str(), "after", "fields not named stay");
    drop(store);
    backend.restart().await;
    let store = backend.store();
    assert_eq!(
        store.get(inserted.id).await.unwrap().unwrap().token,
        enabled
    );
    let missing = TokenId::parse(1).unwrap();
    let edit = Change::Edit(Edit {
        disabled: Some(true),
        ..Edit::default()
    });
    assert_eq!(change(&*store, missing, edit, now).await, Outcome::NotFound);
    assert_eq!(store.get(missing).await.unwrap(), None);
}

async fn a_rotation_keeps_one_previous_secret_for_its_grace_period(backend: &mut Backend) {
    let store = backend.store();
    let (first, inserted) = insert(&*store, "rotated").await;
    let now = now_micros();
    let second = Secret::generate();
    let until = now + Duration::from_secs(60);
    let rotate = |hash: &Secret, until| Change::Rotate {
        hash: hash.hash(),
        previous_until: until,
        renew: None,
        replacing: None,
    };
    let (_, rotated) = done(change(&*store, inserted.id, rotate(&second, until), now).await);
    assert_eq!(rotated.id, inserted.id);
    assert_eq!(rotated.name, inserted.name);
    assert_eq!(rotated.previous_secret.unwrap().expiration, until);
    let by_first = store.find_by_hash(&first.hash()).await.unwrap().unwrap();
    assert_eq!(
        by_first.secret_for(&first.hash()),
        Some(MatchedSecret::Previous)
    );
    let by_second = store.find_by_hash(&second.hash()).await.unwrap().unwrap();
    assert_eq!(
        by_second.secret_for(&second.hash()),
        Some(MatchedSecret::Current)
    );
    assert_eq!(by_second.token, rotated);

    // Again: the first secret ends at once (retired: found, to be told
    // apart as a reuse, but no secret of the token), the second is the
    // previous.
    let third = Secret::generate();
    done(change(&*store, inserted.id, rotate(&third, until), now).await);
    let retired = |stored: Option<sts::model::StoredToken>, secret: &Secret| {
        let stored = stored.unwrap();
        assert_eq!(stored.secret_for(&secret.hash()), None);
        assert!(stored.is_retired(&secret.hash()));
        stored.live_secret_at(&secret.hash(), now).is_none()
    };
    assert!(retired(
        store.find_by_hash(&first.hash()).await.unwrap(),
        &first
    ));
    let by_second = store.find_by_hash(&second.hash()).await.unwrap().unwrap();
    assert_eq!(
        by_second.secret_for(&second.hash()),
        Some(MatchedSecret::Previous)
    );

    // No grace: only the new secret remains.
    let fourth = Secret::generate();
    let (_, last) = done(change(&*store, inserted.id, rotate(&fourth, now), now).await);
    assert_eq!(last.previous_secret, None);
    for gone in [&first, &second, &third] {
        assert!(retired(
            store.find_by_hash(&gone.hash()).await.unwrap(),
            gone
        ));
    }
    let by_fourth = store.find_by_hash(&fourth.hash()).await.unwrap().unwrap();
    let newest_first: Vec<_> = [&third, &second, &first].iter().map(|s| s.hash()).collect();
    assert_eq!(by_fourth.retired, newest_first);

    // The grace period never outlives the token.
    let expiration = now + Duration::from_secs(10);
    let edit = Edit {
        expiration: Some(Some(expiration)),
        ..Edit::default()
    };
    done(change(&*store, inserted.id, Change::Edit(edit), now).await);
    let fifth = Secret::generate();
    let (_, capped) = done(change(&*store, inserted.id, rotate(&fifth, until), now).await);
    assert_eq!(capped.previous_secret.unwrap().expiration, expiration);

    // A delete takes every secret with it, retired ones too.
    assert!(crate::support::deleted(&*store, inserted.id).await);
    for gone in [&first, &second, &third, &fourth, &fifth] {
        assert!(store.find_by_hash(&gone.hash()).await.unwrap().is_none());
    }
}

async fn the_last_admin_token_cannot_be_taken_away(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let admin = |name: &str| new_token(name, &[ADMIN], None);
    let first = store
        .insert(Secret::generate().hash(), &admin("first"), now, None)
        .await
        .unwrap();
    let edit = |edit: Edit| Change::Edit(edit);
    let disable = edit(Edit {
        disabled: Some(true),
        ..Edit::default()
    });
    let unrole = edit(Edit {
        roles: Some(Roles::parse(&["reader"]).unwrap()),
        ..Edit::default()
    });
    let expire = edit(Edit {
        expiration: Some(Some(now + Duration::from_secs(3600))),
        ..Edit::default()
    });
    let keep = keep_at(now);
    assert_eq!(
        lockout(store.delete(first.id, &keep, None, None).await.unwrap()),
        "deleting"
    );
    for (change_, what) in [
        (&disable, "disabling"),
        (&unrole, "removing the admin role from"),
        (&expire, "letting expire"),
    ] {
        assert_eq!(
            lockout(change(&*store, first.id, change_.clone(), now).await),
            what
        );
    }
    // Changes that keep its access are fine.
    let rename = edit(Edit {
        name: Some(TokenName::parse("renamed").unwrap()),
        ..Edit::default()
    });
    done(change(&*store, first.id, rename, now).await);
    assert!(
        store
            .get(first.id)
            .await
            .unwrap()
            .unwrap()
            .token
            .is_admin_at(&keep.role, now)
    );

    // A disabled or expired admin token keeps nobody in.
    let spare = store
        .insert(Secret::generate().hash(), &admin("spare"), now, None)
        .await
        .unwrap();
    done(change(&*store, spare.id, disable.clone(), now).await);
    assert_eq!(
        lockout(change(&*store, first.id, disable.clone(), now).await),
        "disabling"
    );
    let soon = store
        .insert(
            Secret::generate().hash(),
            &new_token("soon", &[ADMIN], Some(now + Duration::from_secs(1))),
            now,
            None,
        )
        .await
        .unwrap();
    let later = now + Duration::from_secs(2);
    assert_eq!(
        lockout(
            store
                .delete(first.id, &keep_at(later), None, None)
                .await
                .unwrap()
        ),
        "deleting"
    );
    // An admin token about to expire keeps nobody in for long: it does not
    // let the last long-lived one go (it would be gone a second later).
    assert_eq!(
        lockout(store.delete(first.id, &keep, None, None).await.unwrap()),
        "deleting"
    );
    // One valid beyond the margin does.
    let day = Duration::from_secs(86_400);
    let year = store
        .insert(
            Secret::generate().hash(),
            &new_token("year", &[ADMIN], Some(now + day * 365)),
            now,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.delete(first.id, &keep, None, None).await.unwrap(),
        Outcome::Done(())
    );
    // Now the last long-lived admin: an expiration still beyond the
    // margin is allowed, one inside it is not, nor deleting it.
    let at = |expiration| {
        edit(Edit {
            expiration: Some(Some(expiration)),
            ..Edit::default()
        })
    };
    done(change(&*store, year.id, at(now + day * 30), now).await);
    assert_eq!(
        lockout(change(&*store, year.id, at(now + day / 2), now).await),
        "letting expire"
    );
    assert_eq!(
        lockout(store.delete(year.id, &keep, None, None).await.unwrap()),
        "deleting"
    );
    // The short-lived one may go: the long-lived one stays.
    assert_eq!(
        store.delete(soon.id, &keep, None, None).await.unwrap(),
        Outcome::Done(())
    );
    // Not an admin token (any more): no rule.
    assert_eq!(
        store.delete(spare.id, &keep, None, None).await.unwrap(),
        Outcome::Done(())
    );
}

async fn a_waived_lockout_rule_lets_the_last_admin_token_go(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let last = store
        .insert(
            Secret::generate().hash(),
            &new_token("last", &[ADMIN], None),
            now,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        lockout(
            store
                .delete(last.id, &keep_at(now), None, None)
                .await
                .unwrap()
        ),
        "deleting"
    );
    let waived = KeepAdmin {
        waived: true,
        ..keep_at(now)
    };
    done(store.delete(last.id, &waived, None, None).await.unwrap());
    assert!(store.get(last.id).await.unwrap().is_none());
}

async fn the_summary_counts_as_the_model_does(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let day = Duration::from_secs(24 * 3600);
    let expirations = [
        None,
        Some(now - day),
        Some(now + day / 2),
        Some(now + day * 5),
        Some(now + day * 20),
        Some(now + day * 40),
    ];
    for (i, expiration) in expirations.iter().enumerate() {
        for (j, created) in [now, now - day * 40, now - day * 100]
            .into_iter()
            .enumerate()
        {
            let token = store
                .insert(
                    Secret::generate().hash(),
                    &new_token(&format!("t{i}-{j}"), &["r"], *expiration),
                    created,
                    None,
                )
                .await
                .unwrap();
            if j == 2 && i % 2 == 0 {
                // Used recently after all.
                store
                    .record_uses(
                        &[Use {
                            id: token.id,
                            at: now - day,
                            previous_at: None,
                            sources: Default::default(),
                        }],
                        None,
                    )
                    .await
                    .unwrap();
            }
            if i == 4 && j == 1 {
                let disable = Change::Edit(Edit {
                    disabled: Some(true),
                    ..Edit::default()
                });
                done(change(&*store, token.id, disable, now).await);
            }
        }
    }
    let mut expected = TokenSummary::default();
    for token in list_all(&*store, 100).await {
        expected.add(&token, now);
    }
    assert!(expected.expired > 0 && expected.disabled > 0 && expected.expiring[0] > 0);
    assert!(expected.unused[0] > expected.unused[1] && expected.unused[1] > 0);
    assert_eq!(store.summary(now).await.unwrap(), expected);
}

async fn two_admins_removing_each_other_at_once_leave_one(backend: &mut Backend) {
    let store = backend.store();
    // On a shared database, through two replicas.
    let other = backend.replica().await.unwrap_or_else(|| store.clone());
    // Each round with its own admin role, so earlier rounds' tokens do not count.
    for round in 0..5 {
        let role = format!("admin-{round}");
        let now = now_micros();
        let keep = KeepAdmin {
            role: Role::parse(&role).unwrap(),
            now,
            margin: DEFAULT_ADMIN_KEEP_MARGIN,
            waived: false,
        };
        let admin = new_token("admin", &[role.as_str()], None);
        let a = store
            .insert(Secret::generate().hash(), &admin, now, None)
            .await
            .unwrap();
        let b = store
            .insert(Secret::generate().hash(), &admin, now, None)
            .await
            .unwrap();
        let disable = Change::Edit(Edit {
            disabled: Some(true),
            ..Edit::default()
        });
        let (one, two) = tokio::join!(
            store.change(a.id, &disable, &keep, None, None),
            other.delete(b.id, &keep, None, None),
        );
        let (one, two) = (one.unwrap(), two.unwrap());
        let made =
            matches!(one, Outcome::Done(_)) as usize + matches!(two, Outcome::Done(_)) as usize;
        assert_eq!(made, 1, "exactly one of the two may go: {one:?}, {two:?}");
        let a_left = store.get(a.id).await.unwrap().unwrap().token;
        let b_left = store.get(b.id).await.unwrap();
        let enabled = !a_left.disabled as usize + b_left.is_some() as usize;
        assert_eq!(enabled, 1);
    }
}

/// An etag holds a change or a delete to the token as its sender read it,
/// checked under the change's own lock: of changes sent at once with one
/// etag (through two replicas on a shared database), exactly one lands.
async fn a_change_holds_to_its_etag(backend: &mut Backend) {
    let store = backend.store();
    let other = backend.replica().await.unwrap_or_else(|| store.clone());
    let (_, token) = insert(&*store, "guarded").await;
    let now = now_micros();
    let read = Etag::of(&token);
    // A use changes nothing the etag covers.
    store
        .record_uses(
            &[Use {
                id: token.id,
                at: now,
                previous_at: None,
                sources: Default::default(),
            }],
            None,
        )
        .await
        .unwrap();
    let used = store.get(token.id).await.unwrap().unwrap().token;
    assert_eq!(Etag::of(&used), read, "a use leaves the etag as it was");
    let labels = |value: &str| {
        Change::Edit(Edit {
            labels: Some(LabelEdit::Replace(
                Labels::parse([("owner", value)]).unwrap(),
            )),
            ..Edit::default()
        })
    };
    let keep = keep_at(now);
    let writers: Vec<_> = (0..10)
        .map(|n| {
            let (store, change, read) = (
                if n % 2 == 0 {
                    store.clone()
                } else {
                    other.clone()
                },
                labels(&format!("team-{n}")),
                read.clone(),
            );
            let keep = keep.clone();
            async move {
                store
                    .change(token.id, &change, &keep, Some(&read), None)
                    .await
                    .unwrap()
            }
        })
        .collect();
    let outcomes = futures_util::future::join_all(writers).await;
    let landed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Done((_, after)) => Some(after.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(landed.len(), 1, "one change per etag: {outcomes:?}");
    let now_etag = Etag::of(&landed[0]);
    assert_ne!(now_etag, read, "a change moves the etag");
    for outcome in &outcomes {
        match outcome {
            Outcome::Done(_) => {}
            Outcome::Stale(current) => assert_eq!(*current, now_etag),
            other => panic!("expected done or stale: {other:?}"),
        }
    }
    let stored = store.get(token.id).await.unwrap().unwrap().token;
    assert_eq!(
        stored.labels, landed[0].labels,
        "the one that landed stands"
    );
    // A stale delete deletes nothing; a fresh one does.
    let stale = store
        .delete(token.id, &keep, Some(&read), None)
        .await
        .unwrap();
    assert_eq!(stale, Outcome::Stale(now_etag.clone()));
    assert!(store.get(token.id).await.unwrap().is_some());
    let fresh = other
        .delete(token.id, &keep, Some(&now_etag), None)
        .await
        .unwrap();
    assert_eq!(fresh, Outcome::Done(()));
    assert!(store.get(token.id).await.unwrap().is_none());
}

/// Usage: batches of the same day add up (replicas' batches too, on a
/// shared store), a batch skips a token deleted before it, a range reads
/// the days kept, and a purge forgets the days before its own.
async fn usage_adds_up_skips_deleted_tokens_and_is_purged(backend: &mut Backend) {
    use sts::model::{Counts, Day};
    let store = backend.store();
    let (_, kept) = insert(&*store, "kept").await;
    let (_, gone) = insert(&*store, "gone").await;
    let today = Day::of(SystemTime::now());
    let old = today.before(90);
    let counts = |valid, limited| {
        let mut counts = Counts::default();
        counts.0[0] = valid;
        counts.0[1] = limited;
        counts
    };
    store
        .record_usage(old, &[(kept.id, counts(7, 0))])
        .await
        .unwrap();
    store
        .record_usage(today, &[(kept.id, counts(2, 1)), (gone.id, counts(5, 5))])
        .await
        .unwrap();
    let writer = backend.replica().await.unwrap_or_else(|| store.clone());
    assert!(crate::support::deleted(&*store, gone.id).await);
    writer
        .record_usage(today, &[(kept.id, counts(3, 0)), (gone.id, counts(1, 0))])
        .await
        .unwrap();
    let days = store.usage(kept.id, old, today).await.unwrap();
    assert_eq!(days.len(), 2, "{days:?}");
    assert_eq!((days[0].day, days[0].counts), (old, counts(7, 0)));
    assert_eq!((days[1].day, days[1].counts), (today, counts(5, 1)));
    // The batch after the delete added nothing for it. (PostgreSQL drops a
    // deleted token's rows with it; sled leaves them to the purge: the
    // service never shows a deleted token's usage.)
    let gone_days = store.usage(gone.id, old, today).await.unwrap();
    assert!(
        gone_days.iter().all(|d| d.counts == counts(5, 5)),
        "{gone_days:?}"
    );
    assert_eq!(store.purge_usage(old.next()).await.unwrap(), 1);
    let days = store.usage(kept.id, old, today).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].day, today);
}

async fn uses_only_move_forward(backend: &mut Backend) {
    let store = backend.store();
    let (_, token) = insert(&*store, "used").await;
    let t1 = now_micros();
    let t2 = t1 + Duration::from_secs(5);
    let used = |at, previous_at| Use {
        id: token.id,
        at,
        previous_at,
        sources: Default::default(),
    };
    store.record_uses(&[used(t2, None)], None).await.unwrap();
    store.record_uses(&[used(t1, None)], None).await.unwrap();
    let read = store.get(token.id).await.unwrap().unwrap().token;
    assert_eq!(read.last_used_at, Some(t2), "the latest use wins");
    assert_eq!(read.updated_at, token.updated_at, "a use is not an update");
    // A previous secret's use is kept only while there is one.
    store
        .record_uses(&[used(t2, Some(t2))], None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(token.id)
            .await
            .unwrap()
            .unwrap()
            .token
            .previous_secret,
        None
    );
    let rotate = Change::Rotate {
        hash: Secret::generate().hash(),
        previous_until: t2 + Duration::from_secs(60),
        renew: None,
        replacing: None,
    };
    done(change(&*store, token.id, rotate, t1).await);
    let t3 = t2 + Duration::from_secs(1);
    // Unknown tokens in a batch are skipped.
    let gone = Use {
        id: TokenId::parse(1).unwrap(),
        at: t3,
        previous_at: None,
        sources: Default::default(),
    };
    store
        .record_uses(&[gone, used(t3, Some(t3))], None)
        .await
        .unwrap();
    let read = store.get(token.id).await.unwrap().unwrap().token;
    assert_eq!(read.last_used_at, Some(t3));
    assert_eq!(read.previous_secret.unwrap().last_used_at, Some(t3));
    drop(store);
    backend.restart().await;
    let read = backend.store().get(token.id).await.unwrap().unwrap().token;
    assert_eq!(read.last_used_at, Some(t3), "durable");
}

async fn filters_select_the_same_tokens_on_every_backend(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let hour = Duration::from_secs(3600);
    let mut tokens = Vec::new();
    for i in 0..12 {
        let expiration = (i % 3 != 0).then(|| now + hour * i);
        let roles: &[&str] = if i % 2 == 0 {
            &["even", "all"]
        } else {
            &["all"]
        };
        let name = format!("{}-{i}", if i < 6 { "ci" } else { "ops" });
        // Odd ones made two hours ago: never used, they count as unused
        // from then.
        let created = now - hour * 2 * (i % 2);
        let mut new = new_token(&name, roles, expiration);
        if i % 3 == 1 {
            new.bindings.sources =
                AllowedSources::parse("allowed_sources", &["10.0.0.0/8"]).unwrap();
        }
        let token = store
            .insert(Secret::generate().hash(), &new, created, None)
            .await
            .unwrap();
        if i % 4 == 0 {
            let disable = Change::Edit(Edit {
                disabled: Some(true),
                ..Edit::default()
            });
            done(change(&*store, token.id, disable, now).await);
        }
        if i % 5 == 0 {
            let at = now + Duration::from_secs(i as u64);
            store
                .record_uses(
                    &[Use {
                        id: token.id,
                        at,
                        previous_at: None,
                        sources: Default::default(),
                    }],
                    None,
                )
                .await
                .unwrap();
        }
        tokens.push(token.id);
    }
    let all: Vec<ServiceToken> = list_all(&*store, 100).await;
    let filters = [
        ListFilter {
            name_prefix: Some("ci-".into()),
            ..ListFilter::default()
        },
        ListFilter {
            role: Some(Role::parse("even").unwrap()),
            ..ListFilter::default()
        },
        ListFilter {
            unused_since: Some(now + Duration::from_secs(5)),
            ..ListFilter::default()
        },
        // Never used counts from creation: the odd ones only.
        ListFilter {
            unused_since: Some(now - hour),
            ..ListFilter::default()
        },
        ListFilter {
            expiring_before: Some(now + hour * 5),
            ..ListFilter::default()
        },
        ListFilter {
            disabled: Some(true),
            ..ListFilter::default()
        },
        ListFilter {
            expiring_after: Some(now + hour * 5),
            ..ListFilter::default()
        },
        // Over either policy: unbound, or expiring late (or never).
        ListFilter {
            without_sources: true,
            ..ListFilter::default()
        },
        ListFilter {
            expiring_after: Some(now + hour * 8),
            without_sources: true,
            name_prefix: Some("ops".into()),
            ..ListFilter::default()
        },
        ListFilter {
            disabled: Some(false),
            name_prefix: Some("ops".into()),
            role: Some(Role::parse("all").unwrap()),
            ..ListFilter::default()
        },
    ];
    for filter in filters {
        let expected: Vec<TokenId> = all
            .iter()
            .filter(|t| filter.matches(t))
            .map(|t| t.id)
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < all.len(),
            "{filter:?}"
        );
        // Page by 2, the cursor being the last id shown.
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_matching(after, 2, &filter).await.unwrap();
            listed.extend(page.iter().map(|s| s.token.id));
            match page.last() {
                Some(last) if page.len() == 2 => after = Some(last.token.id),
                _ => break,
            }
        }
        assert_eq!(listed, expected, "{filter:?}");
    }
    assert_eq!(tokens.len(), 12);
}

/// Every order pages as a sort of the whole list would: by the key, then
/// the id, either way, a filter applied, pages cut anywhere; the index
/// follows renames, new expirations, recorded uses and deletes, and
/// survives a restart. Both stores sort alike (names by code point, never
/// expiring last, never used first).
async fn every_order_pages_like_a_sort_of_the_whole_list(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let hour = Duration::from_secs(3600);
    let names = [
        "beta",
        "alpha",
        "alpha",
        "alphabet",
        "Zeta",
        "ünïcode",
        "a",
        "b-2",
        "b-10",
        "m",
        "ci",
        "ops",
    ];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let expiration = (i % 3 != 0).then(|| now + hour * (((i * 7) % 5) as u32 + 1));
        let mut new = new_token(name, &["r"], expiration);
        if i % 2 == 0 {
            new = new.described(
                Description::parse("").unwrap(),
                Labels::parse([("team", if i % 4 == 0 { "ci" } else { "ops" })]).unwrap(),
            );
        }
        if i == 3 {
            new = new.bound(sts::model::Bindings {
                sources: AllowedSources::parse("allowed_sources", &["10.0.0.0/8"]).unwrap(),
                audiences: Audiences::default(),
                routes: AllowedRoutes::default(),
            });
        }
        let created = now - hour * ((i * 5 % 7) as u32);
        let token = store
            .insert(Secret::generate().hash(), &new, created, None)
            .await
            .unwrap();
        if i % 3 == 1 {
            store
                .record_uses(
                    &[Use {
                        id: token.id,
                        at: now - Duration::from_secs((i * 13 % 5) as u64),
                        previous_at: None,
                        sources: Default::default(),
                    }],
                    None,
                )
                .await
                .unwrap();
        }
        ids.push(token.id);
    }
    // Moves: a rename, a new expiration, a later use, a delete.
    let rename = Change::Edit(Edit {
        name: Some(TokenName::parse("zz-renamed").unwrap()),
        expiration: Some(None),
        ..Edit::default()
    });
    done(change(&*store, ids[1], rename, now).await);
    store
        .record_uses(
            &[Use {
                id: ids[4],
                at: now + hour,
                previous_at: None,
                sources: Default::default(),
            }],
            None,
        )
        .await
        .unwrap();
    done(
        store
            .delete(ids[6], &keep_at(now), None, None)
            .await
            .unwrap(),
    );
    check_orders(&*store, names.len() - 1).await;
    drop(store);
    backend.restart().await;
    check_orders(&*backend.store(), names.len() - 1).await;
}

/// Every order, either way, under a few filters, paged by 3, against a sort
/// of the whole list.
async fn check_orders(store: &dyn Store, count: usize) {
    let all = list_all(store, 100).await;
    assert_eq!(all.len(), count);
    let filters = [
        ListFilter::default(),
        ListFilter::default().labelled("team=ci").unwrap(),
        ListFilter::default().labelled("team").unwrap(),
        ListFilter {
            bound: Some(true),
            ..ListFilter::default()
        },
        ListFilter {
            name_prefix: Some("alpha".into()),
            ..ListFilter::default()
        },
        ListFilter {
            name_prefix: Some("ü".into()),
            ..ListFilter::default()
        },
        ListFilter {
            bound: Some(false),
            label: Some(sts::model::LabelSelector::parse("team=ops").unwrap()),
            ..ListFilter::default()
        },
    ];
    for (key, name) in OrderKey::INDEXED {
        for descending in [false, true] {
            let order = ListOrder { key, descending };
            for filter in &filters {
                let mut expected: Vec<&ServiceToken> =
                    all.iter().filter(|t| filter.matches(t)).collect();
                expected.sort_by(|a, b| {
                    let by = (key.value_of(a), a.id).cmp(&(key.value_of(b), b.id));
                    if descending { by.reverse() } else { by }
                });
                let expected: Vec<TokenId> = expected.iter().map(|t| t.id).collect();
                assert!(!expected.is_empty());
                let mut listed = Vec::new();
                let mut after = None;
                loop {
                    let page = store
                        .list_ordered(order, after.as_ref(), 3, filter)
                        .await
                        .unwrap();
                    listed.extend(page.iter().map(|s| s.token.id));
                    match page.last() {
                        Some(last) if page.len() == 3 => {
                            after = Some(order.position_of(&last.token))
                        }
                        _ => break,
                    }
                }
                assert_eq!(listed, expected, "{name} desc={descending} {filter:?}");
            }
        }
    }
}

/// An export (the JSON lines, not just the records) carries every field of
/// a token that lived a while: description, labels, disabled, its creator,
/// its last uses, its last update and a rotated-out secret in its grace
/// period; the import into this backend reads back equal, both secrets
/// working.
async fn an_export_carries_every_lifecycle_field(backend: &mut Backend) {
    let source = Backend::sled().await;
    let from = source.store();
    let now = now_micros();
    let first = Secret::generate();
    let mut new = new_token("lived", &["a"], Some(now + Duration::from_secs(86_400)));
    new.created_by = "42 (admin)".into();
    let new = new.described(
        Description::parse("a whole life").unwrap(),
        Labels::parse([("team", "ci")]).unwrap(),
    );
    let inserted = from.insert(first.hash(), &new, now, None).await.unwrap();
    let second = Secret::generate();
    let rotate = Change::Rotate {
        hash: second.hash(),
        previous_until: now + Duration::from_secs(3600),
        renew: None,
        replacing: None,
    };
    done(change(&*from, inserted.id, rotate, now).await);
    let disable = Change::Edit(Edit {
        disabled: Some(true),
        ..Edit::default()
    });
    done(change(&*from, inserted.id, disable, now + Duration::from_secs(1)).await);
    let used = Use {
        id: inserted.id,
        at: now + Duration::from_secs(2),
        previous_at: Some(now + Duration::from_secs(2)),
        sources: RecentSources::of([
            ("10.0.0.1".parse().unwrap(), now + Duration::from_secs(1)),
            ("2001:db8::1".parse().unwrap(), now + Duration::from_secs(2)),
        ]),
    };
    from.record_uses(std::slice::from_ref(&used), None)
        .await
        .unwrap();
    let mut lines = Vec::new();
    sts::export::export(&*from, &mut lines).await.unwrap();
    let original = from.get(inserted.id).await.unwrap().unwrap();
    drop(from);
    source.finish().await;

    let store = backend.store();
    let summary = sts::export::import(&*store, &lines[..]).await.unwrap();
    assert_eq!(summary.added, 1);
    let imported = store.get(inserted.id).await.unwrap().unwrap();
    assert_eq!(imported, original);
    let token = &imported.token;
    assert_eq!(token.created_by, "42 (admin)");
    assert_eq!(token.labels.to_string(), "team=ci");
    assert!(token.disabled);
    assert_eq!(token.last_used_at, Some(used.at));
    assert_eq!(
        token.previous_secret.unwrap().last_used_at,
        used.previous_at
    );
    assert_eq!(token.recent_sources, used.sources);
    for secret in [&first, &second] {
        let found = store.find_by_hash(&secret.hash()).await.unwrap().unwrap();
        assert_eq!(found.token.id, inserted.id);
    }
    let text = String::from_utf8(lines).unwrap();
    for secret in [&first, &second] {
        assert!(!text.contains(secret.expose_secret()), "never a secret");
    }
}

/// Two replicas record uses of one token in either order: the latest wins,
/// and the sources each saw merge.
async fn uses_recorded_by_two_replicas_keep_the_latest(backend: &mut Backend) {
    let store = backend.store();
    let other = backend.replica().await.unwrap();
    let (_, token) = insert(&*store, "shared").await;
    let t1 = now_micros();
    let t2 = t1 + Duration::from_secs(30);
    let used = |at, source: &str| Use {
        id: token.id,
        at,
        previous_at: None,
        sources: RecentSources::of([(source.parse().unwrap(), at)]),
    };
    let (later, earlier) = ([used(t2, "10.0.0.2")], [used(t1, "10.0.0.1")]);
    let (a, b) = tokio::join!(
        store.record_uses(&later, None),
        other.record_uses(&earlier, None)
    );
    a.unwrap();
    b.unwrap();
    // Sources merge as the model merges them: both land, the latest first.
    let expected = RecentSources::of([
        ("10.0.0.1".parse().unwrap(), t1),
        ("10.0.0.2".parse().unwrap(), t2),
    ]);
    for reader in [&store, &other] {
        let read = reader.get(token.id).await.unwrap().unwrap().token;
        assert_eq!(read.last_used_at, Some(t2));
        assert_eq!(read.recent_sources, expected);
    }
    // Six more sources on one replica: the five most recent stay.
    let more: Vec<Use> = (3..9)
        .map(|i| used(t2 + Duration::from_secs(i), &format!("10.0.0.{i}")))
        .collect();
    other.record_uses(&more, None).await.unwrap();
    let read = store.get(token.id).await.unwrap().unwrap().token;
    let kept: Vec<String> = read
        .recent_sources
        .iter()
        .map(|(a, _)| a.to_string())
        .collect();
    assert_eq!(
        kept,
        ["10.0.0.8", "10.0.0.7", "10.0.0.6", "10.0.0.5", "10.0.0.4"]
    );
}

/// A use of `token` from `source` at `at`.
fn used_from(token: &ServiceToken, source: &str, at: SystemTime) -> Use {
    Use {
        id: token.id,
        at,
        previous_at: None,
        sources: RecentSources::of([(source.parse().unwrap(), at)]),
    }
}

/// A new source is announced once, in the batch's transaction: never a
/// token's first sources (its baseline), at most once per window, with
/// the new address and the sources known before.
async fn a_new_source_is_announced_once_per_window(backend: &mut Backend) {
    let store = backend.store();
    let (_, token) = insert(&*store, "roaming").await;
    let t0 = now_micros();
    let minute = Duration::from_secs(60);
    let announce = |at| Some(sts::store::Announce { at, every: minute });
    let record = |source: &'static str, at: SystemTime| {
        let store = store.clone();
        let used = used_from(&token, source, at);
        async move { store.record_uses(&[used], announce(at)).await.unwrap() }
    };
    assert_eq!(record("10.0.0.1", t0).await, 0, "the baseline");
    assert_eq!(record("10.0.0.1", t0 + minute).await, 0, "known");
    assert_eq!(record("192.0.2.7", t0 + minute * 2).await, 1, "new");
    assert_eq!(
        record("192.0.2.8", t0 + minute * 2 + Duration::from_secs(30)).await,
        0,
        "within the window"
    );
    assert_eq!(
        record("192.0.2.9", t0 + minute * 4).await,
        1,
        "a window later"
    );
    // Without `announce`, sources are recorded and nothing announced.
    let quiet = used_from(&token, "198.51.100.1", t0 + minute * 10);
    assert_eq!(store.record_uses(&[quiet], None).await.unwrap(), 0);
    let pending = store
        .claim_events(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        event_types(&pending),
        ["token.new_source", "token.new_source"]
    );
    let body: serde_json::Value = serde_json::from_slice(&pending[0].event.body).unwrap();
    assert_eq!(body["source"], "192.0.2.7", "{body}");
    assert_eq!(body["token"]["id"], token.id.get());
    let known: Vec<&str> = body["recent_sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(known, ["10.0.0.1"]);
    let read = store.get(token.id).await.unwrap().unwrap().token;
    assert_eq!(read.recent_sources.iter().count(), 5);
    assert_eq!(read.recent_sources.announced_at(), Some(t0 + minute * 4));
}

/// Two replicas flushing the same new source at once announce it once.
async fn replicas_announce_a_new_source_once(backend: &mut Backend) {
    let store = backend.store();
    let other = backend.replica().await.unwrap();
    let (_, token) = insert(&*store, "shared").await;
    let t0 = now_micros();
    let every = Duration::from_secs(60);
    store
        .record_uses(&[used_from(&token, "10.0.0.1", t0)], None)
        .await
        .unwrap();
    let at = t0 + every * 2;
    let announce = Some(sts::store::Announce { at, every });
    let (a, b) = (
        [used_from(&token, "192.0.2.7", at)],
        [used_from(&token, "192.0.2.7", at)],
    );
    let (a, b) = tokio::join!(
        store.record_uses(&a, announce),
        other.record_uses(&b, announce)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1);
}

fn actor() -> Actor {
    Actor {
        id: TokenId::parse(1).unwrap(),
        name: "admin".into(),
    }
}

async fn insert_expiring(
    store: &dyn Store,
    name: &str,
    expiration: SystemTime,
    now: SystemTime,
) -> ServiceToken {
    let new = new_token(name, &["r"], Some(expiration));
    let hash = Secret::generate().hash();
    store.insert(hash, &new, now, None).await.unwrap()
}

fn event_types(pending: &[sts::events::Pending]) -> Vec<String> {
    pending.iter().map(|p| p.event.kind.clone()).collect()
}

async fn events_commit_with_their_change_and_leave_when_delivered(backend: &mut Backend) {
    let store = backend.store();
    let now = now_micros();
    let created = store
        .insert(
            Secret::generate().hash(),
            &new_token("evented", &["r"], None),
            now,
            Some(&Draft::created(actor(), now)),
        )
        .await
        .unwrap();
    // Changes without a draft, and a delete of nothing, write no event.
    insert(&*store, "quiet").await;
    let disable = Change::Edit(Edit {
        disabled: Some(true),
        ..Edit::default()
    });
    let draft = Draft::edited(actor(), now);
    let outcome = store
        .change(created.id, &disable, &keep_at(now), None, Some(&draft))
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Done(_)));
    // Disabling it again changes nothing: no event, no new updated_at.
    let later = now + Duration::from_secs(1);
    let again = Draft::edited(actor(), later);
    let (before, after) = done(
        store
            .change(created.id, &disable, &keep_at(later), None, Some(&again))
            .await
            .unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(after.updated_at, now);
    let missing = TokenId::parse(12345).unwrap();
    let gone = store
        .delete(
            missing,
            &keep_at(now),
            None,
            Some(&Draft::deleted(actor(), now)),
        )
        .await
        .unwrap();
    assert_eq!(gone, Outcome::NotFound);
    let deleted = store
        .delete(
            created.id,
            &keep_at(now),
            None,
            Some(&Draft::deleted(actor(), now)),
        )
        .await
        .unwrap();
    assert_eq!(deleted, Outcome::Done(()));
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 3);
    assert!(stats.oldest.is_some());

    // Durable with the change: still there after a restart.
    drop(store);
    backend.restart().await;
    let store = backend.store();
    let claimed = store
        .claim_events(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        event_types(&claimed),
        ["token.created", "token.disabled", "token.deleted"]
    );
    for pending in &claimed {
        let body: serde_json::Value = serde_json::from_slice(&pending.event.body).unwrap();
        assert_eq!(body["id"], pending.event.id.as_str());
        assert_eq!(body["token"]["id"], created.id.get());
        assert_eq!(body["actor"]["name"], "admin");
        assert!(pending.delivered_to.is_empty());
    }
    // Claimed: leased to this caller, offered to no one else meanwhile.
    assert!(
        store
            .claim_events(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );

    let settled = [
        Settle::Delivered {
            seq: claimed[0].seq,
        },
        Settle::Pending {
            seq: claimed[1].seq,
            delivered_to: vec!["a".into()],
            retry_at: SystemTime::now(),
        },
        Settle::Pending {
            seq: claimed[2].seq,
            delivered_to: vec![],
            retry_at: SystemTime::now() + Duration::from_secs(3600),
        },
    ];
    store.settle_events(&settled).await.unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 2);
    // Due again at once: only the one whose retry is now, with who has it.
    let again = store
        .claim_events(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(event_types(&again), ["token.disabled"]);
    assert_eq!(again[0].delivered_to, ["a"]);
    assert_eq!(again[0].event, claimed[1].event);
    store
        .settle_events(&[Settle::Delivered { seq: again[0].seq }])
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
}

async fn expiry_is_announced_once_per_step(backend: &mut Backend) {
    let store = backend.store();
    let day = Duration::from_secs(86_400);
    let now = now_micros();
    let expiring = insert_expiring(&*store, "expiring", now + 40 * day, now).await;
    // Never expiring, and disabled: nothing to announce.
    insert(&*store, "forever").await;
    let disabled = insert_expiring(&*store, "disabled", now + 2 * day, now).await;
    let off = Change::Edit(Edit {
        disabled: Some(true),
        ..Edit::default()
    });
    change(&*store, disabled.id, off, now).await;

    assert_eq!(store.signal_expiries(now).await.unwrap(), 0);
    let steps = [
        (11 * day, Some("30d")),
        (34 * day, Some("7d")),
        (39 * day + day / 2, Some("1d")),
        (41 * day, None),
    ];
    for (after, _) in steps {
        let at = now + after;
        assert_eq!(store.signal_expiries(at).await.unwrap(), 1, "{after:?}");
        assert_eq!(store.signal_expiries(at).await.unwrap(), 0, "{after:?}");
    }
    let claimed = store
        .claim_events(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        event_types(&claimed),
        [
            "token.expiring",
            "token.expiring",
            "token.expiring",
            "token.expired"
        ]
    );
    for (pending, (_, threshold)) in claimed.iter().zip(steps) {
        let body: serde_json::Value = serde_json::from_slice(&pending.event.body).unwrap();
        assert_eq!(body["token"]["id"], expiring.id.get());
        assert_eq!(body["threshold"].as_str(), threshold);
    }

    // A token first seen close to its expiry gets only the nearest step.
    let late = insert_expiring(&*store, "late", now + 3 * day, now).await;
    assert_eq!(store.signal_expiries(now).await.unwrap(), 1);
    // A new expiration starts over.
    let extend = Change::Edit(Edit {
        expiration: Some(Some(now + 20 * day)),
        ..Edit::default()
    });
    change(&*store, late.id, extend, now).await;
    assert_eq!(store.signal_expiries(now).await.unwrap(), 1);
    assert_eq!(store.signal_expiries(now).await.unwrap(), 0);
    // A deleted token takes its record with it.
    store
        .delete(late.id, &keep_at(now), None, None)
        .await
        .unwrap();
    assert_eq!(store.signal_expiries(now).await.unwrap(), 0);
}

async fn replicas_claim_different_events_and_announce_once(backend: &mut Backend) {
    let store = backend.store();
    let other = backend.replica().await.unwrap();
    let now = now_micros();
    for n in 0..10 {
        store
            .insert(
                Secret::generate().hash(),
                &new_token(
                    &format!("t{n}"),
                    &["r"],
                    Some(now + Duration::from_secs(3600)),
                ),
                now,
                Some(&Draft::created(actor(), now)),
            )
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let (a, b) = tokio::join!(store.claim_events(10, lease), other.claim_events(10, lease));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seqs: Vec<u64> = a.iter().chain(&b).map(|p| p.seq).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), a.len() + b.len(), "no event claimed twice");
    assert_eq!(seqs.len(), 10);
    // Both scanning at once announce each step once.
    let (x, y) = tokio::join!(store.signal_expiries(now), other.signal_expiries(now));
    assert_eq!(x.unwrap() + y.unwrap(), 10);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 20);
}

/// Expands to one `#[tokio::test]` per backend for each test in `every`,
/// and one for the replicated backends for each in `replicated`.
macro_rules! conformance {
    (every: [$($test:ident),* $(,)?], replicated: [$($replicated:ident),* $(,)?] $(,)?) => {
        mod sled {
            $(
                #[tokio::test]
                async fn $test() {
                    let mut backend = super::Backend::sled().await;
                    super::$test(&mut backend).await;
                    backend.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(mut backend) = super::Backend::postgres(stringify!($test)).await else {
                        return;
                    };
                    super::$test(&mut backend).await;
                    backend.finish().await;
                }
            )*
            $(
                #[tokio::test]
                async fn $replicated() {
                    let Some(mut backend) = super::Backend::postgres(stringify!($replicated)).await else {
                        return;
                    };
                    super::$replicated(&mut backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

conformance!(
    every: [
        a_token_reads_back_as_it_was_inserted,
        only_hashes_are_kept_at_rest,
        ids_are_unique_and_lists_ascend,
        a_cursor_holds_while_tokens_come_and_go,
        a_delete_removes_everything_once,
        a_second_token_with_the_same_hash_is_refused,
        an_import_keeps_ids_and_hashes_and_can_be_repeated,
        a_change_reads_back_everywhere_and_survives_a_restart,
        a_rotation_keeps_one_previous_secret_for_its_grace_period,
        a_waived_lockout_rule_lets_the_last_admin_token_go,
        the_summary_counts_as_the_model_does,
        the_last_admin_token_cannot_be_taken_away,
        two_admins_removing_each_other_at_once_leave_one,
        a_change_holds_to_its_etag,
        uses_only_move_forward,
        usage_adds_up_skips_deleted_tokens_and_is_purged,
        filters_select_the_same_tokens_on_every_backend,
        every_order_pages_like_a_sort_of_the_whole_list,
        an_export_carries_every_lifecycle_field,
        events_commit_with_their_change_and_leave_when_delivered,
        expiry_is_announced_once_per_step,
        a_new_source_is_announced_once_per_window,
    ],
    replicated: [
        replicas_see_each_others_writes_at_once,
        uses_recorded_by_two_replicas_keep_the_latest,
        replicas_claim_different_events_and_announce_once,
        replicas_announce_a_new_source_once,
    ],
);
