//! Where tokens are kept: sled's data directory or a PostgreSQL URL
//! (never printed with its password).

use std::path::PathBuf;

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
    #[error("expected a redis:// URL, got {shown}")]
    RedisScheme { shown: String },
    #[error("not a valid URL ({reason}); it is not shown because it may hold a password")]
    Unparsable { reason: String },
}

/// What replaces a password wherever a URL is shown.
const HIDDEN: &str = "***";

impl StoreUrl {
    pub fn parse(text: &str) -> Result<StoreUrl, StoreUrlError> {
        StoreUrl::parse_as(text, &["postgres", "postgresql"], |shown| {
            StoreUrlError::Scheme { shown }
        })
    }

    /// A `redis://` URL (`--rate-limit-store`), kept and shown alike.
    pub fn parse_redis(text: &str) -> Result<StoreUrl, StoreUrlError> {
        StoreUrl::parse_as(text, &["redis"], |shown| StoreUrlError::RedisScheme {
            shown,
        })
    }

    fn parse_as(
        text: &str,
        schemes: &[&str],
        wrong: impl FnOnce(String) -> StoreUrlError,
    ) -> Result<StoreUrl, StoreUrlError> {
        let parsed = url::Url::parse(text).map_err(|e| StoreUrlError::Unparsable {
            reason: e.to_string(),
        })?;
        if !schemes.contains(&parsed.scheme()) {
            return Err(wrong(redacted(parsed)));
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
