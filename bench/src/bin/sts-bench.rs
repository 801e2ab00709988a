//! `sts-bench`: load generator for sts-server (and the bare baseline), plus
//! the helpers `bench/run` needs: store pre-fill and time-to-SERVING.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sts::{
    model::{NewToken, Roles, TokenName},
    proto::{
        CreateRequest, ListRequest, ValidateRequest, token_service_client::TokenServiceClient,
    },
    store::SledStore,
    token::Secret,
};
use sts_bench::{Plan, http1, run};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "sts-bench",
    about = "Load generator and helpers for benchmarking sts-server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Copy)]
struct PlanArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Fixed rate in requests/s (default: closed loop, as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
}

impl From<PlanArgs> for Plan {
    fn from(args: PlanArgs) -> Plan {
        Plan {
            concurrency: args.concurrency,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            rate: args.rate,
        }
    }
}

/// Where to send gRPC requests and as whom.
#[derive(Args)]
struct GrpcTarget {
    #[arg(long)]
    target: String,
    /// The token the requests carry (for Create and List: one with the admin role).
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

/// The calls `frame` encodes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FrameCall {
    Validate,
    Check,
}

/// How a request picks its token out of many.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Draw {
    /// Every token as likely as any other (mostly cache misses at 1M).
    Uniform,
    /// Zipf with exponent 1.0: the k-th token drawn with weight 1/k.
    Zipf,
}

