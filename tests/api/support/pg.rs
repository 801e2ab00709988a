//! PostgreSQL for tests: each test gets its own schema in the database
//! `STS_TEST_DATABASE_URL` names, dropped when the test ends (passed or
//! panicked). Without the variable the PostgreSQL tests say so and pass
//! without running. [`Proxy`] stands between a server and the database to
//! cut every connection, as an outage looks from the server.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use sqlx::{Executor, PgPool};
use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

pub const DATABASE_URL_VAR: &str = "STS_TEST_DATABASE_URL";

/// A private schema; `url` selects it through `search_path`.
pub struct TestDatabase {
    pub url: String,
    pub schema: String,
    base: String,
    admin: PgPool,
    dropped: bool,
}

impl TestDatabase {
    /// A fresh schema, or `None` (after printing why) when no database is
    /// configured. A configured database that cannot be reached fails the
    /// test: CI sets the variable precisely so these tests run.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let Ok(base) = std::env::var(DATABASE_URL_VAR) else {
            eprintln!("skipping {test}: {DATABASE_URL_VAR} is not set (PostgreSQL tests need it)");
            return None;
        };
        let admin = PgPool::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR}={base} is unreachable: {e}"));
        let schema = format!("sts_test_{:016x}", rand::random::<u64>());
        admin
            .execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        Some(TestDatabase {
            url,
            schema,
            base,
            admin,
            dropped: false,
        })
    }

    /// Runs `sql` in this test's schema.
    pub async fn query(&self, sql: &str) -> Vec<sqlx::postgres::PgRow> {
        let mut connection = self.admin.acquire().await.unwrap();
        connection
            .execute(format!("SET search_path TO {}", self.schema).as_str())
            .await
            .unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut *connection).await.unwrap();
        connection.execute("RESET search_path").await.unwrap();
        rows
    }

    /// Runs a script of several statements in this test's schema.
    pub async fn run_script(&self, script: &str) {
        let mut connection = self.admin.acquire().await.unwrap();
        connection
            .execute(format!("SET search_path TO {}", self.schema).as_str())
            .await
            .unwrap();
        connection.execute(script).await.unwrap();
        connection.execute("RESET search_path").await.unwrap();
    }

    /// Drops the schema (what `Drop` also does, blocking, if a test ends
    /// without calling this: a panic on the way).
    pub async fn drop(mut self) {
        drop_schema(&self.admin, &self.schema).await;
        self.dropped = true;
    }

    /// `url` with its host and port replaced by `proxy`'s.
    pub fn url_through(&self, proxy: &Proxy) -> String {
        let (host, port) = self.host_port();
        let through = self
            .url
            .replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
        assert_ne!(through, self.url, "the URL names host:port");
        through
    }

    /// The server's address, for a [`Proxy`] to lead to.
    pub fn server_addr(&self) -> SocketAddr {
        let (host, port) = self.host_port();
        format!("{host}:{port}")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn host_port(&self) -> (String, u16) {
        let options: sqlx::postgres::PgConnectOptions = self.url.parse().unwrap();
        (options.get_host().to_owned(), options.get_port())
    }
}

