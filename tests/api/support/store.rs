//! Stores opened and read directly: a sled store reopened, pages of
//! every token (`ListAll`, test-only), the lockout rule's defaults.

use std::{path::Path, time::SystemTime};

use sts::store::{SledStore, Store, StoreError};

use super::poll::eventually_some;

/// Opens a sled store this process has just closed. sled's own I/O threads
/// may hold the directory's lock for a moment after the last handle is
/// dropped (a new process never sees this: the lock goes with the old one).
pub async fn reopen(dir: &Path) -> SledStore {
    eventually_some("the data dir's lock released", || async {
        match SledStore::open(dir) {
            Err(StoreError::Locked { .. }) => None,
            opened => Some(opened.unwrap()),
        }
    })
    .await
}

/// The lockout rule as the server applies it (default admin role, now).
pub fn keep_admin() -> sts::store::KeepAdmin {
    sts::store::KeepAdmin {
        role: sts::model::Role::parse(sts::config::DEFAULT_ADMIN_ROLE).unwrap(),
        now: SystemTime::now(),
        margin: sts::config::DEFAULT_ADMIN_KEEP_MARGIN,
        waived: false,
    }
}

/// Deletes through the store, under the lockout rule; whether it did.
pub async fn deleted(store: &dyn Store, id: sts::model::TokenId) -> bool {
    match store.delete(id, &keep_admin(), None, None).await.unwrap() {
        sts::store::Outcome::Done(()) => true,
        sts::store::Outcome::NotFound => false,
        sts::store::Outcome::Lockout(what) => panic!("lockout: {what}"),
        sts::store::Outcome::Invalid(invalid) => panic!("invalid: {invalid:?}"),
        sts::store::Outcome::Stale(etag) => panic!("stale: {etag}"),
        sts::store::Outcome::Replaced => panic!("replaced"),
    }
}

/// Pages of every token without a filter: what tests read a store with
/// directly (the service only ever lists through a filter).
#[async_trait::async_trait]
pub trait ListAll {
    async fn list_stored(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::StoredToken>, StoreError>;

    async fn list(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::ServiceToken>, StoreError> {
        let page = self.list_stored(after, limit).await?;
        Ok(page.into_iter().map(|stored| stored.token).collect())
    }
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> ListAll for S {
    async fn list_stored(
        &self,
        after: Option<sts::model::TokenId>,
        limit: usize,
    ) -> Result<Vec<sts::model::StoredToken>, StoreError> {
        self.list_matching(after, limit, &sts::model::ListFilter::default())
            .await
    }
}

/// Adds a token named `name` as an earlier release could have stored it
/// (today's rules for new names not applied: read back, as stores read);
/// its id.
pub async fn old_token(store: &dyn Store, name: &str) -> u64 {
    let secret = sts::token::Secret::generate();
    let hash = secret.hash();
    let roles = vec!["reader".to_owned()];
    let labels = std::collections::BTreeMap::new();
    let stored = sts::model::StoredToken::from_parts(sts::model::StoredParts {
        id: 7_777_777,
        hash: hash.as_bytes(),
        name,
        roles: &roles,
        expiration: None,
        created_at: SystemTime::now(),
        description: "",
        labels: &labels,
        disabled: false,
        last_used_at: None,
        created_by: "",
        updated_at: None,
        previous_hash: None,
        previous_expiration: None,
        previous_last_used_at: None,
        allowed_sources: &[],
        audiences: &[],
        allowed_routes: &[],
        recent_sources: &[],
        sources_announced_at: None,
        rate_limits: &[],
        owners: &[],
        lifetime: None,
        retired: &[],
    })
    .unwrap();
    store.import(&[stored]).await.unwrap();
    7_777_777
}
