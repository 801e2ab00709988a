//! An example service behind `ValidateLayer`: `GET /hello` answers the
//! caller's token name and roles; `GET /healthz` (no token) says whether
//! the validator's stream is in sync. The end-to-end tests and the
//! benchmark run this very file.
//!
//! ```text
//! STS_WATCHER_TOKEN=svctok-… cargo run -p sts-client --example service -- \
//!     --server http://127.0.0.1:8080 --require-role deploy
//! ```

use std::{net::SocketAddr, time::Duration};

use axum::{Router, routing::get};
use clap::Parser;
use sts_client::{Config, Identity, ValidateLayer, Validator};

#[derive(Parser)]
struct Args {
    /// The token server.
    #[arg(long, env = "STS_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A token with the server's watcher role.
    #[arg(long, env = "STS_WATCHER_TOKEN", hide_env_values = true)]
    token: String,
    /// Where to listen (port 0: any; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Roles every caller's token must hold.
    #[arg(long)]
    require_role: Vec<String>,
    /// How long without a heartbeat the cache still answers.
    #[arg(long, value_parser = humantime_secs)]
    max_staleness: Option<Duration>,
    /// Keep accepting cached tokens this long while the server is away.
    #[arg(long, value_parser = humantime_secs)]
    serve_stale_for: Option<Duration>,
    /// Serve /hello without the layer (the benchmark's baseline).
    #[arg(long)]
    no_auth: bool,
}

/// Seconds, possibly fractional: `5`, `0.5`.
fn humantime_secs(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

async fn hello(who: Identity) -> String {
    format!("hello {} ({})\n", who.name, who.roles.join(","))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = Config::new(args.server, args.token)?;
    if let Some(max) = args.max_staleness {
        config = config.max_staleness(max);
    }
    if let Some(longest) = args.serve_stale_for {
        config = config.serve_stale_for(longest);
    }
    let validator = Validator::new(config)?;
    let app = if args.no_auth {
        Router::new().route("/hello", get(|| async { "hello\n" }))
    } else {
        let mut layer = ValidateLayer::new(validator.clone());
        for role in args.require_role {
            layer = layer.require_role(role);
        }
        Router::new().route("/hello", get(hello)).layer(layer)
    };
    let health = validator.clone();
    let app = app.route(
        "/healthz",
        get(move || {
            let health = health.health();
            async move {
                format!(
                    "synced={} fresh={} cached={}\n",
                    health.synced, health.answering_from_cache, health.cached
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
