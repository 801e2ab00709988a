//! Settings as plain data, with their defaults as named constants, one type
//! per layer: [`ServiceConfig`] for the rules `TokenService` applies,
//! [`ServerConfig`] for how `server::run` serves (TLS, timeouts, limits),
//! [`StoreConfig`] for where tokens are kept. Command-line parsing lives in
//! the binaries.

use std::time::Duration;

use crate::model::{RateLimits, Role};
use crate::rate_limit::OnStoreError;

mod console;
mod server;
pub mod setting;
mod store;
mod webhook;

pub use console::*;
pub use server::*;
pub use setting::SettingError;
pub use store::*;
pub use webhook::*;

/// Where `sts-server serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// The sled data directory unless told otherwise, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sts-data";
/// The role a caller's token needs for every management call (StackState's admin role).
pub const DEFAULT_ADMIN_ROLE: &str = "stackstate-admin";
/// The role a caller's token needs to ask about other tokens (Kubernetes
/// TokenReview, OAuth 2.0 introspection).
pub const DEFAULT_REVIEWER_ROLE: &str = "token-reviewer";
/// The role that lets a token manage the tokens it makes, within its own
/// roles (delegated administration).
pub const DEFAULT_MANAGER_ROLE: &str = "token-manager";
/// The role a token needs to watch changes and report cached uses
/// (`--watcher-role`).
pub const DEFAULT_WATCHER_ROLE: &str = "token-watcher";
/// Watch streams one replica keeps open at most (`--max-watch-streams`).
pub const DEFAULT_MAX_WATCH_STREAMS: usize = 4096;
/// What Kubernetes user and group names made from a token start with.
pub const DEFAULT_KUBERNETES_PREFIX: &str = "sts:";
/// List page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest List page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Refusals of unauthenticated management calls are summarized this often.
pub const DEFAULT_REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How precisely last-used times are kept: at most one store write per
/// token per this long (zero turns tracking off).
pub const DEFAULT_LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);
/// Largest request accepted (a gRPC message, an HTTP body). Every valid
/// request is far smaller; a bigger one is refused instead of buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest Envoy ext_authz `Check` accepted: Envoy forwards every request
/// header (up to 60 KiB by its defaults) and, where configured, part of
/// the body.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1024 * 1024;

/// How long, after SIGTERM, the server keeps accepting while it reports
/// not-ready: time for Kubernetes to take the pod out of its Services'
/// endpoints (and for proxies to notice) before connections are refused.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// How long shutdown then waits for in-flight calls before closing anyway.
/// With [`DEFAULT_SHUTDOWN_DELAY`] it stays below Kubernetes' default 30 s
/// termination grace, so the store flush still runs before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How long a new connection may stay silent before it is closed. Clients
/// speak first in HTTP and TLS, so only a stuck or hostile peer waits longer.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's whole body may take to arrive, counted from its
/// headers. Every request we serve is small; only a stalled or hostile
/// peer sends one slower, and it would hold its connection meanwhile.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take once started.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a PING after this much silence on a connection, which
/// is closed if the answer takes longer than [`HTTP2_KEEPALIVE_TIMEOUT`].
/// Finds peers that vanished without closing (a crashed node, a cut cable).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The most header bytes a request may send. Forward-auth requests carry
/// the proxied request's headers, which Envoy allows up to 60 KiB of.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Streams one HTTP/2 connection may have open at once
/// (`--max-streams-per-connection`); more wait, client side, for a free
/// one. See BENCHMARKS.md's stream flood for how it was chosen.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// The smallest `--max-header-bytes`: below it ordinary requests fail.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// The longest grace period a rotation may give the previous secret: time
/// for every client to switch, not a second life for a secret that may
/// have leaked.
pub const DEFAULT_MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 86_400);
/// The longest any lifetime or grace setting may be: a time computed from
/// now and one of them must stay within what protobuf's Timestamp (years
/// 1 to 9999) can carry, and no token needs more.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A lifetime or grace setting, checked against [`MAX_SETTING_DURATION`].
pub fn bounded_setting(duration: Duration) -> Result<Duration, SettingError> {
    if duration > MAX_SETTING_DURATION {
        return Err(SettingError::new(format!(
            "{} is longer than the most this server takes (100 years)",
            lifetime_text(duration)
        )));
    }
    Ok(duration)
}

