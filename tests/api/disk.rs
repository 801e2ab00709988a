//! The data directory's disk misbehaving for real, under the real binary: a
//! disk that stops answering (a FUSE file system the test pauses,
//! `stalling_fs.py`). The server must keep answering probes, metrics and
//! cached checks, say what happened, and stop when told.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    support::process::{ServerProcess, bootstrap, sts_server},
    support::{eventually, eventually_some},
};

/// Set (by `.ci/run`) to make a missing FUSE (the device, the Python
/// package, the right to mount) a failure, not a skip.
const REQUIRE_VAR: &str = "STS_TEST_REQUIRE_FUSE";

/// Debian's Python, which has Debian's `python3-fusepy`.
const PYTHON: &str = "/usr/bin/python3";

/// A pass-through FUSE mount of a scratch directory whose disk the test
/// can stall and resume.
struct StallingDisk {
    mount: tempfile::TempDir,
    _root: tempfile::TempDir,
    switch: PathBuf,
    child: Child,
}

impl StallingDisk {
    /// Mounted, or `None` (saying why) where FUSE cannot be used here and
    /// is not required.
    async fn mount() -> Option<StallingDisk> {
        let missing = if !Path::new("/dev/fuse").exists() {
            Some("/dev/fuse is missing")
        } else if !Command::new(PYTHON)
            .args(["-c", "import fusepy"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            Some("Python's fusepy is missing (Debian package python3-fusepy)")
        } else {
            None
        };
        if let Some(missing) = missing {
            assert!(
                std::env::var_os(REQUIRE_VAR).is_none(),
                "{missing} and {REQUIRE_VAR} is set"
            );
            eprintln!("skipping: {missing}");
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let switch = root.path().with_extension("stalled");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/support/stalling_fs.py"
        );
        let child = Command::new(PYTHON)
            .arg(script)
            .arg(root.path())
            .arg(mount.path())
            .arg(&switch)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let disk = StallingDisk {
            mount,
            _root: root,
            switch,
            child,
        };
        let at = disk.mount.path().to_str().unwrap().to_owned();
        eventually("the FUSE mount", || {
            let at = at.clone();
            async move {
                std::fs::read_to_string("/proc/self/mounts")
                    .is_ok_and(|mounts| mounts.lines().any(|l| l.contains(&at)))
            }
        })
        .await;
        Some(disk)
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Stalls the disk until [`StallingDisk::resume`] or until the guard
    /// goes: declared after the server, it is dropped first, so a failing
    /// test lets the disk answer before it kills (and reaps) the server.
    fn stall(&self) -> Stalled {
        std::fs::write(&self.switch, b"").unwrap();
        let stalled = Stalled(self.switch.clone());
        // The file system polls the switch: wait until it says the stall
        // is in force, or a write sent now could still get through.
        let on = PathBuf::from(format!("{}.on", self.switch.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !on.exists() {
            assert!(Instant::now() < deadline, "the stall never began");
            std::thread::sleep(Duration::from_millis(5));
        }
        stalled
    }

    fn resume(&self) {
        let _ = std::fs::remove_file(&self.switch);
    }
}

#[must_use]
struct Stalled(PathBuf);

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for StallingDisk {
    fn drop(&mut self) {
        self.resume();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(client: &reqwest::Client, url: String, key: Option<&str>) -> Option<u16> {
    let mut request = client.get(url).timeout(Duration::from_secs(2));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    request.send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_disk_that_stops_answering_leaves_probes_cached_checks_and_shutdown_working() {
    let Some(disk) = StallingDisk::mount().await else {
        return;
    };
    let data_dir = disk.path().join("data");
    let admin = bootstrap(&data_dir);
    let mut command = sts_server();
    command.env("STS_DISK_RESERVE_MIB", "0");
    command.env("STS_SHUTDOWN_GRACE", "2s");
    let server = ServerProcess::start_command(command, &data_dir).await;
    let base = server.rest().url("");
    let client = reqwest::Client::new();
    // The admin token is checked once while the disk answers: cached.
    assert_eq!(
        get(&client, format!("{base}/api/auth"), Some(&admin)).await,
        Some(200)
    );

    let _stalled = disk.stall();
    let creates: Vec<_> = (0..4)
        .map(|i| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = client
                    .post(format!("{base}/api/security/tokens"))
                    .header("X-API-Key", admin)
                    .json(&serde_json::json!({"name": format!("during-{i}"), "roles": ["r"]}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                (answer, started.elapsed())
            })
        })
        .collect();

    // Readiness turns off; liveness, metrics and the cached check go on.
    eventually("readiness off while the disk is stalled", || {
        let (client, url) = (client.clone(), format!("{base}/readyz"));
        async move { get(&client, url, None).await == Some(503) }
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&client, format!("{base}/healthz"), None).await,
            Some(200)
        );
        assert_eq!(
            get(&client, format!("{base}/metrics"), None).await,
            Some(200)
        );
        assert_eq!(
            get(&client, format!("{base}/api/auth"), Some(&admin)).await,
            Some(200),
            "a cached check answers while the disk does not"
        );
    }
    // The writes caught by the stall are answered (not left hanging), as
    // unavailable, within the store's deadlines (a call, then its flush).
    for create in creates {
        let (answer, took) = create.await.unwrap();
        assert_eq!(answer.unwrap(), 503);
        assert!(took < Duration::from_secs(30), "a create took {took:?}");
    }

    // SIGTERM ends it: the drain (grace 2 s), the last writes (at most
    // 5 s, then given up), the runtime (1 s). Threads the kernel still
    // holds in the stalled file system keep the process from being reaped
    // (as on any dead disk), so its exit is read from /proc: a zombie.
    let pid = server.pid();
    let asked = Instant::now();
    let exited = server.terminate_in_background();
    eventually("the process exits", || async move {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    })
    .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    disk.resume();
    let (_, log) = exited.await.unwrap();
    let log = log.join("\n");
    assert!(
        log.contains("the store is unreachable: not ready"),
        "the stall is logged:\n{log}"
    );
    // Once the disk answers again, the data directory opens with every
    // token acknowledged before the stall.
    let reopened = eventually_some("the data directory's lock released", || {
        let data_dir = data_dir.clone();
        async move {
            let output = sts_server()
                .args(["export", "--data-dir"])
                .arg(&data_dir)
                .output()
                .ok()?;
            output.status.success().then_some(output.stdout)
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&reopened).contains("bootstrap-admin"));
}
