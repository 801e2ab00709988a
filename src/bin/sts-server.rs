//! `sts-server`: the daemon (`serve`), the first-admin-token tool
//! (`bootstrap`) and moving tokens between stores (`export`, `import`).
//! Parses arguments, sets up logging, calls `sts::server::daemon`.

/// Allocation is a tenth of a request's instructions under glibc's malloc;
/// mimalloc's cost less (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sts::{
    config::{
        ConsoleConfig, ConsolePrefix, DEFAULT_ADMIN_KEEP_MARGIN, DEFAULT_ADMIN_ROLE,
        DEFAULT_BODY_TIMEOUT, DEFAULT_CONSOLE_PATH_PREFIX, DEFAULT_CONSOLE_SESSION_IDLE,
        DEFAULT_CONSOLE_SESSION_LIFETIME, DEFAULT_DATA_DIR, DEFAULT_KUBERNETES_PREFIX,
        DEFAULT_LAST_USED_RESOLUTION, DEFAULT_LISTEN, DEFAULT_MANAGER_ROLE,
        DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_ROTATION_GRACE, DEFAULT_MAX_STREAMS_PER_CONNECTION,
        DEFAULT_MAX_WATCH_STREAMS, DEFAULT_OUTBOX_CAPACITY, DEFAULT_RATE_LIMIT_ON_ERROR,
        DEFAULT_RECORD_SOURCES, DEFAULT_REVIEWER_ROLE, DEFAULT_SHUTDOWN_DELAY,
        DEFAULT_WATCHER_ROLE, IntegrationConfig, KubernetesPrefix, KubernetesUsername,
        LifetimePolicy, RateLimitConfig, ServerConfig, ServiceConfig, StoreConfig, StoreUrl,
        WebhookConfig, WebhookSecret, WebhookUrl, admin_keep_margin,
        setting::{self, Span, span},
    },
    connections::{self, ConnectionLimits, DEFAULT_MAX_REQUESTS_IN_FLIGHT},
    logging::ExitSafe,
    model::{NewToken, Role},
    server::daemon,
    source::TrustedProxies,
    store::sled::DEFAULT_DISK_RESERVE,
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Name of the token `bootstrap` creates unless told otherwise.
const DEFAULT_BOOTSTRAP_NAME: &str = "bootstrap-admin";
const MIB: u64 = 1024 * 1024;
/// What is logged when RUST_LOG is unset (or unusable). h2 warns once for
/// every connection it sends away for abuse (rapid resets): anyone could
/// fill the log with those, so the server counts and summarizes them
/// itself (`connections::Connections::misbehaved`) and h2's own go quiet.
const DEFAULT_LOG_FILTER: &str = "info,h2=error";

#[derive(Parser)]
#[command(name = "sts-server", version, about = "Service-token server")]
struct Cli {
    /// Log line format (levels via RUST_LOG, default info).
    #[arg(long, env = "STS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the TokenService gRPC API (with health and reflection) and the
    /// HTTP side (status, forward-auth, REST, probes, metrics) on one port.
    Serve(Box<ServeArgs>),
    /// Create an admin token in the data directory and print it once on stdout.
    /// Run it while the server is stopped: the server holds the store.
    Bootstrap(BootstrapArgs),
    /// Write every token (ids and hashes, never secrets) as JSON lines to
    /// stdout. A sled store must not be in use by a running server.
    Export(StoreOnlyArgs),
    /// Add tokens from an export (JSON lines on stdin, or --file) to the
    /// store, keeping their ids and hashes. Tokens already there are left
    /// alone, so it can be run again.
    Import(ImportArgs),
}

#[derive(Args)]
struct StoreOnlyArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    reserve: ReserveArgs,
    /// Read the export from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// Which store: every command has these.