/// How long past now some enabled admin token must stay valid after any
/// change: an admin token about to expire keeps nobody in for long, so it
/// does not count as the one that lets another go.
pub const DEFAULT_ADMIN_KEEP_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// `margin` as the admin keep margin under `lifetime`: refused when it is
/// not shorter than the maximum token lifetime, since then no admin token
/// the policy allows could ever keep access through it.
pub fn admin_keep_margin(
    margin: Duration,
    lifetime: &LifetimePolicy,
) -> Result<Duration, SettingError> {
    bounded_setting(margin)?;
    match lifetime.max() {
        Some(max) if margin >= max => Err(SettingError::new(format!(
            "the admin keep margin ({}) must be shorter than the maximum token lifetime ({}): no admin token could keep access that long; lower --admin-keep-margin",
            lifetime_text(margin),
            lifetime_text(max)
        ))),
        _ => Ok(margin),
    }
}

/// The service's rules: who may manage tokens, how lists are paged.
/// Nothing here knows how or where the service is reached.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub admin_role: Role,
    /// Who may review other tokens (TokenReview, introspection).
    pub reviewer_role: Role,
    /// Who may manage the tokens it makes, within its own rights
    /// (`--manager-role`).
    pub manager_role: Role,
    /// A manager may make managers (`--managers-may-delegate`).
    pub managers_may_delegate: bool,
    /// Who may watch changes and report the uses it answered from its
    /// own cache (`--watcher-role`).
    pub watcher_role: Role,
    /// Watch streams this replica keeps open at most
    /// (`--max-watch-streams`); counted apart from requests in flight.
    pub max_watch_streams: usize,
    /// Changes a Watch stream may fall behind by before it is told to
    /// resync (`--watch-backlog`).
    pub watch_backlog: usize,
    /// Disable a token at once when one of its retired secrets is
    /// presented again (`--revoke-on-reuse`).
    pub revoke_on_reuse: bool,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// How often refusals of unauthenticated management calls are written
    /// to the audit log as counts (see `refusals`).
    pub refusal_summary_interval: Duration,
    /// Last-used times are written at most once per token per this long;
    /// zero turns tracking off.
    pub last_used_resolution: Duration,
    /// How long tokens may live (`--max-token-lifetime`,
    /// `--default-token-lifetime`).
    pub lifetime: LifetimePolicy,
    /// No change may leave no enabled admin token valid for at least this
    /// long from now (`--admin-keep-margin`).
    pub admin_keep_margin: Duration,
    /// The longest grace a rotation may give (`--max-rotation-grace`);
    /// longer is refused, never shortened silently.
    pub max_rotation_grace: Duration,
    /// Delete tokens that expired this long ago (`None`: keep them).
    pub purge_expired_after: Option<Duration>,
    /// Where events are delivered (`None`: no events are recorded).
    pub webhooks: Option<WebhookConfig>,
    /// How often the service's upkeep runs: the token counts behind
    /// `sts_tokens` and its kin (a scan of every token), the expiry
    /// announcements and the purge of long-expired tokens.
    pub token_summary_interval: Duration,
    /// Refuse a new token, or a change, that leaves a token without
    /// allowed sources (`--require-source-binding`).
    pub require_source_binding: bool,
    /// Record the sources each token is used from (`--record-sources`).
    pub record_sources: bool,
    /// The limits a token created without any gets
    /// (`--default-rate-limit`); empty: none.
    pub default_rate_limits: RateLimits,
    /// A console session unused this long ends (`--console-session-idle`).
    pub console_session_idle: Duration,
    /// A console session ends this long after its sign-in, used or not
    /// (`--console-session-lifetime`).
    pub console_session_lifetime: Duration,
}

/// How long a console session may go unused (15 minutes, as OWASP's
/// session guidance suggests for sensitive applications).
pub const DEFAULT_CONSOLE_SESSION_IDLE: Duration = Duration::from_secs(15 * 60);
/// How long a console session may last at most, used or not: a working day.
pub const DEFAULT_CONSOLE_SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Where tokens' rate limits are counted: in each server alone, or in a
/// Redis every replica shares (`--rate-limit-store`), and what a check of
/// a limited token gets while that Redis is away (`--rate-limit-on-error`).
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {
    pub store: Option<StoreUrl>,
    pub on_error: OnStoreError,
}

/// While the shared rate-limit store is away, each replica counts alone
/// (as Kong's `fault_tolerant`): limits still hold, per replica.
pub const DEFAULT_RATE_LIMIT_ON_ERROR: OnStoreError = OnStoreError::Open;

/// Whether the sources a token is used from are recorded: on, since they
/// are what tells a token's managers that someone else uses it; off where
/// addresses are personal data.
pub const DEFAULT_RECORD_SOURCES: bool = true;

/// A lifetime in the largest whole unit the flags take (`90d`, `12h`,
/// `30m`, `45s`): humantime's own text turns 90 days into months and hours.
pub fn lifetime_text(lifetime: Duration) -> String {
    crate::clock::span_text(lifetime)
}

