//! How `server::run` serves: TLS, timeouts, bounds, trusted proxies and
//! the check surfaces' integrations (Kubernetes names, forwarding the
//! credential).

use std::time::Duration;

use super::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_KUBERNETES_PREFIX,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_SHUTDOWN_DELAY,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_TLS_HANDSHAKE_TIMEOUT, HTTP2_KEEPALIVE_INTERVAL,
    HTTP2_KEEPALIVE_TIMEOUT, MAX_CHECK_REQUEST_BYTES, MAX_REQUEST_BYTES, SettingError,
};
use crate::{connections::ConnectionLimits, source::TrustedProxies};

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
    pub fn parse(prefix: &str) -> Result<KubernetesPrefix, SettingError> {
        if prefix.is_empty() {
            return Err(SettingError::new(
                "must not be empty: without a prefix, a role named `system:masters` would make a token a cluster admin",
            ));
        }
        if prefix.starts_with("system:") {
            return Err(SettingError::new(
                "must not start with `system:`, which Kubernetes reserves for itself",
            ));
        }
        // Kubernetes' own convention (`oidc:`, `system:serviceaccount:`):
        // the prefix is a whole segment, so no role can finish it into
        // another (`system` + `:masters`).
        if !prefix.ends_with(':') {
            return Err(SettingError::new(format!(
                "must end with `:` (e.g. `{prefix}:`), so that no role can complete it into another name"
            )));
        }
        if let Some(bad) = prefix.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(SettingError::new(format!("must not contain {bad:?}")));
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

/// As the flag takes it: `name` or `id`.
impl std::fmt::Display for KubernetesUsername {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KubernetesUsername::Name => "name",
            KubernetesUsername::Id => "id",
        })
    }
}

impl KubernetesUsername {
    pub fn parse(text: &str) -> Result<KubernetesUsername, SettingError> {
        match text {
            "name" => Ok(KubernetesUsername::Name),
            "id" => Ok(KubernetesUsername::Id),
            _ => Err(SettingError::new("must be `name` or `id`")),
        }
    }
}

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
    /// Largest Envoy ext_authz `Check` accepted.
    pub max_check_request_bytes: usize,
    /// The web console (`None`: off, its paths answer 404).
    pub console: Option<super::ConsoleConfig>,
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
            max_check_request_bytes: MAX_CHECK_REQUEST_BYTES,
            console: Some(super::ConsoleConfig::default()),
        }
    }
}
