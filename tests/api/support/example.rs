//! The client crate's example service (`crates/sts-client/examples/
//! service.rs`) as a child process: what a user runs behind
//! `ValidateLayer`. Cargo builds it with the workspace's tests; its address
//! is read from its first line, its output drained, and it is killed when
//! dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// The example's binary, beside this test binary's directory.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile.join("examples").join("service");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` at the workspace root builds it (or `cargo build -p sts-client --examples`)",
        path.display()
    );
    path
}

pub struct ExampleService {
    pub addr: SocketAddr,
    child: Child,
    http: reqwest::Client,
}

impl ExampleService {
    /// The example in front of the token server at `server`, watching with
    /// `token`, with `args` added.
    pub async fn start(server: SocketAddr, token: &str, args: &[&str]) -> ExampleService {
        let mut child = Command::new(binary())
            .args(["--server", &format!("http://{server}")])
            .args(args)
            .env("STS_WATCHER_TOKEN", token)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().unwrap().unwrap();
            // Drained, so a full pipe never stalls it.
            std::thread::spawn(move || lines.for_each(drop));
            first
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("the example said {first:?}"))
                .parse()
                .unwrap()
        })
        .await
        .unwrap();
        ExampleService {
            addr,
            child,
            http: reqwest::Client::new(),
        }
    }

    /// `GET /hello` with `token` as `X-API-Key` (none: no header): the
    /// status and the body.
    pub async fn hello(&self, token: Option<&str>) -> (reqwest::StatusCode, String) {
        let mut request = self.http.get(format!("http://{}/hello", self.addr));
        if let Some(token) = token {
            request = request.header("x-api-key", token);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// `GET /hello` answered 200 for `token`.
    pub async fn accepts(&self, token: &str) -> bool {
        self.hello(Some(token)).await.0 == reqwest::StatusCode::OK
    }

    /// What `/healthz` says, e.g. `synced=true fresh=true cached=3`.
    pub async fn health(&self) -> String {
        let url = format!("http://{}/healthz", self.addr);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) until the validator's stream is in sync.
    pub async fn synced(&self) {
        super::eventually("the example's stream in sync", || async {
            self.health().await.contains("synced=true fresh=true")
        })
        .await;
    }
}

impl Drop for ExampleService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