/// The operator's limits on how long a token may live. Tokens made before
/// a limit was set keep working; new secrets and new expirations obey it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifetimePolicy {
    /// No create, expiration change or rotation may leave a token
    /// expiring later than now + this, or never.
    max: Option<Duration>,
    /// The expiration, from now, of a token created without one.
    default: Option<Duration>,
    /// No create, expiration change or rotation (a self-rotation above
    /// all) may leave a token expiring later than its creation + this,
    /// or never (`--max-token-age`).
    max_age: Option<Duration>,
}

impl LifetimePolicy {
    /// A default longer than the maximum would refuse every create without
    /// an expiration; zero would make tokens born expired.
    pub fn new(
        max: Option<Duration>,
        default: Option<Duration>,
    ) -> Result<LifetimePolicy, SettingError> {
        if max.is_some_and(|m| m.is_zero()) || default.is_some_and(|d| d.is_zero()) {
            return Err(SettingError::new(
                "a token lifetime must be longer than zero",
            ));
        }
        for lifetime in max.iter().chain(&default) {
            bounded_setting(*lifetime)?;
        }
        if let (Some(max), Some(default)) = (max, default)
            && default > max
        {
            return Err(SettingError::new(format!(
                "the default token lifetime ({}) is longer than the maximum ({})",
                lifetime_text(default),
                lifetime_text(max)
            )));
        }
        Ok(LifetimePolicy {
            max,
            default,
            max_age: None,
        })
    }

    /// The same policy, with a maximum age: at least the default lifetime,
    /// or every create without an expiration would be refused.
    pub fn with_max_age(self, max_age: Option<Duration>) -> Result<LifetimePolicy, SettingError> {
        if let Some(age) = max_age {
            if age.is_zero() {
                return Err(SettingError::new("a token age must be longer than zero"));
            }
            bounded_setting(age)?;
            if let Some(default) = self.default
                && default > age
            {
                return Err(SettingError::new(format!(
                    "the default token lifetime ({}) is longer than the maximum token age ({})",
                    lifetime_text(default),
                    lifetime_text(age)
                )));
            }
        }
        Ok(LifetimePolicy { max_age, ..self })
    }

    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    pub fn max(&self) -> Option<Duration> {
        self.max
    }

    /// The maximum as an operator writes it (`90d`), for messages.
    pub fn max_text(&self) -> Option<String> {
        self.max.map(lifetime_text)
    }

    pub fn default_lifetime(&self) -> Option<Duration> {
        self.default
    }
}

