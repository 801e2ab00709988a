//! Settings as plain data, with their defaults as named constants, one type
//! per layer: [`ServiceConfig`] for the rules `TokenService` applies,
//! [`ServerConfig`] for how `server::run` serves (TLS, timeouts, limits),
//! [`StoreConfig`] for where tokens are kept. Command-line parsing lives in
//! the binaries.

use std::{path::PathBuf, time::Duration};

use crate::{connections::ConnectionLimits, model::Role, source::TrustedProxies};

/// Where `sts-server serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// The sled data directory unless told otherwise, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sts-data";
/// The role a caller's token needs for every management call (StackState's admin role).
pub const DEFAULT_ADMIN_ROLE: &str = "stackstate-admin";
/// The role a caller's token needs to ask about other tokens (Kubernetes
/// TokenReview, OAuth 2.0 introspection).
pub const DEFAULT_REVIEWER_ROLE: &str = "token-reviewer";
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
pub fn bounded_setting(duration: Duration) -> Result<Duration, String> {
    if duration > MAX_SETTING_DURATION {
        return Err(format!(
            "{} is longer than the most this server takes (100 years)",
            lifetime_text(duration)
        ));
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
pub fn admin_keep_margin(margin: Duration, lifetime: &LifetimePolicy) -> Result<Duration, String> {
    bounded_setting(margin)?;
    match lifetime.max() {
        Some(max) if margin >= max => Err(format!(
            "the admin keep margin ({}) must be shorter than the maximum token lifetime ({}): no admin token could keep access that long; lower --admin-keep-margin",
            lifetime_text(margin),
            lifetime_text(max)
        )),
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
}

/// A lifetime in the largest whole unit the flags take (`90d`, `12h`,
/// `30m`, `45s`): humantime's own text turns 90 days into months and hours.
pub fn lifetime_text(lifetime: Duration) -> String {
    let seconds = lifetime.as_secs();
    match seconds {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
}

impl LifetimePolicy {
    /// A default longer than the maximum would refuse every create without
    /// an expiration; zero would make tokens born expired.
    pub fn new(max: Option<Duration>, default: Option<Duration>) -> Result<LifetimePolicy, String> {
        if max.is_some_and(|m| m.is_zero()) || default.is_some_and(|d| d.is_zero()) {
            return Err("a token lifetime must be longer than zero".into());
        }
        for lifetime in max.iter().chain(&default) {
            bounded_setting(*lifetime)?;
        }
        if let (Some(max), Some(default)) = (max, default)
            && default > max
        {
            return Err(format!(
                "the default token lifetime ({}) is longer than the maximum ({})",
                lifetime_text(default),
                lifetime_text(max)
            ));
        }
        Ok(LifetimePolicy { max, default })
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
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: MAX_PAGE_SIZE,
            refusal_summary_interval: DEFAULT_REFUSAL_SUMMARY_INTERVAL,
            last_used_resolution: DEFAULT_LAST_USED_RESOLUTION,
            lifetime: LifetimePolicy::default(),
            max_rotation_grace: DEFAULT_MAX_ROTATION_GRACE,
            admin_keep_margin: DEFAULT_ADMIN_KEEP_MARGIN,
            purge_expired_after: None,
            webhooks: None,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        let role = Role::parse(DEFAULT_ADMIN_ROLE).expect("the default admin role is valid");
        ServiceConfig::with_admin_role(role)
    }
}

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

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub urls: Vec<WebhookUrl>,
    pub secret: WebhookSecret,
    pub outbox_capacity: u64,
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub poll_interval: Duration,
}

impl WebhookConfig {
    /// The defaults, for `urls` signed with `secret`.
    pub fn new(urls: Vec<WebhookUrl>, secret: WebhookSecret) -> WebhookConfig {
        WebhookConfig {
            urls,
            secret,
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            initial_backoff: DEFAULT_WEBHOOK_BACKOFF,
            max_backoff: DEFAULT_WEBHOOK_MAX_BACKOFF,
            poll_interval: DEFAULT_WEBHOOK_POLL_INTERVAL,
        }
    }
}

/// An `http` or `https` URL events are POSTed to. It may carry
/// credentials (user info, a query), so it shows itself without them.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: url::Url,
    shown: String,
    key: String,
}

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "must be an http or https URL, not {}:",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        // What the outbox records of a delivery: a digest, so the store
        // never holds the URL's credentials.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(url.as_str().as_bytes());
        Ok(WebhookUrl {
            key: hex::encode(&digest[..8]),
            shown: shown.to_string(),
            url,
        })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// Names this webhook in the outbox's record of who has an event.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookUrl({})", self.shown)
    }
}