#[derive(Subcommand)]
enum Command {
    /// gRPC Validate of one token, over N HTTP/2 connections. The request is
    /// encoded once and sent with raw h2, so the client spends little per
    /// call. The token may be valid, malformed or unknown: the scenario decides.
    GrpcValidate {
        #[command(flatten)]
        grpc: GrpcTarget,
        /// Validate tokens drawn from this file (one secret per line, as
        /// `prefill --secrets-file` writes) instead of --token: each
        /// request is encoded ahead, and a worker picks one per call.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// How --token-file's tokens are drawn.
        #[arg(long, value_enum, default_value = "uniform")]
        draw: Draw,
        /// The context stated with each Validate (what a bound token is
        /// checked against): `source_address`, `audience`, `http_method`,
        /// `path`.
        #[arg(long, default_value = "")]
        source_address: String,
        #[arg(long, default_value = "")]
        audience: String,
        #[arg(long, default_value = "")]
        http_method: String,
        #[arg(long, default_value = "")]
        request_path: String,
        #[arg(long, default_value = "grpc-validate")]
        scenario: String,
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Envoy's ext_authz `Check` of one token (in `x-api-key`, among the
    /// other headers and attributes Envoy sends for an ordinary request),
    /// pre-encoded and sent with raw h2 like grpc-validate.
    GrpcCheck {
        #[command(flatten)]
        grpc: GrpcTarget,
        #[arg(long, default_value = "grpc-check")]
        scenario: String,
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// gRPC Create (each durable before its answer) as an admin.
    GrpcCreate {
        #[command(flatten)]
        grpc: GrpcTarget,
        #[arg(long, default_value = "grpc-create")]
        scenario: String,
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// A console page (`--path`, under /console) fetched `--reps` times
    /// on one keep-alive connection after signing in with `--token`.
    ConsolePage {
        #[arg(long)]
        target: SocketAddr,
        /// A token with the admin role.
        #[arg(long)]
        token: String,
        #[arg(long, default_value = "/tokens")]
        path: String,
        #[arg(long, default_value_t = 50)]
        reps: usize,
        #[arg(long, default_value = "console tokens page")]
        scenario: String,
    },
    /// Page through every token with gRPC List; report time and counts.
    ListAll {
        #[arg(long)]
        target: String,
        /// A token with the admin role.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
        #[arg(long, default_value = "grpc-list-all")]
        scenario: String,
    },
    /// `GET /api/server/status` (or --path) with `X-API-Key`, one HTTP/1.1
    /// keep-alive connection per worker; every answer must be 200. With
    /// --rate, over connections of a raw client of its own (one request in
    /// flight on each), which keeps up where a full client would not.
    HttpStatus {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        token: String,
        #[arg(long, default_value = "/api/server/status")]
        path: String,
        /// More request headers, `name: value` (repeatable): what a proxy
        /// sends forward-auth about the original request.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        #[arg(long, default_value = "http-status")]
        scenario: String,
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Fill a sled data dir with COUNT tokens through the store (not RPCs);
    /// writes the secret of one of them, plus an admin token, to files.
    Prefill {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        count: u64,
        /// Where to write one valid (non-admin) token.
        #[arg(long)]
        token_file: PathBuf,
        /// Where to write every token's secret, one per line (for
        /// `grpc-validate --token-file`).
        #[arg(long)]
        secrets_file: Option<PathBuf>,
        /// Where to write one more token's secret: bound to 8 networks, 2
        /// audiences and 16 routes, each list matched by its last entry
        /// (127.0.0.0/8, `bench-audience-1`, `GET /api/v15/items/*`).
        #[arg(long)]
        bound_token_file: Option<PathBuf>,
        /// Where to write one more token's secret: with two rate limits no
        /// run exhausts (`sts_bench::bench_rate_limits`).
        #[arg(long)]
        limited_token_file: Option<PathBuf>,
    },
    /// Delete-to-rejected time between two replicas: create a token on A,
    /// validate it on B until B has it cached, delete it on A, then validate
    /// on B until refused. Reports percentiles over the trials.
    Propagation {
        /// The replica deletes go to.
        #[arg(long)]
        a: String,
        /// The replica that must stop accepting.
        #[arg(long)]
        b: String,
        /// A token with the admin role.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 200)]
        trials: usize,
    },
    /// Revoked-to-refused time at a caller that validates from its own
    /// cache (the client crate's example service): create a token on
    /// `--server`, have the example accept it three times (from its cache
    /// after the first), revoke it (delete, disable, rotate without grace
    /// in turn), then ask the example until it refuses.
    CallerRevocation {
        /// The server changes are made through.
        #[arg(long)]
        server: String,
        /// The example service (`host:port`).
        #[arg(long)]
        example: SocketAddr,
        /// A token with the admin role.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 500)]
        trials: usize,
    },
    /// Opens `--count` Watch streams (as a token with the watcher role),
    /// waits for every SYNCED, and reports the server's RSS before and
    /// after (`--server-pid`, same machine): memory per open stream.
    WatchStreams {
        #[arg(long)]
        target: String,
        /// A token with the watcher role.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The server's process id, for its RSS.
        #[arg(long)]
        server_pid: u32,
    },
    /// The Validate cache from 1 and from 2 threads, in this process (no
    /// server): hits on `--tokens` cached tokens, each thread walking them
    /// in its own order, repetitions taking turns. One JSON line per
    /// measurement; the 2-thread rate over the 1-thread rate is how the
    /// cache scales.
    CacheScaling {
        #[arg(long, default_value_t = 10_000)]
        tokens: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// The rate limiters alone, in this process (no server): checks per
    /// second of a token with two limits no run exhausts, `--concurrency`
    /// tasks for `--seconds`, through each design: `local` (this process's
    /// table: what any lease scheme approaches), `script` (one Redis script
    /// per check, the shipped `--rate-limit-store`), `lease` (budget taken
    /// from Redis `--lease` checks at a time, by the same script, and
    /// spent from memory). One JSON line per design and repetition.
    Limiters {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100)]
        lease: u64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Writes the gRPC frame (length prefix and message) of a Validate or
    /// ext_authz Check of `--token`, for load generators that send a body
    /// from a file (h2load -d).
    Frame {
        #[arg(value_enum)]
        call: FrameCall,
        #[arg(long)]
        token: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Draws the cost curve (req/s and p99 against the number of tokens,
    /// one line per way of drawing tokens) from bench/run's JSON lines as
    /// an SVG chart.
    Chart {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Poll gRPC health until SERVING; print milliseconds since --since-ms (epoch ms).
    WaitServing {
        #[arg(long)]
        target: String,
        #[arg(long)]
        since_ms: u128,
    },
}

impl Command {
    /// Whether this is a fixed-rate run, whose pacer needs a runtime on
    /// one thread (see `sts_bench::run`).
    fn paced(&self) -> bool {
        let plan = match self {
            Command::GrpcValidate { plan, .. }
            | Command::GrpcCheck { plan, .. }
            | Command::GrpcCreate { plan, .. }
            | Command::HttpStatus { plan, .. } => plan,
            _ => return false,
        };
        plan.rate.is_some()
    }
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let runtime = if command.paced() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(execute(command))
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::GrpcValidate {
            grpc:
                GrpcTarget {
                    target,
                    token,
                    connections,
                },
            token_file,
            draw,
            source_address,
            audience,
            http_method,
            request_path,
            scenario,
            plan,
        } => {
            let request = |token: String| ValidateRequest {
                token,
                source_address: source_address.clone(),
                audience: audience.clone(),
                http_method: http_method.clone(),
                path: request_path.clone(),
                cost: None,
            };
            let frames: Vec<bytes::Bytes> = match token_file {
                None => vec![grpc_frame(&request(token))],
                Some(file) => std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .lines()
                    .map(|token| grpc_frame(&request(token.to_owned())))
                    .collect(),
            };
            anyhow::ensure!(!frames.is_empty(), "no token to validate");
            let outcome =
                drawn_grpc_load(&target, connections, VALIDATE_PATH, frames, draw, plan).await?;
            println!("{}", outcome.to_json(&scenario));
        }
        Command::GrpcCheck {
            grpc:
                GrpcTarget {
                    target,
                    token,
                    connections,
                },
            scenario,
            plan,
        } => {
            let request = check_request(&token);
            let outcome =
                raw_grpc_load(&target, connections, CHECK_PATH, grpc_frame(&request), plan).await?;
            println!("{}", outcome.to_json(&scenario));
        }
        Command::GrpcCreate {
            grpc:
                GrpcTarget {
                    target,
                    token,
                    connections,
                },
            scenario,
            plan,
        } => {
            let channels = connect(&target, connections).await?;
            let before = flush_counters(&target).await?;
            let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let outcome = run(plan.into(), |i| {
                let client = TokenServiceClient::new(channels[i % channels.len()].clone());
                let token = token.clone();
                let counter = counter.clone();
                move || {
                    let mut client = client.clone();
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let request = admin_request(
                        &token,
                        CreateRequest {
                            name: format!("bench-create-{n}"),
                            roles: vec!["bench-reader".into()],
                            expiration: None,
                            ..Default::default()
                        },
                    );
                    async move {
                        match client.create(request).await {
                            Ok(_) => true,
                            Err(status) => failed(status),
                        }
                    }
                }
            })
            .await;
            let after = flush_counters(&target).await?;
            let mut report = outcome.to_json(&scenario);
            if let (Some((flushes_before, writes_before)), Some((flushes, writes))) =
                (before, after)
            {
                report["writes_per_flush"] = serde_json::json!(
                    (writes - writes_before) / (flushes - flushes_before).max(1.0)
                );
            }
            println!("{report}");
        }
        Command::Propagation {
            a,
            b,
            token,
            trials,
        } => {
            let mut on_a = TokenServiceClient::new(connect(&a, 1).await?.remove(0));
            let mut on_b = TokenServiceClient::new(connect(&b, 1).await?.remove(0));
            let mut delays = Vec::with_capacity(trials);
            for n in 0..trials {
                let request = CreateRequest {
                    name: format!("bench-propagation-{n}"),
                    roles: vec!["bench-reader".into()],
                    expiration: None,
                    ..Default::default()
                };
                let created = on_a
                    .create(admin_request(&token, request))
                    .await?
                    .into_inner();
                let validate = || ValidateRequest {
                    token: created.token.clone(),
                    ..Default::default()
                };
                for _ in 0..3 {
                    anyhow::ensure!(on_b.validate(validate()).await?.into_inner().valid);
                }
                let id = created.service_token.context("no token in the answer")?.id;
                on_a.delete(admin_request(
                    &token,
                    sts::proto::DeleteRequest {
                        id,
                        ..Default::default()
                    },
                ))
                .await?;
                let deleted = Instant::now();
                while on_b.validate(validate()).await?.into_inner().valid {}
                delays.push(deleted.elapsed().as_secs_f64() * 1000.0);
            }
            delays.sort_by(f64::total_cmp);
            let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "delete propagation",
                    "trials": trials,
                    "p50_ms": at(0.5),
                    "p99_ms": at(0.99),
                    "max_ms": at(1.0),
                })
            );
        }
        Command::CallerRevocation {
            server,
            example,
            token,
            trials,
        } => caller_revocation(&server, example, &token, trials).await?,
        Command::WatchStreams {
            target,
            token,
            count,
            server_pid,
        } => watch_streams(&target, &token, count, server_pid).await?,
        Command::ConsolePage {
            target,
            token,
            path,
            reps,
            scenario,
        } => {
            let row =
                sts_bench::console::console_page(target, &token, &path, reps, &scenario).await?;
            println!("{row}");
        }
        Command::ListAll {
            target,
            token,
            page_size,
            scenario,
        } => {
            let mut client = TokenServiceClient::new(connect(&target, 1).await?.remove(0));
            let started = Instant::now();
            let (mut tokens, mut pages, mut page_token) = (0u64, 0u64, String::new());
            loop {
                let page = client
                    .list(admin_request(
                        &token,
                        ListRequest {
                            page_size,
                            page_token,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                tokens += page.service_tokens.len() as u64;
                pages += 1;
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            println!(
                "{}",
                serde_json::json!({
                    "scenario": scenario,
                    "tokens": tokens,
                    "pages": pages,
                    "seconds": started.elapsed().as_secs_f64(),
                })
            );
        }
        Command::HttpStatus {
            target,
            token,
            path,
            headers,
            scenario,
            plan,
        } => {
            let plan: Plan = plan.into();
            let mut extra: Vec<(String, String)> = Vec::with_capacity(headers.len());
            for header in &headers {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("--header {header:?}: use `name: value`"))?;
                extra.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            if plan.rate.is_some() {
                // A client of its own: hyper's costs more per request than
                // the paced load at half of nginx's rate leaves it.
                let mut all: Vec<(&str, &str)> = vec![("x-api-key", &token)];
                all.extend(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let request: std::sync::Arc<[u8]> = http1::get_request(target, &path, &all).into();
                let mut connections = Vec::with_capacity(plan.concurrency);
                for _ in 0..plan.concurrency.max(1) {
                    let connection = http1::Connection::open(target, request.clone()).await?;
                    connections.push(std::sync::Arc::new(tokio::sync::Mutex::new(connection)));
                }
                let outcome = run(plan, |i| {
                    let connection = connections[i].clone();
                    move || {
                        let connection = connection.clone();
                        async move {
                            match connection.lock().await.send().await {
                                Ok(200) => true,
                                Ok(status) => failed(format!("HTTP {status}")),
                                Err(e) => failed(e),
                            }
                        }
                    }
                })
                .await;
                println!("{}", outcome.to_json(&scenario));
                return Ok(());
            }
            let mut senders = Vec::with_capacity(plan.concurrency);
            for _ in 0..plan.concurrency {
                senders.push(http1_connection(target).await?);
            }
            let senders = std::sync::Mutex::new(senders);
            let outcome = run(plan, |_| {
                let sender = senders
                    .lock()
                    .unwrap()
                    .pop()
                    .expect("one connection per worker");
                let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
                let (token, path, extra) = (token.clone(), path.clone(), extra.clone());
                move || {
                    let sender = sender.clone();
                    let mut request = http::Request::get(path.as_str())
                        .header("host", target.to_string())
                        .header("x-api-key", &token);
                    for (name, value) in &extra {
                        request = request.header(name.as_str(), value.as_str());
                    }
                    let request = request
                        .body(Empty::<bytes::Bytes>::new())
                        .expect("a valid request");
                    async move {
                        let mut sender = sender.lock().await;
                        match sender.send_request(request).await {
                            Ok(response) if response.status() == 200 => {
                                match response.into_body().collect().await {
                                    Ok(_) => true,
                                    Err(e) => failed(e),
                                }
                            }
                            Ok(response) => failed(format!("HTTP {}", response.status())),
                            Err(e) => failed(e),
                        }
                    }
                }
            })
            .await;
            println!("{}", outcome.to_json(&scenario));
        }
        Command::Frame { call, token, out } => {
            let frame = match call {
                FrameCall::Validate => grpc_frame(&ValidateRequest {
                    token,
                    ..Default::default()
                }),
                FrameCall::Check => grpc_frame(&check_request(&token)),
            };
            std::fs::write(&out, &frame)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        Command::Chart { results, out } => chart(&results, &out)?,
        Command::CacheScaling {
            tokens,
            reps,
            seconds,
        } => cache_scaling(tokens, reps, Duration::from_secs_f64(seconds)),
        Command::Limiters {
            redis,
            concurrency,
            lease,
            reps,
            seconds,
        } => {
            limiters(
                &redis,
                concurrency,
                lease,
                reps,
                Duration::from_secs_f64(seconds),
            )
            .await?
        }
        Command::Prefill {
            data_dir,
            count,
            token_file,
            secrets_file,
            bound_token_file,
            limited_token_file,
        } => {
            let mut secrets = secrets_file
                .map(|path| std::fs::File::create(path).map(std::io::BufWriter::new))
                .transpose()?;
            let store = SledStore::open(&data_dir)?;
            let roles = Roles::parse(&["bench-reader"])?;
            let now = SystemTime::now();
            let kept = Secret::generate();
            let tokens = (0..count).map(|i| {
                let token = if i == count / 2 {
                    kept.clone()
                } else {
                    Secret::generate()
                };
                if let Some(out) = &mut secrets {
                    use std::io::Write as _;
                    writeln!(out, "{}", token.expose_secret())
                        .expect("the secrets file is writable");
                }
                (
                    token.hash(),
                    NewToken {
                        name: TokenName::parse(&format!("bench-{i}")).expect("valid name"),
                        roles: roles.clone(),
                        expiration: None,
                        description: Default::default(),
                        labels: Default::default(),
                        created_by: String::new(),
                        bindings: Default::default(),
                        rate_limits: None,
                        owners: Default::default(),
                    },
                )
            });
            let started = Instant::now();
            let mut inserted = store.insert_many(tokens, now).await?;
            std::fs::write(&token_file, kept.expose_secret())?;
            if let Some(file) = bound_token_file {
                let bound = Secret::generate();
                let new = NewToken::parse("bench-bound", &["bench-reader"], None)?
                    .bound(sts_bench::bench_bindings()?);
                inserted += store
                    .insert_many(std::iter::once((bound.hash(), new)), now)
                    .await?;
                std::fs::write(&file, bound.expose_secret())?;
            }
            if let Some(file) = limited_token_file {
                let limited = Secret::generate();
                let new = NewToken::parse("bench-limited", &["bench-reader"], None)?
                    .limited(Some(sts_bench::bench_rate_limits()?));
                inserted += store
                    .insert_many(std::iter::once((limited.hash(), new)), now)
                    .await?;
                std::fs::write(&file, limited.expose_secret())?;
            }
            eprintln!(
                "prefilled {inserted} tokens in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Command::WaitServing { target, since_ms } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus,
                health_client::HealthClient,
            };
            loop {
                if let Ok(channel) = Endpoint::from_shared(target.clone())?.connect().await {
                    let mut health = HealthClient::new(channel);
                    if let Ok(response) = health.check(HealthCheckRequest::default()).await
                        && response.into_inner().status() == ServingStatus::Serving
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis();
            println!("{}", now_ms.saturating_sub(since_ms));
        }
    }
    Ok(())
}

const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

const VALIDATE_PATH: &str = "/stackstate.servicetoken.v1.TokenService/Validate";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One pre-encoded unary call to `path`, as fast as the plan says, over
/// `connections` raw HTTP/2 connections.
async fn raw_grpc_load(
    target: &str,
    connections: usize,
    path: &str,
    body: bytes::Bytes,
    plan: PlanArgs,
) -> anyhow::Result<sts_bench::Outcome> {
    drawn_grpc_load(target, connections, path, vec![body], Draw::Uniform, plan).await
}

/// Unary calls of `path` over `connections` raw HTTP/2 connections, each
/// carrying one of `frames` (encoded ahead) drawn by `draw`, each worker
/// with its own generator.
async fn drawn_grpc_load(
    target: &str,
    connections: usize,
    path: &str,
    frames: Vec<bytes::Bytes>,
    draw: Draw,
    plan: PlanArgs,
) -> anyhow::Result<sts_bench::Outcome> {
    let mut senders = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        senders.push(h2_connection(target).await?);
    }
    let uri: http::Uri = format!("{target}{path}").parse()?;
    let frames = std::sync::Arc::new(frames);
    // Zipf(1.0): the cumulative weights of ranks 1..=n, searched per draw.
    let cumulative: std::sync::Arc<Vec<f64>> = std::sync::Arc::new(match draw {
        Draw::Uniform => Vec::new(),
        Draw::Zipf => (1..=frames.len())
            .scan(0.0, |sum, k| {
                *sum += 1.0 / k as f64;
                Some(*sum)
            })
            .collect(),
    });
    Ok(run(plan.into(), |i| {
        let sender = senders[i % senders.len()].clone();
        let (uri, frames, cumulative) = (uri.clone(), frames.clone(), cumulative.clone());
        // xorshift64*, seeded per worker: cheap, and no shared state.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ ((i as u64 + 1) << 32);
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let random = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let index = match cumulative.last() {
                None => (random % frames.len() as u64) as usize,
                Some(total) => {
                    let at = (random >> 11) as f64 / (1u64 << 53) as f64 * total;
                    cumulative
                        .partition_point(|c| *c < at)
                        .min(frames.len() - 1)
                }
            };
            grpc_unary(sender.clone(), uri.clone(), frames[index].clone())
        }
    })
    .await)
}

/// A raw HTTP/2 connection to `target` (`http://host:port`).
async fn h2_connection(target: &str) -> anyhow::Result<h2::client::SendRequest<bytes::Bytes>> {
    let authority = target.strip_prefix("http://").unwrap_or(target);
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    // Windows as hyper's client sets them (tonic's channels): with h2's
    // 64 KiB defaults, answers buffered during a client stall exhaust h2's
    // budget for small DATA frames and the client drops the connection.
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(stream)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A message as one gRPC length-prefixed frame (uncompressed).
fn grpc_frame(message: &impl prost::Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.into()
}

/// One unary gRPC call; true when it ends with `grpc-status: 0`.
async fn grpc_unary(
    sender: h2::client::SendRequest<bytes::Bytes>,
    uri: http::Uri,
    body: bytes::Bytes,
) -> bool {
    match try_grpc_unary(sender, uri, body).await {
        Ok(ok) => ok,
        Err(e) => failed(e),
    }
}

async fn try_grpc_unary(
    sender: h2::client::SendRequest<bytes::Bytes>,
    uri: http::Uri,
    body: bytes::Bytes,
) -> Result<bool, h2::Error> {
    let request = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let mut sender = sender.ready().await?;
    let (response, mut stream) = sender.send_request(request, false)?;
    // Send the body as one final DATA frame: split into small pieces as
    // flow-control credit trickles in, it trips h2's guard against floods
    // of small frames (GOAWAY "too_many_data_frames") when the server lags.
    stream.reserve_capacity(body.len());
    while stream.capacity() < body.len() {
        if std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .transpose()?
            .is_none()
        {
            return Ok(false);
        }
    }
    stream.send_data(body, true)?;
    let response = response.await?;
    let ok = |headers: &http::HeaderMap| headers.get("grpc-status").is_some_and(|s| s == "0");
    if response.status() != 200 {
        return Ok(false);
    }
    if response.headers().contains_key("grpc-status") {
        return Ok(ok(response.headers())); // trailers-only answer
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk?.len());
    }
    Ok(body.trailers().await?.is_some_and(|trailers| ok(&trailers)))
}

/// Counts as an error; the first of each kind is printed to stderr, so a
/// run with errors says what they were.
fn failed(why: impl std::fmt::Display) -> bool {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let why = why.to_string();
    let mut seen = SEEN.lock().expect("no panics while held");
    if !seen.contains(&why) {
        eprintln!("sts-bench: request failed: {why}");
        seen.push(why);
    }
    false
}

/// The server's `sts_store_flushes_total` and `sts_store_flushed_writes_total`,
/// from `/metrics` on the same port as gRPC; `None` for a store without a
/// group-commit flusher (PostgreSQL commits each write itself).
async fn flush_counters(target: &str) -> anyhow::Result<Option<(f64, f64)>> {
    let address: SocketAddr = target
        .strip_prefix("http://")
        .unwrap_or(target)
        .parse()
        .context("the target must be http://IP:PORT")?;
    let mut sender = http1_connection(address).await?;
    let request = http::Request::get("/metrics")
        .header("host", address.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let value = |name: &str| -> anyhow::Result<Option<f64>> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|number| {
                number
                    .parse()
                    .with_context(|| format!("{name} is not a number"))
            })
            .transpose()
    };
    Ok(value("sts_store_flushes_total")?.zip(value("sts_store_flushed_writes_total")?))
}

/// `count` (at least one) HTTP/2 connections to `target`.
/// See `Command::CallerRevocation`.
async fn caller_revocation(
    server: &str,
    example: SocketAddr,
    token: &str,
    trials: usize,
) -> anyhow::Result<()> {
    let mut client = TokenServiceClient::new(connect(server, 1).await?.remove(0));
    // A connection per check: plain, and the same for every trial.
    let accepts = async |secret: &str| -> anyhow::Result<bool> {
        let request = http1::get_request(example, "/hello", &[("x-api-key", secret)]);
        let mut connection = http1::Connection::open(example, request.into()).await?;
        Ok(connection.send().await? == 200)
    };
    let mut delays = Vec::with_capacity(trials);
    for n in 0..trials {
        let request = CreateRequest {
            name: format!("bench-caller-{n}"),
            roles: vec!["bench-reader".into()],
            ..Default::default()
        };
        let created = client
            .create(admin_request(token, request))
            .await?
            .into_inner();
        for _ in 0..3 {
            anyhow::ensure!(
                accepts(&created.token).await?,
                "the example refused a new token"
            );
        }
        let stored = created.service_token.context("no token in the answer")?;
        let id = stored.id;
        match n % 3 {
            0 => {
                let request = sts::proto::DeleteRequest {
                    id,
                    ..Default::default()
                };
                client.delete(admin_request(token, request)).await?;
            }
            1 => {
                let request = sts::proto::UpdateRequest {
                    service_token: Some(sts::proto::ServiceToken {
                        disabled: true,
                        etag: String::new(),
                        ..stored
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["disabled".into()],
                    }),
                };
                client.update(admin_request(token, request)).await?;
            }
            _ => {
                let request = sts::proto::RotateRequest {
                    id,
                    grace_period: None,
                };
                client.rotate(admin_request(token, request)).await?;
            }
        }
        let revoked = Instant::now();
        while accepts(&created.token).await? {
            anyhow::ensure!(
                revoked.elapsed() < Duration::from_secs(10),
                "still accepted 10 s after its revocation"
            );
        }
        delays.push(revoked.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "scenario": "caller revocation",
            "trials": trials,
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
        })
    );
    Ok(())
}

/// See `Command::WatchStreams`.
async fn watch_streams(target: &str, token: &str, count: usize, pid: u32) -> anyhow::Result<()> {
    let rss = || -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib)
    };
    let before = rss()?;
    // Streams spread over connections as a fleet of services would be.
    let channels = connect(target, count.div_ceil(100)).await?;
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    for n in 0..count {
        let mut client = TokenServiceClient::new(channels[n % channels.len()].clone());
        let mut stream = client
            .watch(admin_request(token, sts::proto::WatchRequest {}))
            .await?
            .into_inner();
        let first = stream.message().await?.context("the stream ended")?;
        anyhow::ensure!(first.event() == sts::proto::WatchEvent::Synced);
        streams.push(stream);
    }
    let opened = started.elapsed();
    // Settled: every stream's task has sent its first heartbeat too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss()?;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "watch streams",
            "streams": count,
            "open_seconds": opened.as_secs_f64(),
            "rss_before_mib": before / 1024.0,
            "rss_after_mib": after / 1024.0,
            "kib_per_stream": (after - before) / count as f64,
        })
    );
    drop(streams);
    Ok(())
}

async fn connect(target: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        channels.push(
            Endpoint::from_shared(target.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {target}"))?,
        );
    }
    Ok(channels)
}

fn admin_request<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = token.parse() {
        request.metadata_mut().insert("x-api-key", value);
    }
    request
}

async fn http1_connection(
    target: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>> {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// See [`Command::Limiters`].
async fn limiters(
    redis: &str,
    concurrency: usize,
    lease: u64,
    reps: usize,
    seconds: Duration,
) -> anyhow::Result<()> {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    };
    use sts::model::TokenId;
    use sts::rate_limit::{Local, OnStoreError, Shared, Spent};
    let limits = sts_bench::bench_rate_limits()?;
    let shared = Arc::new(Shared::new(redis, redis, OnStoreError::Closed)?);
    let local = Arc::new(Local::default());
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(0)
    };
    // The lease design's pool: what this replica took from Redis and has
    // not spent yet.
    let pool = Arc::new(Mutex::new(0u64));
    for rep in 1..=reps {
        for design in ["local", "script", "lease"] {
            let id = TokenId::random();
            let done = Arc::new(AtomicU64::new(0));
            let redis_calls = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + seconds;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (shared, local, pool, limits) =
                    (shared.clone(), local.clone(), pool.clone(), limits.clone());
                let (done, redis_calls) = (done.clone(), redis_calls.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let allowed = match design {
                            "local" => local.spend(id, &limits, 1, now_ms()).allowed(),
                            "script" => {
                                redis_calls.fetch_add(1, Ordering::Relaxed);
                                matches!(shared.spend(id, &limits, 1, now_ms()).await,
                                    Spent::Counted(q) if q.allowed())
                            }
                            _ => {
                                let from_pool = {
                                    let mut left = pool.lock().expect("the pool's lock");
                                    if *left > 0 {
                                        *left -= 1;
                                        true
                                    } else {
                                        false
                                    }
                                };
                                from_pool || {
                                    redis_calls.fetch_add(1, Ordering::Relaxed);
                                    let taken = matches!(
                                        shared.spend(id, &limits, lease, now_ms()).await,
                                        Spent::Counted(q) if q.allowed()
                                    );
                                    if taken {
                                        *pool.lock().expect("the pool's lock") += lease - 1;
                                    }
                                    taken
                                }
                            }
                        };
                        if allowed {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            *pool.lock().expect("the pool's lock") = 0;
            let checks = done.load(Ordering::Relaxed);
            println!(
                "{}",
                serde_json::json!({
                    "design": design,
                    "rep": rep,
                    "checks_per_second": (checks as f64 / seconds.as_secs_f64()).round(),
                    "redis_calls": redis_calls.load(Ordering::Relaxed),
                    "lease": if design == "lease" { lease } else { 1 },
                })
            );
        }
    }
    Ok(())
}

/// See [`Command::CacheScaling`].
fn cache_scaling(tokens: usize, reps: usize, seconds: Duration) {
    use std::sync::Arc;
    use sts::{
        cache::ValidationCache,
        model::{ServiceToken, StoredToken, TokenId},
    };
    let cache = Arc::new(ValidationCache::local());
    let new = NewToken {
        name: TokenName::parse("bench").expect("valid name"),
        roles: Roles::parse(&["bench-reader"]).expect("valid role"),
        expiration: None,
        description: Default::default(),
        labels: Default::default(),
        created_by: String::new(),
        bindings: Default::default(),
        rate_limits: None,
        owners: Default::default(),
    };
    let hashes: Arc<Vec<_>> = Arc::new(
        (0..tokens)
            .map(|_| {
                let stored = StoredToken {
                    token: ServiceToken::new(TokenId::random(), &new, SystemTime::now()),
                    hash: Secret::generate().hash(),
                    previous_hash: None,
                    retired: Vec::new(),
                };
                cache.fill(cache.ticket(), &stored.hash, &stored);
                stored.hash
            })
            .collect(),
    );
    for rep in 1..=reps {
        for threads in [1usize, 2] {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (cache, hashes) = (cache.clone(), hashes.clone());
                    std::thread::spawn(move || {
                        let started = Instant::now();
                        let (mut hits, mut i) = (0u64, t * 7919);
                        while started.elapsed() < seconds {
                            for _ in 0..1024 {
                                i = (i + 1) % hashes.len();
                                if cache.get(&hashes[i]).is_some() {
                                    hits += 1;
                                }
                            }
                        }
                        hits as f64 / started.elapsed().as_secs_f64()
                    })
                })
                .collect();
            let rate: f64 = workers
                .into_iter()
                .map(|w| w.join().expect("a lookup thread"))
                .sum();
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "cache lookups",
                    "threads": threads,
                    "tokens": tokens,
                    "rep": rep,
                    "lookups_per_sec": rate.round(),
                })
            );
        }
    }
}

