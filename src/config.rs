//! Server settings as plain data, with their defaults as named constants.
//! Command-line parsing lives in the binaries.

use std::time::Duration;

use crate::model::Role;

/// Where `sts-server serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// The sled data directory unless told otherwise, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sts-data";
/// Free space kept on the data directory's disk for deletes and sled's own
/// upkeep; creates are refused below it. See `SledStore::with_reserve`.
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;
/// The role a caller's token needs for Create, List and Delete (StackState's admin role).
pub const DEFAULT_ADMIN_ROLE: &str = "stackstate-admin";
/// List page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest List page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Largest gRPC request message accepted. Every valid request is far smaller;
/// a bigger one is refused instead of buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long shutdown waits for in-flight calls before closing anyway; below
/// Kubernetes' default 30 s termination grace so the store flush still runs.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// How long a new connection may stay silent before it is closed. Clients
/// speak first in HTTP and TLS, so only a stuck or hostile peer waits longer.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take once started.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a PING after this much silence on a connection, which
/// is closed if the answer takes longer than [`HTTP2_KEEPALIVE_TIMEOUT`].
/// Finds peers that vanished without closing (a crashed node, a cut cable).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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

/// How the service behaves, independent of where it listens or stores.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin_role: Role,
    pub default_page_size: usize,
    pub max_page_size: usize,
    pub max_request_bytes: usize,
    pub shutdown_grace: Duration,
    /// Serve gRPC and HTTP over TLS (rustls) on the same port; `None` is plaintext.
    pub tls: Option<TlsIdentity>,
    pub first_byte_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            admin_role: Role::parse(DEFAULT_ADMIN_ROLE).expect("the default admin role is valid"),
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: MAX_PAGE_SIZE,
            max_request_bytes: MAX_REQUEST_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            tls: None,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}
