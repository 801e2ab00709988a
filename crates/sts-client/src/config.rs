//! What a [`crate::Validator`] is told: where the server is, the token it
//! watches with, and how stale an answer it may give. Defaults are named
//! constants.

use std::time::Duration;

/// How long without a heartbeat the cache is still trusted.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5);
/// How long a refusal is remembered.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Tokens kept in memory at most (and as many refusals).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How often uses answered from memory are reported.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a call to the server may take before it counts as unreachable.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// First and longest wait between reconnection attempts of the stream.
pub(crate) const RECONNECT_FIRST: Duration = Duration::from_millis(100);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Why a configuration cannot be used. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The endpoint is not a URI.
    #[error("the server endpoint is not a valid URI (e.g. http://sts:8080)")]
    Endpoint,
    /// The watcher token is not a well-formed service token.
    #[error("the watcher token is not a service token: {0}")]
    Token(sts_api::token::MalformedToken),
}

/// How a [`crate::Validator`] reaches the server and how stale it may be.
#[derive(Clone)]
pub struct Config {
    pub(crate) endpoint: String,
    pub(crate) token: String,
    pub(crate) max_staleness: Duration,
    pub(crate) serve_stale_for: Option<Duration>,
    pub(crate) negative_ttl: Duration,
    pub(crate) capacity: usize,
    pub(crate) report_interval: Option<Duration>,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("max_staleness", &self.max_staleness)
            .field("serve_stale_for", &self.serve_stale_for)
            .field("negative_ttl", &self.negative_ttl)
            .field("capacity", &self.capacity)
            .field("report_interval", &self.report_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Config {
    /// The server at `endpoint` (`http://host:port`, or `https://`), and
    /// the token this service watches and reports with: one holding the
    /// server's watcher role.
    pub fn new(
        endpoint: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<Config, ConfigError> {
        let endpoint = endpoint.into();
        let token = token.into();
        endpoint
            .parse::<http::Uri>()
            .map_err(|_| ConfigError::Endpoint)?;
        sts_api::token::TokenHash::of_presented(&token).map_err(ConfigError::Token)?;
        Ok(Config {
            endpoint,
            token,
            max_staleness: DEFAULT_MAX_STALENESS,
            serve_stale_for: None,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            capacity: DEFAULT_CAPACITY,
            report_interval: Some(DEFAULT_REPORT_INTERVAL),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// How long without a heartbeat of the stream the cache still answers
    /// (default 5 s); past it every check goes to the server.
    pub fn max_staleness(mut self, max: Duration) -> Config {
        self.max_staleness = max;
        self
    }

    /// While the server is unreachable, keep accepting cached tokens for
    /// this long past the stream's last heartbeat (default: never, fail
    /// closed). A token revoked meanwhile passes too: that is the trade.
    pub fn serve_stale_for(mut self, longest: Duration) -> Config {
        self.serve_stale_for = Some(longest);
        self
    }

    /// How long a refusal is remembered (default 1 s; zero: never).
    pub fn negative_ttl(mut self, ttl: Duration) -> Config {
        self.negative_ttl = ttl;
        self
    }

    /// Tokens kept at most (default 100,000), and as many refusals. A full
    /// cache keeps what it holds: new tokens are asked of the server.
    pub fn capacity(mut self, capacity: usize) -> Config {
        self.capacity = capacity;
        self
    }

    /// How often uses answered from memory are reported (default 1 s);
    /// `None` reports none.
    pub fn report_interval(mut self, every: Option<Duration>) -> Config {
        self.report_interval = every;
        self
    }

    /// How long a call to the server may take (default 2 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Config {
        self.request_timeout = timeout;
        self
    }
}
