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

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.patch(self.url(path))
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics").text_body().await
    }

    /// The value of `series` on `/metrics` (0 when not exposed).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics_text().await, series)
    }
}

/// Sending a request built with reqwest and reading its whole answer, in
/// one call: what every REST test does after building the request.
pub trait ReadAnswer {
    /// The answer's body as JSON, whatever its status.
    fn json_body(self) -> impl std::future::Future<Output = serde_json::Value> + Send;
    /// The answer's body as text, whatever its status.
    fn text_body(self) -> impl std::future::Future<Output = String> + Send;
}

impl ReadAnswer for reqwest::RequestBuilder {
    async fn json_body(self) -> serde_json::Value {
        self.send().await.unwrap().json().await.unwrap()
    }

    async fn text_body(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }
}
