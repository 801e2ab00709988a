//! Redis for the shared rate-limit tests: the machine's own
//! (`STS_TEST_REDIS_URL`, skipped with a word when unset, as PostgreSQL's
//! tests are) and private `redis-server`s a test stops and starts itself.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

/// Names the Redis the shared rate-limit tests use (`.ci/run` sets it).
pub const REDIS_URL_VAR: &str = "STS_TEST_REDIS_URL";

/// The machine's Redis, or `None` (saying so) when the variable is unset.
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!(
                "skipping {test}: {REDIS_URL_VAR} is not set (shared rate-limit tests need Redis)"
            );
            None
        }
    }
}

/// A `redis-server` of the test's own on a free loopback port, keeping
/// nothing on disk; killed when dropped.
pub struct PrivateRedis {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops it at once (SIGKILL): an outage, not a goodbye.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server cannot start ({e}): install the redis-server package")
            });
        self.child = Some(child);
        let url = self.url();
        super::eventually("the private Redis answers", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            }
        })
        .await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
