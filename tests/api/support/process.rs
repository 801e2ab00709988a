//! The real `sts-server` binary as a child process: started on 127.0.0.1:0,
//! its address read from its log, its stderr drained (a full pipe would stall
//! it) and kept for the test's messages.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
};

/// `sts-server` with a plain, colourless log, and no shutdown delay (tests
/// have no load balancer to wait for; the drain test sets its own).
pub fn sts_server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sts-server"));
    command
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("STS_SHUTDOWN_DELAY", "0s");
    command
}

/// Runs `sts-server bootstrap` on `data_dir`; returns the admin token.
pub fn bootstrap(data_dir: &Path) -> String {
    bootstrap_with(data_dir, &[])
}

/// As [`bootstrap`], with extra environment variables.
pub fn bootstrap_with(data_dir: &Path, env: &[(&str, &str)]) -> String {
    bootstrap_command(data_dir, env, &[])
}

/// As [`bootstrap`], with extra arguments.
pub fn bootstrap_with_args(data_dir: &Path, args: &[&str]) -> String {
    bootstrap_command(data_dir, &[], args)
}

fn bootstrap_command(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = sts_server()
        .envs(env.iter().copied())
        .arg("bootstrap")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Runs `sts-server bootstrap` on the PostgreSQL store at `url` from a
/// blocking thread (a test's own proxy may be running on its runtime);
/// returns the admin token.
pub async fn bootstrap_store(url: &str) -> String {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().unwrap();
        bootstrap_with(scratch.path(), &[("STS_STORE", &url)])
    })
    .await
    .unwrap()
}

pub struct ServerProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Option<JoinHandle<Vec<String>>>,
    /// When the line saying the server stopped was read.
    pub stopped_at: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
    /// Where the probe port serves (`--probe-listen`), once it said so
    /// (before the main port's address).
    probe_addr: std::sync::Arc<std::sync::OnceLock<SocketAddr>>,
}

impl ServerProcess {
    /// The HTTP side of this server.
    pub fn rest(&self) -> super::Rest {
        super::Rest::at(self.addr)
    }
}

impl Drop for ServerProcess {
    /// A test that fails half-way must not leave a server running.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ServerProcess {
    /// Starts `sts-server serve` on `data_dir` and waits until it listens.
    /// Panics, with the process's log, if it exits first.
    pub async fn start(data_dir: &Path) -> ServerProcess {
        ServerProcess::start_with(data_dir, &[]).await
    }

    /// As [`ServerProcess::start`], with extra environment variables.
    pub async fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut command = sts_server();
        command.envs(env.iter().copied());
        ServerProcess::start_command(command, data_dir).await
    }

    /// Runs `command` with `serve` arguments for `data_dir` appended: an
    /// `sts-server` command, or a wrapper that ends up exec-ing one.
    pub async fn start_command(command: Command, data_dir: &Path) -> ServerProcess {
        ServerProcess::start_on(command, data_dir, "127.0.0.1:0").await
    }

    /// As [`ServerProcess::start_command`], listening on `listen`;
    /// [`ServerProcess::addr`] is the first address served.
    pub async fn start_on(mut command: Command, data_dir: &Path, listen: &str) -> ServerProcess {
        let mut child = command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = mpsc::channel();
        let stopped_at = std::sync::Arc::new(std::sync::OnceLock::new());
        let seen_stopping = stopped_at.clone();
        let probe_addr = std::sync::Arc::new(std::sync::OnceLock::new());
        let seen_probes = probe_addr.clone();
        let log = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = logged_address(&line, "probe_address") {
                    let _ = seen_probes.set(addr);
                } else if let Some(addr) = logged_address(&line, "address") {
                    let _ = address_tx.send(addr);
                }
                if line.contains("stopped") {
                    let _ = seen_stopping.set(std::time::Instant::now());
                }
                lines.push(line);
            }
            lines
        });
        // A server that never logs its address fails the test, not hangs it.
        let waited = move || address_rx.recv_timeout(std::time::Duration::from_secs(30));
        match tokio::task::spawn_blocking(waited).await.unwrap() {
            Ok(addr) => ServerProcess {
                addr,
                child: Some(child),
                log: Some(log),
                stopped_at,
                probe_addr,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!(
                    "sts-server ended ({status}) without serving:\n{}",
                    log.join().unwrap().join("\n")
                );
            }
        }
    }

    /// SIGKILL, sent before this returns: no shutdown, no flush, nothing in
    /// flight finishes. The task waits for the exit and yields the log.
    pub fn kill(mut self) -> tokio::task::JoinHandle<Vec<String>> {
        let (mut child, log) = self.take();
        child.kill().unwrap();
        tokio::task::spawn_blocking(move || {
            child.wait().unwrap();
            log.join().unwrap()
        })
    }

    /// SIGTERM, then waits for the exit. Returns the status and the log.
    pub async fn terminate(self) -> (ExitStatus, Vec<String>) {
        self.terminate_in_background().await.unwrap()
    }

    /// SIGTERM, sent before this returns; the task waits for the exit and
    /// yields the status and the log.
    pub fn terminate_in_background(mut self) -> tokio::task::JoinHandle<(ExitStatus, Vec<String>)> {
        let (mut child, log) = self.take();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        tokio::task::spawn_blocking(move || (child.wait().unwrap(), log.join().unwrap()))
    }
}

impl ServerProcess {
    /// The probe port's address, when started with `--probe-listen`.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr.get().copied()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn take(&mut self) -> (Child, JoinHandle<Vec<String>>) {
        (self.child.take().unwrap(), self.log.take().unwrap())
    }
}

/// The address in field `field` of a log line, text (` field=…`) or JSON
/// (`"field":"…"`).
fn logged_address(line: &str, field: &str) -> Option<SocketAddr> {
    let (marker, end) = if line.starts_with('{') {
        (format!("\"{field}\":\""), '"')
    } else {
        (format!(" {field}="), ' ')
    };
    let at = line.find(&marker)? + marker.len();
    line[at..].split(end).next()?.parse().ok()
}