/// The ext_authz `Check` Envoy sends for an ordinary request carrying
/// `token`: the peers, the request line and every header.
fn check_request(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
    };
    // What Envoy sends for an ordinary request: the peers, the
    // request line and every header, the credential among them.
    let peer = |ip: &str, port: u32| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let headers = [
        (":authority", "builds.example.com"),
        (":method", "GET"),
        (":path", "/builds/42?expand=steps"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("user-agent", "ci-runner/3.2 (linux; amd64)"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "7f4c1a0e-5b7e-4d0b-9a55-2f6c1d3e8b91"),
        ("x-api-key", token),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.3.17", 51544)),
            destination: Some(peer("10.0.0.5", 8000)),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "1386514591740926146".into(),
                    method: "GET".into(),
                    path: "/builds/42?expand=steps".into(),
                    host: "builds.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One cost-curve point's repetitions.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    p99_ms: Vec<f64>,
}

/// See [`Command::Chart`]: medians over the repetitions of each (store,
/// tokens, draw) cost-curve row.
fn chart(results: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("cannot read {}", results.display()))?;
    // "store, draw" -> tokens -> samples
    let mut series: BTreeMap<String, BTreeMap<u64, Samples>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(tokens), Some(rps), Some(p99)) = (
            row["tokens"].as_u64(),
            row["rps"].as_f64(),
            row["p99_us"].as_f64(),
        ) else {
            continue;
        };
        let store = row["store"].as_str().unwrap_or("sled");
        let draw = row["draw"].as_str().unwrap_or("hot");
        let samples = series
            .entry(format!("{store}, {draw}"))
            .or_default()
            .entry(tokens)
            .or_default();
        samples.rps.push(rps);
        samples.p99_ms.push(p99 / 1000.0);
    }
    anyhow::ensure!(
        !series.is_empty(),
        "{} holds no cost-curve rows",
        results.display()
    );
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    // (name, [(tokens, req/s, p99 ms)])
    type Line = (String, Vec<(f64, f64, f64)>);
    let lines: Vec<Line> = series
        .into_iter()
        .map(|(name, points)| {
            let points = points
                .into_iter()
                .map(|(tokens, s)| (tokens as f64, median(&s.rps), median(&s.p99_ms)))
                .collect();
            (name, points)
        })
        .collect();
    let all = || lines.iter().flat_map(|(_, points)| points.iter());
    let (min_x, max_x) = all().fold((f64::MAX, 0.0_f64), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let max_rps = all().map(|p| p.1).fold(0.0_f64, f64::max) * 1.15;
    let max_p99 = all().map(|p| p.2).fold(0.0_f64, f64::max) * 1.15;
    let root = SVGBackend::new(out, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (panel, (title, pick, max)) in panels.iter().zip([
        ("Validate req/s (server on one core)", 1usize, max_rps),
        ("p99 latency, ms", 2usize, max_p99),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((min_x * 0.8..max_x * 1.25).log_scale(), 0.0..max.max(1.0))?;
        let y_label = |y: &f64| {
            if pick == 1 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        };
        chart
            .configure_mesh()
            .x_desc("tokens in the store")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&y_label)
            .draw()?;
        for (index, (name, points)) in lines.iter().enumerate() {
            let color = colors[index % colors.len()];
            let values: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.0, if pick == 1 { p.1 } else { p.2 }))
                .collect();
            chart
                .draw_series(LineSeries::new(values.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                values
                    .into_iter()
                    .map(|v| Circle::new(v, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
