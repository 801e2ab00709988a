//! `Rest`: the HTTP side of a running server as a client sees it, so a test
//! names a path, never builds a URL by hand.

use std::net::SocketAddr;

use super::metrics::metric_in;

/// The server at `addr`, over plain HTTP, through one reqwest client.
#[derive(Clone)]
pub struct Rest {
    base: String,
    client: reqwest::Client,
}

impl Rest {
    pub fn at(addr: SocketAddr) -> Rest {
        Rest {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    /// The URL of `path` (which starts with `/`, or is empty for the base
    /// URL a CLI is pointed at).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of `series` on `/metrics` (0 when not exposed).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics_text().await, series)
    }
}