#[derive(Args)]
struct StoreArgs {
    /// The sled data directory (created with mode 0700 if missing; refused
    /// if group or others may write it, or another user owns it).
    #[arg(long, env = "STS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Keep tokens in PostgreSQL instead of sled, for several replicas:
    /// a URL such as postgres://user:password@host:5432/database. Never
    /// echoed with its password.
    #[arg(long, env = "STS_STORE", hide_env_values = true)]
    store: Option<String>,
}

/// For the commands that write tokens.
#[derive(Args)]
struct ReserveArgs {
    /// Disk space (MiB) kept for deletes and disables, held in the file
    /// `disk-reserve` in the data directory and given back when the disk
    /// runs out; creates, changes and rotations need as much free beside
    /// it. 0: none.
    #[arg(long, env = "STS_DISK_RESERVE_MIB", default_value_t = DEFAULT_DISK_RESERVE / MIB)]
    disk_reserve_mib: u64,
}

/// For the commands that need to know who is an admin.
#[derive(Args)]
struct AdminArgs {
    /// The role a token needs to manage tokens: every call but Validate
    /// (create, get, list, update, rotate, delete).
    #[arg(long, env = "STS_ADMIN_ROLE", default_value = DEFAULT_ADMIN_ROLE, value_parser = setting::role)]
    admin_role: Role,
}