impl ServiceConfig {
    /// The defaults, with `admin_role` as the role management calls need.
    pub fn with_admin_role(admin_role: Role) -> ServiceConfig {
        ServiceConfig {
            admin_role,
            reviewer_role: Role::parse(DEFAULT_REVIEWER_ROLE)
                .expect("the default reviewer role is valid"),
            manager_role: Role::parse(DEFAULT_MANAGER_ROLE)
                .expect("the default manager role is valid"),
            managers_may_delegate: false,
            watcher_role: Role::parse(DEFAULT_WATCHER_ROLE)
                .expect("the default watcher role is valid"),
            max_watch_streams: DEFAULT_MAX_WATCH_STREAMS,
            watch_backlog: crate::changes::DEFAULT_BACKLOG,
            revoke_on_reuse: false,
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: MAX_PAGE_SIZE,
            refusal_summary_interval: DEFAULT_REFUSAL_SUMMARY_INTERVAL,
            last_used_resolution: DEFAULT_LAST_USED_RESOLUTION,
            lifetime: LifetimePolicy::default(),
            max_rotation_grace: DEFAULT_MAX_ROTATION_GRACE,
            admin_keep_margin: DEFAULT_ADMIN_KEEP_MARGIN,
            purge_expired_after: None,
            webhooks: None,
            token_summary_interval: DEFAULT_TOKEN_SUMMARY_INTERVAL,
            require_source_binding: false,
            record_sources: DEFAULT_RECORD_SOURCES,
            default_rate_limits: RateLimits::default(),
            console_session_idle: DEFAULT_CONSOLE_SESSION_IDLE,
            console_session_lifetime: DEFAULT_CONSOLE_SESSION_LIFETIME,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        let role = Role::parse(DEFAULT_ADMIN_ROLE).expect("the default admin role is valid");
        ServiceConfig::with_admin_role(role)
    }
}

/// How often the service's upkeep runs (see
/// [`ServiceConfig::token_summary_interval`]).
pub const DEFAULT_TOKEN_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Most events the outbox keeps undelivered; past it new events are
/// dropped (counted and logged), never the change itself: a revocation
/// must not wait for a webhook receiver.
pub const DEFAULT_OUTBOX_CAPACITY: u64 = 100_000;
/// How long one webhook delivery may take.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a webhook failed; it doubles per failure in a
/// row, up to [`DEFAULT_WEBHOOK_MAX_BACKOFF`].
pub const DEFAULT_WEBHOOK_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_WEBHOOK_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the outbox is looked at for events another replica wrote or
/// a retry that is due (this replica's own events wake delivery at once).
pub const DEFAULT_WEBHOOK_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest webhook secret accepted: an HMAC key anyone could guess signs
/// nothing.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_lets_a_name_or_role_reach_the_reserved_system_namespace() {
        for bad in [
            "",
            "system:",
            "system:sts:",
            "system",
            "sys",
            "k8s/",
            "a b:",
        ] {
            assert!(KubernetesPrefix::parse(bad).is_err(), "{bad:?}");
        }
        let error = KubernetesPrefix::parse("system").unwrap_err();
        assert!(error.to_string().contains("must end with `:`"), "{error}");
        for prefix in ["sts:", "s:", "sys:", "system-x:", "tokens:"] {
            let prefix = KubernetesPrefix::parse(prefix).unwrap();
            for name in [":masters", "system:masters", "tem:masters", "masters"] {
                assert!(
                    !prefix.apply(name).starts_with("system:"),
                    "{prefix:?} {name}"
                );
            }
        }
    }

    #[test]
    fn the_admin_keep_margin_must_be_shorter_than_the_maximum_lifetime() {
        let day = Duration::from_secs(86_400);
        let capped = LifetimePolicy::new(Some(day), None).unwrap();
        let error = admin_keep_margin(day, &capped).unwrap_err();
        assert!(error.to_string().contains("--admin-keep-margin"), "{error}");
        assert_eq!(admin_keep_margin(day / 2, &capped), Ok(day / 2));
        let open = LifetimePolicy::default();
        assert_eq!(admin_keep_margin(day, &open), Ok(day));
    }

    #[test]
    fn lifetimes_and_graces_are_bounded_so_computed_times_stay_in_range() {
        let century = MAX_SETTING_DURATION;
        let more = century + Duration::from_secs(1);
        assert_eq!(bounded_setting(century), Ok(century));
        assert!(
            bounded_setting(more)
                .unwrap_err()
                .to_string()
                .contains("100 years")
        );
        assert!(LifetimePolicy::new(Some(more), None).is_err());
        assert!(LifetimePolicy::new(None, Some(more)).is_err());
        assert!(LifetimePolicy::new(Some(century), Some(century)).is_ok());
        // A century from any plausible now is far inside year 9999.
        let latest = std::time::SystemTime::now() + century;
        assert!(latest < crate::clock::latest());
    }

    #[test]
    fn the_default_admin_role_is_a_valid_role() {
        assert_eq!(
            ServiceConfig::default().admin_role.as_str(),
            DEFAULT_ADMIN_ROLE
        );
    }

    #[test]
    fn a_store_url_is_never_shown() {
        let url = StoreUrl::parse("postgres://u:s3cret%40pw@db:5432/x").unwrap();
        let config = StoreConfig::Postgres { url: url.clone() };
        assert_eq!(
            format!("{config:?}"),
            "Postgres { url: StoreUrl(postgres://u:***@db:5432/x) }"
        );
        assert_eq!(url.to_string(), "postgres://u:***@db:5432/x");
        assert_eq!(
            url.scrub("auth failed: s3cret@pw / s3cret%40pw"),
            "auth failed: *** / ***"
        );
        assert_eq!(url.with_password(), "postgres://u:s3cret%40pw@db:5432/x");

        // sqlx also takes the password as a query parameter.
        let url = StoreUrl::parse("postgres://u@db/x?sslmode=disable&password=q%2Bw+e").unwrap();
        assert!(!url.to_string().contains("q%2Bw"), "{url}");
        assert!(url.to_string().contains("password=***"), "{url}");
        assert_eq!(url.scrub("said q+w e and q%2Bw+e"), "said *** and ***");
    }

    #[test]
    fn a_refused_store_url_is_never_echoed() {
        let wrong = StoreUrl::parse("mysql://u:s3cretpw@127.0.0.1/x").unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "expected a postgres:// URL, got mysql://u:***@127.0.0.1/x (the sled store is chosen with --data-dir)"
        );
        for bad in [
            "postgres://u:s3cretpw@[::1/x",
            "s3cretpw",
            "postgres://u:s3cretpw@h:99999/x",
        ] {
            let error = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(!error.contains("s3cretpw"), "{error}");
        }
        assert!(StoreUrl::parse("postgresql://h/x").is_ok());
    }
}