/// The key events are signed with (HMAC-SHA256). Shown nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn parse(secret: &str) -> Result<WebhookSecret, String> {
        if secret.len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes long (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(WebhookSecret(secret.as_bytes().to_vec()))
    }

    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// A PEM certificate chain and private key to serve TLS with.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(<redacted>)")
    }
}

/// How answers are shaped for the platforms that check tokens through us.
/// Nothing here decides whether a token is valid.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// Let the credential headers through to the service behind a proxy
    /// (ext_authz's `headers_to_remove`, `x-envoy-auth-headers-to-remove`);
    /// off by default, since a service that needs no secret should not
    /// receive one.
    pub forward_credential: bool,
    pub kubernetes_prefix: KubernetesPrefix,
    pub kubernetes_username: KubernetesUsername,
}

impl Default for IntegrationConfig {
    fn default() -> IntegrationConfig {
        IntegrationConfig {
            forward_credential: false,
            kubernetes_prefix: KubernetesPrefix::parse(DEFAULT_KUBERNETES_PREFIX)
                .expect("the default Kubernetes prefix is valid"),
            kubernetes_username: KubernetesUsername::default(),
        }
    }
}

/// The prefix of the Kubernetes user and group names of a token. Never
/// empty, and never in Kubernetes' own `system:` namespace: without it, a
/// token holding a role named `system:masters` would be a cluster admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesPrefix(String);

impl KubernetesPrefix {
    pub fn parse(prefix: &str) -> Result<KubernetesPrefix, String> {
        if prefix.is_empty() {
            return Err("must not be empty: without a prefix, a role named `system:masters` would make a token a cluster admin".into());
        }
        if prefix.starts_with("system:") {
            return Err(
                "must not start with `system:`, which Kubernetes reserves for itself".into(),
            );
        }
        // Kubernetes' own convention (`oidc:`, `system:serviceaccount:`):
        // the prefix is a whole segment, so no role can finish it into
        // another (`system` + `:masters`).
        if !prefix.ends_with(':') {
            return Err(format!(
                "must end with `:` (e.g. `{prefix}:`), so that no role can complete it into another name"
            ));
        }
        if let Some(bad) = prefix.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("must not contain {bad:?}"));
        }
        Ok(KubernetesPrefix(prefix.to_owned()))
    }

    /// `name` with the prefix. Never in Kubernetes' reserved `system:`
    /// namespace, whatever `name` is: the prefix is a whole segment (it
    /// ends with `:`) and not `system:` itself.
    pub fn apply(&self, name: &str) -> String {
        format!("{}{name}", self.0)
    }
}

/// What a token's Kubernetes user name is made of, after the prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KubernetesUsername {
    /// The token's name (`sts:<name>`): what RBAC bindings written so far
    /// name. Names are not unique: two tokens of one name are one user.
    #[default]
    Name,
    /// The token's id (`sts:<id>`): unique, and unchanged by a rename.
    Id,
}

impl KubernetesUsername {
    pub fn parse(text: &str) -> Result<KubernetesUsername, String> {
        match text {
            "name" => Ok(KubernetesUsername::Name),
            "id" => Ok(KubernetesUsername::Id),
            _ => Err("must be `name` or `id`".into()),
        }
    }
}

/// How often the token counts behind `sts_tokens` and its kin are taken
/// (a scan of every token).
pub const DEFAULT_TOKEN_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// How the server takes connections and requests: TLS, timeouts, limits,
/// shutdown, and how integrations' answers are shaped.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Serve gRPC and HTTP over TLS (rustls) on the same port; `None` is plaintext.
    pub tls: Option<TlsIdentity>,
    pub max_request_bytes: usize,
    /// Not ready but still serving, from the shutdown signal until this passes.
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub first_byte_timeout: Duration,
    /// How long a request's whole body may take, from its headers (HTTP
    /// 408 and the connection closed; an HTTP/2 stream reset).
    pub body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS: streams per connection.
    pub max_streams_per_connection: u32,
    /// The most header bytes a request may send (HTTP/1 answers 431 past
    /// it); at least [`MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
    pub integrations: IntegrationConfig,
    /// Peers whose `X-Forwarded-For` (or `Forwarded`) names the source of
    /// what they forward: for the audit, rate limits and connection limits.
    pub trusted_proxies: TrustedProxies,
    /// How many connections may be open, in total and per source. The
    /// default bounds nothing; the daemon derives bounds from the
    /// descriptor limit (`ConnectionLimits::for_descriptors`).
    pub connection_limits: ConnectionLimits,
    /// How often the token-count metrics are refreshed.
    pub token_summary_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            tls: None,
            max_request_bytes: MAX_REQUEST_BYTES,
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            http2_keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            integrations: IntegrationConfig::default(),
            trusted_proxies: TrustedProxies::none(),
            connection_limits: ConnectionLimits::UNBOUNDED,
            token_summary_interval: DEFAULT_TOKEN_SUMMARY_INTERVAL,
        }
    }
}