#[derive(Args)]
struct ServeArgs {
    /// Address (host:port) to serve gRPC and HTTP on; a host name is served
    /// on every address it resolves to.
    #[arg(long, env = "STS_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Also serve /healthz and /readyz, plain HTTP, on this address
    /// (host:port), from a thread of their own: probes sent here are
    /// answered while the main port is flooded. Unset: probes only on
    /// --listen.
    #[arg(long, env = "STS_PROBE_LISTEN")]
    probe_listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    reserve: ReserveArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// PEM certificate chain: serve gRPC and HTTP over TLS on the same port.
    #[arg(long, env = "STS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "STS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// On SIGTERM, report not-ready but keep serving this long (e.g. 5s,
    /// 500ms, 0s) so load balancers stop sending first; then refuse new
    /// connections and finish in-flight calls.
    #[arg(long, env = "STS_SHUTDOWN_DELAY", default_value_t = span(DEFAULT_SHUTDOWN_DELAY), value_parser = setting::duration)]
    shutdown_delay: Span,
    /// The most header bytes a request may send (HTTP/1 answers 431 past
    /// it; HTTP/2 announces it as its header list size). At least 8192.
    #[arg(long, env = "STS_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = setting::header_bytes)]
    max_header_bytes: usize,
    /// Streams one HTTP/2 connection (a gRPC channel) may have open at
    /// once; a client waits for a free one past it. With
    /// --max-connections it bounds the requests the server holds.
    #[arg(long, env = "STS_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// How long a request's whole body may take to arrive, from its headers
    /// (e.g. 30s): past it HTTP/1.1 answers 408 and closes the connection,
    /// HTTP/2 resets the stream. A body is read only after the request's
    /// credential was accepted.
    #[arg(long, env = "STS_BODY_TIMEOUT", default_value_t = span(DEFAULT_BODY_TIMEOUT), value_parser = setting::positive_duration)]
    body_timeout: Span,
    /// Addresses or CIDRs of the reverse proxies in front of this server
    /// (e.g. 10.0.0.0/8,fd00::/8). A request from one of them comes from
    /// the rightmost `X-Forwarded-For` (or `Forwarded: for=`) address that
    /// is not itself a trusted proxy: that source is what the audit, rate
    /// limits and connection limits see. Default: none (the TCP peer).
    #[arg(long, env = "STS_TRUSTED_PROXIES", default_value = "", value_parser = setting::trusted_proxies)]
    trusted_proxies: TrustedProxies,
    /// The most connections open at once. At the bound an idle keep-alive
    /// connection is closed to make room; with none idle, a new connection
    /// is closed at once. Default: the open-file limit (raised to its hard
    /// limit at start) less 128, from 16 to 10000.
    #[arg(long, env = "STS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// The most connections open at once from one source (an IPv4 address
    /// or an IPv6 /64; --trusted-proxies exempt); past it a new connection
    /// from that source is closed at once. Default: a quarter of
    /// --max-connections.
    #[arg(long, env = "STS_MAX_CONNECTIONS_PER_SOURCE", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_source: Option<u32>,
    /// The most requests answered at once, on all connections together;
    /// past it a request is answered at once with HTTP 503 (Retry-After)
    /// or gRPC RESOURCE_EXHAUSTED, except the probes and /metrics. A
    /// streamed answer's body does not count once its headers are out.
    #[arg(long, env = "STS_MAX_REQUESTS_IN_FLIGHT", default_value_t = DEFAULT_MAX_REQUESTS_IN_FLIGHT as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_in_flight: u32,
    /// The most Watch streams open at once on this server; past it Watch
    /// is answered RESOURCE_EXHAUSTED. Streams are long-lived, so they are
    /// counted here and not in --max-requests-in-flight.
    #[arg(long, env = "STS_MAX_WATCH_STREAMS", default_value_t = DEFAULT_MAX_WATCH_STREAMS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_watch_streams: u32,
    /// How many changes a Watch stream may fall behind by (a client
    /// reading slowly, a burst of changes such as a purge) before it is
    /// told to RESYNC and ended; its client then starts from an empty
    /// cache. One buffer of this many small events serves every stream.
    #[arg(long, env = "STS_WATCH_BACKLOG", default_value_t = sts::changes::DEFAULT_BACKLOG as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    watch_backlog: u32,
    /// How precisely each token's last use is kept (e.g. 60s, 1s): at most
    /// one store write per token per this long, and what a crash may lose.
    /// 0s turns last-used tracking off.
    #[arg(long, env = "STS_LAST_USED_RESOLUTION", default_value_t = span(DEFAULT_LAST_USED_RESOLUTION), value_parser = setting::duration)]
    last_used_resolution: Span,
    /// Record the last five addresses each token was used from, with the
    /// last uses (shown to its managers only), and announce a new one
    /// (`token.new_source`). `false` where addresses are personal data.
    #[arg(long, env = "STS_RECORD_SOURCES", default_value_t = DEFAULT_RECORD_SOURCES, action = clap::ArgAction::Set, value_name = "true|false")]
    record_sources: bool,
    /// Refuse to create a token without allowed sources, or to remove a
    /// token's last one; `list --over-policy` shows the tokens without.
    /// The bootstrap token is exempt (it is the way in for whoever holds
    /// the store itself).
    #[arg(long, env = "STS_REQUIRE_SOURCE_BINDING")]
    require_source_binding: bool,
    /// A rate limit every token created without any gets, NAME=LIMIT/PERIOD
    /// (e.g. burst=20/1s; repeatable or comma-separated; none by default).
    /// Copied into the token, so each token's limits are its own and
    /// visible; a create with --no-rate-limit gets none.
    #[arg(long, env = "STS_DEFAULT_RATE_LIMIT", value_delimiter = ',', value_parser = setting::rate_limit, value_name = "NAME=LIMIT/PERIOD")]
    default_rate_limit: Vec<sts::model::RateLimit>,
    /// Count rate limits in this Redis, shared by every replica given the
    /// same one (redis://[user:password@]host:port[/db]; never echoed with
    /// its password). Unset: each server counts alone.
    #[arg(
        long,
        env = "STS_RATE_LIMIT_STORE",
        hide_env_values = true,
        value_name = "URL"
    )]
    rate_limit_store: Option<String>,
    /// While the rate-limit store is away: `open`, each replica counts
    /// alone (limits hold per replica); `closed`, checks of limited tokens
    /// are refused (UNAVAILABLE, 503). Counted in
    /// sts_rate_limit_store_errors_total, logged once per outage.
    #[arg(long, env = "STS_RATE_LIMIT_ON_ERROR", default_value = DEFAULT_RATE_LIMIT_ON_ERROR.as_str(), value_parser = setting::on_store_error, value_name = "open|closed")]
    rate_limit_on_error: sts::rate_limit::OnStoreError,
    /// The role a token needs to review other tokens: Kubernetes
    /// TokenReview and OAuth 2.0 introspection callers.
    #[arg(long, env = "STS_REVIEWER_ROLE", default_value = DEFAULT_REVIEWER_ROLE, value_parser = setting::role)]
    reviewer_role: Role,
    /// The role that lets a token manage the tokens it makes: create them
    /// with a subset of its own roles (never the admin role), expiring no
    /// later than itself, bound and limited within itself; and see,
    /// change, rotate, disable and delete only those (docs/delegation.md).
    #[arg(long, env = "STS_MANAGER_ROLE", default_value = DEFAULT_MANAGER_ROLE, value_parser = setting::role)]
    manager_role: Role,
    /// Serve the web console (docs/console.md) on this port; `false`: its
    /// paths answer 404.
    #[arg(long, env = "STS_CONSOLE", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    console: bool,
    /// Where the console is served: its links, redirects and cookie follow
    /// it (e.g. /tokens/console behind a proxy that forwards that path).
    #[arg(long, env = "STS_CONSOLE_PATH_PREFIX", default_value = DEFAULT_CONSOLE_PATH_PREFIX, value_parser = console_prefix)]
    console_path_prefix: ConsolePrefix,
    /// A console session unused this long ends (on every replica).
    #[arg(long, env = "STS_CONSOLE_SESSION_IDLE", default_value_t = span(DEFAULT_CONSOLE_SESSION_IDLE), value_parser = setting::positive_duration)]
    console_session_idle: Span,
    /// A console session ends this long after its sign-in, used or not.
    #[arg(long, env = "STS_CONSOLE_SESSION_LIFETIME", default_value_t = span(DEFAULT_CONSOLE_SESSION_LIFETIME), value_parser = setting::positive_duration)]
    console_session_lifetime: Span,
    /// The role a token needs to watch changes (Watch) and report the uses
    /// it answered from its own cache (ReportUses): what a service
    /// validating tokens with the client crate holds.
    #[arg(long, env = "STS_WATCHER_ROLE", default_value = DEFAULT_WATCHER_ROLE, value_parser = setting::role)]
    watcher_role: Role,
    /// Let managers grant the manager role, so a team's manager may make
    /// managers below it (at most 8 deep). Off: only admins make managers.
    #[arg(long, env = "STS_MANAGERS_MAY_DELEGATE")]
    managers_may_delegate: bool,
    /// Disable a token at once when one of its last five retired secrets
    /// (or a previous secret past its grace) is presented again, as
    /// GitLab does. Off: the reuse is announced (token.reuse_detected, the
    /// audit log, a metric) and refused, nothing more. On, whoever holds an
    /// old leaked secret can disable the token (docs/delegation.md).
    #[arg(long, env = "STS_REVOKE_ON_REUSE")]
    revoke_on_reuse: bool,
    /// What the Kubernetes user and group names of a token start with
    /// (`<prefix><name>`, `<prefix><role>`). Required, ending with `:` and
    /// not `system:`: otherwise a role could make a token a cluster admin
    /// (`system` + `:masters`).
    #[arg(long, env = "STS_KUBERNETES_PREFIX", default_value = DEFAULT_KUBERNETES_PREFIX, value_parser = KubernetesPrefix::parse)]
    kubernetes_prefix: KubernetesPrefix,
    /// What a token's Kubernetes user name is after the prefix: `name`
    /// (`sts:<name>`, what RBAC bindings name; names are not unique) or
    /// `id` (`sts:<id>`, unique and unchanged by a rename).
    #[arg(long, env = "STS_KUBERNETES_USERNAME", default_value_t = KubernetesUsername::default(), value_parser = KubernetesUsername::parse)]
    kubernetes_username: KubernetesUsername,
    /// Let the credential headers through to the service behind Envoy
    /// (ext_authz); by default Envoy is told to remove them.
    #[arg(long, env = "STS_FORWARD_CREDENTIAL")]
    forward_credential: bool,
    /// The longest a token may live (e.g. 90d): a create, an expiration
    /// change or a rotation that would leave a token expiring later than
    /// now + this, or never, is refused. Tokens made earlier keep working.
    #[arg(long, env = "STS_MAX_TOKEN_LIFETIME", value_parser = setting::duration)]
    max_token_lifetime: Option<Span>,
    /// The longest a token may live from its creation, however often it
    /// is rotated (e.g. 365d): a create, an expiration change or a
    /// rotation (a self-rotation above all) that would leave a token
    /// expiring later than its creation + this, or never, is refused.
    #[arg(long, env = "STS_MAX_TOKEN_AGE", value_parser = setting::duration)]
    max_token_age: Option<Span>,
    /// No change may leave no enabled admin token valid for at least this
    /// long from now (e.g. 24h): an admin token about to expire does not
    /// count as the one that lets the last long-lived admin go. Must be
    /// shorter than --max-token-lifetime.
    #[arg(long, env = "STS_ADMIN_KEEP_MARGIN", default_value_t = span(DEFAULT_ADMIN_KEEP_MARGIN), value_parser = setting::lifetime)]
    admin_keep_margin: Span,
    /// The longest grace period a rotation may give the previous secret
    /// (e.g. 7d); a longer one is refused. At most 100 years.
    #[arg(long, env = "STS_MAX_ROTATION_GRACE", default_value_t = span(DEFAULT_MAX_ROTATION_GRACE), value_parser = setting::lifetime)]
    max_rotation_grace: Span,
    /// The expiration, from now, of a token created without one (e.g. 30d).
    #[arg(long, env = "STS_DEFAULT_TOKEN_LIFETIME", value_parser = setting::duration)]
    default_token_lifetime: Option<Span>,
    /// Delete tokens that expired this long ago (e.g. 30d), each audited;
    /// checked every minute. Off by default: expired tokens are kept.
    #[arg(long, env = "STS_PURGE_EXPIRED_AFTER", value_parser = setting::duration)]
    purge_expired_after: Option<Span>,
    /// POST every token event (created, updated, rotated, disabled,
    /// enabled, deleted, purged, leaked, expiring, expired) to this URL,
    /// signed with --webhook-secret. Repeatable; comma-separated in the
    /// environment variable.
    #[arg(long = "webhook-url", env = "STS_WEBHOOK_URL", value_delimiter = ',', value_parser = WebhookUrl::parse)]
    webhook_urls: Vec<WebhookUrl>,
    /// The key events are signed with (HMAC-SHA256, header
    /// X-Sts-Signature-256); at least 16 bytes. Best given through the
    /// environment, from a Secret.
    #[arg(long, env = "STS_WEBHOOK_SECRET", hide_env_values = true, value_parser = SecretArg::new)]
    webhook_secret: Option<SecretArg>,
    /// Most events kept undelivered; beyond it new events are dropped
    /// (counted in sts_events_dropped_total), never the change itself.
    #[arg(long, env = "STS_EVENT_OUTBOX_CAPACITY", default_value_t = DEFAULT_OUTBOX_CAPACITY)]
    event_outbox_capacity: u64,
}

