//! The token service itself, independent of any transport: validation,
//! authorization (the admin and manager roles, a required role), and the management
//! operations. gRPC and HTTP translate into these calls; none re-implements
//! them. Tokens are minted in two places only: [`TokenService::create`],
//! which takes an [`Authority`] proof, and [`bootstrap`], which takes the store
//! itself, which no transport holds.

mod authority;
mod delegation;
mod manage;
mod outbox;
mod overview;
mod policy;
mod reuse;
mod revoke;
mod rotate_self;
mod sessions;
mod upkeep;
mod validate;
mod watch;

use std::{
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, SystemTime},
};

use crate::{
    audit::Refusals,
    cache::ValidationCache,
    clock::{Clock, to_micros},
    config::ServiceConfig,
    last_used::{LastUsed, Plainly, UseWriter},
    metrics::Metrics,
    rate_limit::Limiter,
    source_limit::SourceLimit,
    store::Store,
};

pub use crate::audit::AUDIT;

pub use authority::Authority;
use delegation::CallerKind;
use manage::to_completion;
pub use manage::{Page, bootstrap};
use outbox::{AnnouncingUses, Outbox, draft_of};
pub use overview::Overview;
pub use revoke::{MAX_REVOKED_PER_CALL, REVOKE_CALLS_PER_MINUTE, Revoked};
pub use sessions::{SIGN_INS_PER_MINUTE, SessionId};
pub use validate::{Authenticated, InvalidReason, ReviewFor, Reviewer, Validation};
pub use watch::{
    HEARTBEAT_INTERVAL, MAX_REPORTED_USES, ReportedOutcome, ReportedUse, WatchMessage, Watcher,
};

/// Which surface a management call came through: a label of
/// `sts_management_calls_total`, so the console's share is its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Rest,
    Console,
    /// The server's own upkeep (the purge of long-expired tokens).
    Internal,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Rest => "rest",
            Transport::Console => "console",
            Transport::Internal => "internal",
        }
    }
}

/// What a management call's caller proves itself with.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A secret a request presented, or why none could be read.
    Presented(Result<&'a str, crate::credential::AuthError>),
    /// A console session's: the hash of the secret it signed in with,
    /// checked as the token's current secret on every request.
    Session(&'a crate::token::TokenHash),
}

/// The management RPCs, as every transport names them in metrics and audit
/// events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Create,
    List,
    Delete,
    Get,
    Update,
    Rotate,
    GetUsage,
    /// A token rotating itself.
    RotateSelf,
    /// A console sign-in: the credential checked as for any management
    /// call, a session opened.
    SignIn,
    /// A console page that reads no one token (the overview, the create
    /// form): the session checked, counted as any call.
    ConsolePage,
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::GetUsage => "GetUsage",
            Rpc::Create => "Create",
            Rpc::List => "List",
            Rpc::Delete => "Delete",
            Rpc::Get => "Get",
            Rpc::Update => "Update",
            Rpc::Rotate => "Rotate",
            Rpc::RotateSelf => "RotateSelf",
            Rpc::SignIn => "SignIn",
            Rpc::ConsolePage => "ConsolePage",
        }
    }
}

pub struct TokenService {
    store: Arc<dyn Store>,
    cache: Arc<ValidationCache>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    metrics: Arc<Metrics>,
    refusals: Arc<Refusals>,
    /// `None`: last-used tracking is off.
    last_used: Option<Arc<LastUsed>>,
    /// Of leaked-token revocations, which need no credential.
    revocations: SourceLimit,
    /// When each token's retired secret was last announced as reused.
    reuses: reuse::Reuses,
    outbox: Arc<Outbox>,
    /// Where the tokens' rate limits are spent.
    limiter: Arc<Limiter>,
    /// The open Watch streams.
    watches: watch::Watches,
    /// Console sessions' last-seen times and sign-in limit.
    sessions: sessions::SessionBook,
    /// The last token counts the upkeep made (the console's overview).
    summary: Mutex<Option<(SystemTime, crate::model::TokenSummary)>>,
    /// The last store check failed (`server::watch_store` keeps it): calls
    /// that need the store are answered UNAVAILABLE at once meanwhile,
    /// rather than each waiting out the database pool's acquire timeout.
    store_away: AtomicBool,
    /// The last failure the store gave, with its causes (driver text
    /// included): what a call answered at once while the store is away
    /// logs under its incident id.
    last_store_failure: Mutex<Option<String>>,
}

impl TokenService {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
    ) -> TokenService {
        let metrics = Arc::new(Metrics::with(|registry| store.register_metrics(registry)));
        let outbox = Arc::new(Outbox::default());
        // New sources are announced only where events are recorded and
        // sources are.
        let writer_of_uses: Arc<dyn UseWriter> = match &config.webhooks {
            Some(webhooks) if config.record_sources => Arc::new(AnnouncingUses {
                outbox: outbox.clone(),
                capacity: webhooks.outbox_capacity,
                every: config.last_used_resolution,
                clock: clock.clone(),
            }),
            _ => Arc::new(Plainly),
        };
        let cache = store.validation_cache();
        if config.watch_backlog != crate::changes::DEFAULT_BACKLOG {
            cache.changes().set_backlog(config.watch_backlog);
        }
        TokenService {
            last_used: LastUsed::new(
                config.last_used_resolution,
                store.clone(),
                writer_of_uses,
                clock.clone(),
                metrics.clone(),
            ),
            metrics,
            cache,
            refusals: Refusals::new(config.refusal_summary_interval),
            revocations: SourceLimit::new(REVOKE_CALLS_PER_MINUTE, Duration::from_secs(60)),
            reuses: reuse::Reuses::default(),
            outbox,
            limiter: Arc::new(Limiter::default()),
            watches: watch::Watches::new(config.max_watch_streams),
            sessions: sessions::SessionBook::default(),
            summary: Mutex::new(None),
            store_away: AtomicBool::new(false),
            last_store_failure: Mutex::new(None),
            store,
            clock,
            config,
        }
    }

    /// Counts rate limits with `limiter` (a shared store) instead of in
    /// this process alone.
    pub fn with_limiter(mut self, limiter: Limiter) -> TokenService {
        self.limiter = Arc::new(limiter);
        self
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Now, to the microsecond: the precision every store keeps, so every
    /// time the service hands a store (a creation, a change, an event) reads
    /// back the same from any of them and survives a move between them.
    pub(crate) fn now(&self) -> SystemTime {
        to_micros(self.clock.now())
    }

    /// The store's kind (`sled`, `postgresql`).
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The registry every layer records into (the HTTP latency layer too).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