/// Where tokens are kept.
#[derive(Clone)]
pub enum StoreConfig {
    /// The embedded sled store in `data_dir`; creates are refused while its
    /// disk has less than `disk_reserve` bytes free.
    Sled {
        data_dir: PathBuf,
        disk_reserve: u64,
    },
    /// PostgreSQL at a libpq-style URL, shared by any number of replicas.
    Postgres { url: StoreUrl },
}

/// A `postgres://` URL. It usually comes from a Secret and may hold a
/// password, so it shows itself (`Display`, `Debug`) with the password
/// replaced, and every error about it says what is wrong without echoing it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
    /// The URL with its password replaced: all that is ever shown.
    shown: String,
    /// The password as written and percent-decoded: what a driver's message
    /// might quote, so both are scrubbed from error text.
    passwords: Vec<String>,
}

/// Why a `--store` value is refused. Never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    #[error("expected a postgres:// URL, got {shown} (the sled store is chosen with --data-dir)")]
    Scheme { shown: String },
    #[error("not a valid URL ({reason}); it is not shown because it may hold a password")]
    Unparsable { reason: String },
}

/// What replaces a password wherever a URL is shown.
const HIDDEN: &str = "***";

impl StoreUrl {
    pub fn parse(text: &str) -> Result<StoreUrl, StoreUrlError> {
        let parsed = url::Url::parse(text).map_err(|e| StoreUrlError::Unparsable {
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(StoreUrlError::Scheme {
                shown: redacted(parsed),
            });
        }
        // The password may sit in the user info or (sqlx reads it there
        // too) in a `password` query parameter; each is kept as written
        // and percent-decoded.
        let mut passwords: Vec<String> = Vec::new();
        let mut keep = |raw: &str| {
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned();
            for password in [raw.to_owned(), decoded] {
                if !password.is_empty() && !passwords.contains(&password) {
                    passwords.push(password);
                }
            }
        };
        if let Some(password) = parsed.password() {
            keep(password);
        }
        for pair in parsed.query().unwrap_or_default().split('&') {
            if let Some(raw) = pair.strip_prefix("password=") {
                keep(raw);
                keep(&raw.replace('+', " "));
            }
        }
        Ok(StoreUrl {
            url: text.to_owned(),
            shown: redacted(parsed),
            passwords,
        })
    }

    /// The URL with its password, for the driver alone.
    pub fn with_password(&self) -> &str {
        &self.url
    }

    /// `text` with this URL's password replaced: for a driver's error
    /// message before it is logged or printed.
    pub fn scrub(&self, text: &str) -> String {
        self.passwords
            .iter()
            .fold(text.to_owned(), |text, password| {
                text.replace(password, HIDDEN)
            })
    }
}

/// `url` with its password (if any) replaced by [`HIDDEN`].
fn redacted(mut url: url::Url) -> String {
    if url.password().is_some() {
        // Only URLs that cannot hold a password refuse one, and this one does.
        let _ = url.set_password(Some(HIDDEN));
    }
    if url.query_pairs().any(|(name, _)| name == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "password" {
                    HIDDEN.into()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl std::fmt::Debug for StoreConfig {
    /// The URL may hold a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sled {
                data_dir,
                disk_reserve,
            } => f
                .debug_struct("Sled")
                .field("data_dir", data_dir)
                .field("disk_reserve", disk_reserve)
                .finish(),
            StoreConfig::Postgres { url } => f.debug_struct("Postgres").field("url", url).finish(),
        }
    }
}

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
        assert!(error.contains("must end with `:`"), "{error}");
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
        assert!(error.contains("--admin-keep-margin"), "{error}");
        assert_eq!(admin_keep_margin(day / 2, &capped), Ok(day / 2));
        let open = LifetimePolicy::default();
        assert_eq!(admin_keep_margin(day, &open), Ok(day));
    }

    #[test]
    fn lifetimes_and_graces_are_bounded_so_computed_times_stay_in_range() {
        let century = MAX_SETTING_DURATION;
        let more = century + Duration::from_secs(1);
        assert_eq!(bounded_setting(century), Ok(century));
        assert!(bounded_setting(more).unwrap_err().contains("100 years"));
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