/// A secret as given on the command line, checked only after clap is done:
/// clap's message for a value its parser refuses quotes the value.
#[derive(Clone)]
struct SecretArg(String);

impl SecretArg {
    fn new(text: &str) -> Result<SecretArg, std::convert::Infallible> {
        Ok(SecretArg(text.to_owned()))
    }
}

impl ServeArgs {
    fn webhooks(&self) -> anyhow::Result<Option<WebhookConfig>> {
        let secret = match &self.webhook_secret {
            Some(SecretArg(text)) => Some(
                WebhookSecret::parse(text)
                    .map_err(|e| anyhow::anyhow!("invalid --webhook-secret: {e}"))?,
            ),
            None => None,
        };
        match (secret, self.webhook_urls.is_empty()) {
            // A secret mounted for every pod, URLs set where events are
            // wanted: not an error, but worth a word.
            (Some(_), true) => {
                tracing::warn!(
                    "--webhook-secret is set but no --webhook-url: no events are recorded or delivered"
                );
                Ok(None)
            }
            (None, true) => Ok(None),
            (None, false) => anyhow::bail!(
                "--webhook-url needs --webhook-secret (STS_WEBHOOK_SECRET) to sign events with"
            ),
            (Some(secret), false) => Ok(Some(WebhookConfig {
                outbox_capacity: self.event_outbox_capacity,
                ..WebhookConfig::new(self.webhook_urls.clone(), secret)
            })),
        }
    }
}

