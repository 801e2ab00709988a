//! One store conformance suite, run against every backend: the same tests,
//! generated once per backend by `conformance!`. What `Store` promises
//! (`src/store/mod.rs`) is checked here, not per backend.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sts::{
    model::{NewToken, ServiceToken, TokenId},
    store::{Imported, PostgresStore, SledStore, Store, StoreError},
    token::Token,
};
use tempfile::TempDir;

use crate::pg::TestDatabase;

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
            Data::Sled(dir) => Arc::new(crate::helpers::reopen(dir.path()).await),
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
            Data::Sled(dir) => crate::helpers::read_all_files(dir.path())
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

async fn insert(store: &dyn Store, name: &str) -> (Token, ServiceToken) {
    let token = Token::generate();
    let stored = store
        .insert(
            token.hash(),
            &new_token(name, &["r"], None),
            SystemTime::now(),
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
    let expiration = SystemTime::now() + Duration::from_nanos(86_400_000_000_123);
    let token = Token::generate();
    let inserted = store
        .insert(
            token.hash(),
            &new_token(
                "Ünïcode name ✓",
                &["zeta", "alpha", "mid"],
                Some(expiration),
            ),
            SystemTime::now(),
        )
        .await
        .unwrap();
    // Roles keep their order; times may lose what the backend cannot keep,
    // but the insert says what a read will say.
    let roles: Vec<&str> = inserted.roles.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, ["zeta", "alpha", "mid"]);
    let error = expiration
        .duration_since(inserted.expiration.unwrap())
        .unwrap();
    assert!(error < Duration::from_micros(1), "{error:?}");
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
    let unknown = Token::generate().hash();
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
    assert!(store.delete(gone).await.unwrap());
    assert!(store.delete(cursor).await.unwrap());
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
    assert!(store.delete(stored.id).await.unwrap());
    assert!(!store.delete(stored.id).await.unwrap());
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
    assert!(!store.delete(never).await.unwrap());
}

async fn a_second_token_with_the_same_hash_is_refused(backend: &mut Backend) {
    let store = backend.store();
    let token = Token::generate();
    let new = new_token("one", &["r"], None);
    store
        .insert(token.hash(), &new, SystemTime::now())
        .await
        .unwrap();
    let twice = store.insert(token.hash(), &new, SystemTime::now()).await;
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
        let token = Token::generate();
        let expiration = (i % 2 == 0).then(|| SystemTime::now() + Duration::from_secs(3600));
        source
            .store()
            .insert(
                token.hash(),
                &new_token(&format!("t{i}"), &["a", "b"], expiration),
                SystemTime::now(),
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
    assert!(other.delete(doomed_stored.id).await.unwrap());
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
    ],
    replicated: [replicas_see_each_others_writes_at_once],
);
