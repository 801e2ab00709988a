//! Webhook delivery settings: the URLs (checked, never printed with a
//! secret), the signing secret, retries and the outbox's capacity.

use std::time::Duration;

use super::{
    DEFAULT_OUTBOX_CAPACITY, DEFAULT_WEBHOOK_BACKOFF, DEFAULT_WEBHOOK_MAX_BACKOFF,
    DEFAULT_WEBHOOK_POLL_INTERVAL, DEFAULT_WEBHOOK_TIMEOUT, MIN_WEBHOOK_SECRET_BYTES, SettingError,
};

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
    pub fn parse(text: &str) -> Result<WebhookUrl, SettingError> {
        let url =
            url::Url::parse(text).map_err(|e| SettingError::new(format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SettingError::new(format!(
                "must be an http or https URL, not {}:",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(SettingError::new("has no host"));
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
    pub fn parse(secret: &str) -> Result<WebhookSecret, SettingError> {
        if secret.len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(SettingError::new(format!(
                "must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes long (e.g. `openssl rand -hex 32`)"
            )));
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