#[derive(Args)]
struct BootstrapArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    reserve: ReserveArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Name of the new token.
    #[arg(long, short = 'n', default_value = DEFAULT_BOOTSTRAP_NAME)]
    name: String,
    /// Roles to give the token besides the admin role, which it always has
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
}

impl StoreArgs {
    fn config(&self, reserve: Option<&ReserveArgs>) -> anyhow::Result<StoreConfig> {
        Ok(match &self.store {
            // The parse error never holds the URL: it may hold a password.
            Some(url) => StoreConfig::Postgres {
                url: StoreUrl::parse(url).context("invalid --store")?,
            },
            None => StoreConfig::Sled {
                data_dir: self.data_dir.clone(),
                disk_reserve: reserve.map_or(DEFAULT_DISK_RESERVE, |r| {
                    r.disk_reserve_mib.saturating_mul(MIB)
                }),
            },
        })
    }
}

/// How long the runtime waits, once the command is done, for work still
/// running on its blocking pool: a store call stuck on a disk that stopped
/// answering must not keep the process from exiting.
const RUNTIME_CLOSE_DEADLINE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    // Whatever this process creates (store files, snapshots) is its own
    // alone, whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sts-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Bootstrap(args) => bootstrap(args).await,
            Command::Export(args) => export(args).await,
            Command::Import(args) => import(args).await,
        }
    });
    runtime.shutdown_timeout(RUNTIME_CLOSE_DEADLINE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sts-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // An unusable RUST_LOG is said out loud (once logging works), not
    // silently replaced: an operator who asked for debug logs must know
    // they are not getting them.
    let (filter, refused) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some(e)),
        },
        _ => (EnvFilter::new(DEFAULT_LOG_FILTER), None),
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(ExitSafe::new(logs))
        .init();
    if let Some(e) = refused {
        tracing::warn!(error = %e, "RUST_LOG is not a valid log filter; logging at {DEFAULT_LOG_FILTER} instead");
    }
}