/// Drops `schema`. A server the test dropped without stopping may still be
/// inside a transaction on it (a last-used flush, a retired-secret mark), and
/// PostgreSQL may then pick the drop as a deadlock's victim: that is
/// transient by definition, so it is retried, a bounded number of times.
async fn drop_schema(pool: &PgPool, schema: &str) {
    const ATTEMPTS: usize = 5;
    const DEADLOCK: &str = "40P01";
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    for attempt in 1..=ATTEMPTS {
        match pool.execute(sql.as_str()).await {
            Ok(_) => return,
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some(DEADLOCK) && attempt < ATTEMPTS => {}
            Err(e) => panic!("dropping test schema {schema}: {e}"),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // This may run on the test's runtime, which cannot be blocked on:
        // a thread of its own with a runtime of its own.
        let (base, schema) = (self.base.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let pool = PgPool::connect(&base).await.unwrap();
                drop_schema(&pool, &schema).await;
            });
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}

/// A TCP proxy to PostgreSQL (or to a server) that can cut every
/// connection and refuse new ones, as a database restart looks from the
/// servers behind it, or stall them: open, forwarding nothing.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: AbortHandle,
    stalled: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct ProxyState {
    down: bool,
    /// Down without a word: new connections are taken and held, silent
    /// (a network that drops packets, not one that refuses them).
    silent: bool,
    held: Vec<TcpStream>,
    links: Vec<AbortHandle>,
}

impl Proxy {
    pub async fn to(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (stalled, stall) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let (mut client, _) = listener.accept().await.unwrap();
                    let mut state_now = state.lock().unwrap();
                    if state_now.silent {
                        state_now.held.push(client);
                        continue;
                    }
                    if state_now.down {
                        continue; // dropped: connection refused, in effect
                    }
                    let mut stall = stall.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                () = async { let _ = stall.wait_for(|stalled| *stalled).await; } => {
                                    // Both ends stay open; nothing moves.
                                    std::future::pending::<()>().await;
                                }
                            }
                        }
                    });
                    state_now.links.push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
            stalled,
        }
    }

    /// Every connection stays open and forwards nothing more, new ones
    /// included: a peer that hangs without closing.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn down(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = true;
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Like [`Proxy::down`], but new connections hang instead of being
    /// refused: nothing ever answers them.
    pub fn silent(&self) {
        self.down();
        self.state.lock().unwrap().silent = true;
    }

    pub fn up(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = false;
        state.silent = false;
        state.held.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

#[tokio::test]
async fn a_test_schema_is_dropped_even_when_the_test_panics() {
    let Some(database) = TestDatabase::create("schema_cleanup").await else {
        return;
    };
    let (schema, base) = (database.schema.clone(), database.base.clone());
    let panicked = tokio::spawn(async move {
        let _database = database;
        panic!("deliberate: the schema must be dropped all the same");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let left: Option<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
            .bind(&schema)
            .fetch_optional(&PgPool::connect(&base).await.unwrap())
            .await
            .unwrap();
    assert_eq!(left, None, "schema {schema} left behind");
}

/// A private PostgreSQL cluster (initdb + pg_ctl) a test may restart, or
/// start with password authentication. Stopped when dropped.
pub struct PrivateCluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivateCluster {
    /// `None`, saying why, where PostgreSQL's server programs are missing.
    /// With `password`, the `postgres` user has it and every connection
    /// must give it (scram-sha-256); without, trust.
    pub async fn start(password: Option<&str>) -> Option<PrivateCluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists());
        let Some(bin) = bin else {
            eprintln!(
                "skipping the real restart: no PostgreSQL server programs under /usr/lib/postgresql"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // initdb refuses to run as root: then the cluster runs as `postgres`.
        use std::os::unix::fs::MetadataExt;
        let as_postgres = std::fs::metadata(dir.path()).unwrap().uid() == 0;
        if as_postgres {
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PrivateCluster {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = cluster.dir.path().join("data");
        let data = data.to_str().unwrap();
        let mut initdb = vec!["-U", "postgres", "-D", data];
        let pwfile = cluster.dir.path().join("pwfile");
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        match password {
            Some(password) => {
                std::fs::write(&pwfile, password).unwrap();
                if as_postgres {
                    std::os::unix::fs::chown(&pwfile, Some(postgres_uid()), None).unwrap();
                }
                initdb.extend(["-A", "scram-sha-256", &pwfile_arg]);
            }
            None => initdb.extend(["-A", "trust"]),
        }
        cluster.run("initdb", &initdb).await;
        cluster.pg_ctl("start").await;
        Some(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                action,
            ],
        )
        .await;
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            command
        } else {
            std::process::Command::new(self.bin.join(program))
        };
        command.args(args).current_dir(self.dir.path());
        command
    }

    async fn run(&self, program: &str, args: &[&str]) {
        let mut command = self.command(program, args);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert!(output.status.success(), "{program} {args:?}: {output:?}");
    }
}

impl Drop for PrivateCluster {
    /// Whatever the test did: no server outlives it (an already stopped
    /// one makes this a no-op).
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            )
            .output();
    }
}

/// The `postgres` user, who runs private clusters when the tests run as root.
fn postgres_uid() -> u32 {
    let id = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8(id.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