/// The connection bounds given, the rest derived from the open-file limit
/// (raised to its hard limit first); a warning when the bounds given leave
/// too few descriptors for everything else.
fn connection_limits(args: &ServeArgs) -> ConnectionLimits {
    let descriptors = connections::raise_descriptor_limit();
    let limits = ConnectionLimits {
        max_requests_in_flight: args.max_requests_in_flight as usize,
        ..ConnectionLimits::resolve(
            args.max_connections.map(|n| n as usize),
            args.max_connections_per_source.map(|n| n as usize),
            descriptors,
        )
    };
    if let Some(descriptors) = descriptors {
        let spare = descriptors.saturating_sub(connections::RESERVED_DESCRIPTORS);
        if limits.max_total as u64 > spare {
            tracing::warn!(
                max_connections = limits.max_total,
                open_file_limit = descriptors,
                "--max-connections allows more connections than the open-file limit leaves room for ({spare}); past it accepting pauses until descriptors free up"
            );
        }
    }
    limits
}

/// `--console-path-prefix`, for clap.
fn console_prefix(text: &str) -> Result<ConsolePrefix, setting::SettingError> {
    ConsolePrefix::parse(text)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let webhooks = args.webhooks()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(daemon::read_tls(cert, key)?),
        _ => None,
    };
    let server = ServerConfig {
        tls,
        shutdown_delay: *args.shutdown_delay,
        max_header_bytes: args.max_header_bytes,
        max_streams_per_connection: args.max_streams_per_connection,
        body_timeout: *args.body_timeout,
        connection_limits: connection_limits(&args),
        trusted_proxies: args.trusted_proxies,
        integrations: IntegrationConfig {
            forward_credential: args.forward_credential,
            kubernetes_prefix: args.kubernetes_prefix,
            kubernetes_username: args.kubernetes_username,
        },
        console: args.console.then(|| ConsoleConfig {
            prefix: args.console_path_prefix.clone(),
        }),
        ..ServerConfig::default()
    };
    let lifetime = LifetimePolicy::new(
        args.max_token_lifetime.map(Into::into),
        args.default_token_lifetime.map(Into::into),
    )
    .and_then(|policy| policy.with_max_age(args.max_token_age.map(Into::into)))
    .map_err(|e| anyhow::anyhow!("invalid token lifetime policy: {e}"))?;
    let service = ServiceConfig {
        webhooks,
        last_used_resolution: *args.last_used_resolution,
        reviewer_role: args.reviewer_role,
        manager_role: args.manager_role,
        managers_may_delegate: args.managers_may_delegate,
        watcher_role: args.watcher_role,
        max_watch_streams: args.max_watch_streams as usize,
        watch_backlog: args.watch_backlog as usize,
        revoke_on_reuse: args.revoke_on_reuse,
        lifetime,
        max_rotation_grace: *args.max_rotation_grace,
        admin_keep_margin: admin_keep_margin(*args.admin_keep_margin, &lifetime)
            .map_err(|e| anyhow::anyhow!("invalid --admin-keep-margin: {e}"))?,
        purge_expired_after: args.purge_expired_after.map(Into::into),
        record_sources: args.record_sources,
        require_source_binding: args.require_source_binding,
        default_rate_limits: setting::rate_limits(args.default_rate_limit.clone())
            .map_err(|e| anyhow::anyhow!("invalid --default-rate-limit: {e}"))?,
        console_session_idle: *args.console_session_idle,
        console_session_lifetime: *args.console_session_lifetime,
        ..ServiceConfig::with_admin_role(args.admin.admin_role.clone())
    };
    let store = args.store.config(Some(&args.reserve))?;
    let rate_limits = RateLimitConfig {
        store: args
            .rate_limit_store
            .as_deref()
            .map(StoreUrl::parse_redis)
            .transpose()
            .map_err(|e| anyhow::anyhow!("invalid --rate-limit-store: {e}"))?,
        on_error: args.rate_limit_on_error,
    };
    daemon::serve(
        &args.listen,
        args.probe_listen.as_deref(),
        &store,
        &rate_limits,
        service,
        server,
        daemon::shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    let new = NewToken::bootstrap(&args.name, &args.admin.admin_role, &args.roles)?;
    let store = args.store.config(Some(&args.reserve))?;
    let (token, created) = daemon::bootstrap(&store, new).await?;
    eprintln!(
        "Created service token {} ({}). It is printed below and will not be shown again.",
        created.id, created.name
    );
    println!("{}", token.expose_secret());
    Ok(())
}

async fn export(args: StoreOnlyArgs) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = daemon::export(&args.store.config(None)?, &mut out).await?;
    eprintln!("Exported {written} service tokens.");
    Ok(())
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let store = args.store.config(Some(&args.reserve))?;
    let summary = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            daemon::import(&store, std::io::BufReader::new(file)).await?
        }
        None => daemon::import(&store, std::io::stdin().lock()).await?,
    };
    eprintln!(
        "Imported service tokens: {} added, {} already there, {} in conflict.",
        summary.added,
        summary.already_there,
        summary.conflicts.len()
    );
    for conflict in &summary.conflicts {
        eprintln!("  not imported: {conflict}");
    }
    if !summary.conflicts.is_empty() {
        anyhow::bail!("some tokens conflict with tokens already in the store");
    }
    Ok(())
}
