//! `sts`: the StackState CLI's service-token and context commands, as a gRPC
//! client of `sts-server`. Parses arguments and maps them onto `sts::cli`.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum, error::ErrorKind};
use sts::cli::{
    CliError, DEFAULT_ROTATION_GRACE,
    commands::{self, Globals},
    contexts,
    error::exit,
    output::{Format, Printer},
    usage,
};

/// Where `--help` lists the flags every command takes, apart from the
/// command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "sts",
    version,
    about = "StackState CLI: service tokens and contexts"
)]
struct Cli {
    /// Server URL, e.g. http://localhost:7070 (overrides the context).
    #[arg(long, env = "STS_CLI_URL", global = true, help_heading = GLOBAL)]
    url: Option<String>,
    /// Service token to authenticate with (overrides the context).
    #[arg(
        long,
        env = "STS_CLI_SERVICE_TOKEN",
        global = true, help_heading = GLOBAL,
        hide_env_values = true
    )]
    service_token: Option<String>,
    /// Context to use instead of the current one.
    #[arg(short = 'c', long, env = "STS_CLI_CONTEXT", global = true, help_heading = GLOBAL)]
    context: Option<String>,
    /// Config file (default: $XDG_CONFIG_HOME/stackstate-cli/config.yaml).
    #[arg(long, global = true, help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Also trust the CA certificates in this PEM file for https:// URLs.
    #[arg(long, env = "STS_CLI_CA_CERT_PATH", global = true, help_heading = GLOBAL)]
    ca_cert_path: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (encrypted, not
    /// authenticated: for tests only).
    #[arg(long, env = "STS_CLI_SKIP_SSL", global = true, help_heading = GLOBAL)]
    skip_ssl: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text, global = true, help_heading = GLOBAL)]
    output: OutputFormat,
    /// No colour or symbols, even on a terminal.
    #[arg(long, global = true, help_heading = GLOBAL)]
    no_color: bool,
    /// Log what the CLI does to stderr (-vv for more).
    #[arg(short = 'v', long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    #[command(about = "Manage service tokens.")]
    ServiceToken {
        /// Boxed: parsed once, and far larger than a context command.
        #[command(subcommand)]
        command: Box<TokenCommand>,
    },
    #[command(
        about = "Manage connection contexts.",
        args_conflicts_with_subcommands = true
    )]
    Context(ContextArgs),
}

/// What a token may be bound to (`create` and `update`).
#[derive(Args)]
struct Bindings {
    /// An address or CIDR the token may be used from, comma-separated
    /// and/or repeated (none: anywhere).
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    allow_source: Vec<String>,
    /// An audience the token is for (repeatable; none: any).
    #[arg(long, value_name = "AUDIENCE")]
    audience: Vec<String>,
    /// A route the token may call, 'METHODS /path' (e.g. 'GET,HEAD
    /// /api/v1/*'; `*` is one segment, a trailing `/**` anything below)
    /// or '/path' for any method (repeatable; none: any route).
    #[arg(long, value_name = "ROUTE")]
    allow_route: Vec<String>,
}

impl From<Bindings> for commands::BindingOptions {
    fn from(bindings: Bindings) -> commands::BindingOptions {
        let Bindings {
            allow_source,
            audience,
            allow_route,
        } = bindings;
        commands::BindingOptions {
            sources: allow_source,
            audiences: audience,
            routes: allow_route,
        }
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    #[command(about = "Create a service token")]
    Create {
        /// Name of the token.
        #[arg(short = 'n', long)]
        name: String,
        /// Roles, comma-separated and/or repeated.
        #[arg(long, value_delimiter = ',', required = true, num_args = 1)]
        roles: Vec<String>,
        /// Expiration date, yyyy-MM-dd (midnight UTC at its start).
        #[arg(long)]
        expiration: Option<String>,
        #[command(flatten)]
        bindings: Bindings,
        /// A rate limit, NAME=LIMIT/PERIOD (e.g. burst=20/1s,
        /// hourly=5000/1h; repeatable; none: the server's default).
        #[arg(long, value_name = "NAME=LIMIT/PERIOD")]
        rate_limit: Vec<String>,
        /// No rate limit at all, not the server's default.
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
    },
    #[command(about = "Delete a service token")]
    Delete {
        /// The token's id.
        #[arg(value_name = "ID", required_unless_present = "id")]
        positional_id: Option<u64>,
        /// The token's id.
        #[arg(short = 'i', long = "id", conflicts_with = "positional_id")]
        id: Option<u64>,
    },
    #[command(about = "List service tokens")]
    List {
        /// Only tokens whose name starts with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// Only tokens holding this role.
        #[arg(long)]
        role: Option<String>,
        /// Only tokens not used for this long (never used included), e.g. 90d.
        #[arg(long)]
        unused_for: Option<humantime::Duration>,
        /// Only tokens expiring within this long (expired included), e.g. 30d.
        #[arg(long)]
        expiring_within: Option<humantime::Duration>,
        /// Only disabled tokens.
        #[arg(long)]
        disabled: bool,
        /// Only tokens over the server's maximum token lifetime (never
        /// expiring, or expiring later than it allows today).
        #[arg(long)]
        over_policy: bool,
        /// Only tokens this manager token owns, directly or through the
        /// tokens it made (a deleted manager's id finds its tokens too).
        #[arg(long, value_name = "ID")]
        owner: Option<u64>,
        /// Also show status, last use, creator and description.
        #[arg(long)]
        wide: bool,
    },
    #[command(about = "Show every field of a service token")]
    Describe {
        /// The token's id.
        id: u64,
    },
    #[command(about = "Change a service token's name, roles, expiration, description or labels")]
    Update {
        /// The token's id.
        id: u64,
        /// New name.
        #[arg(short = 'n', long)]
        name: Option<String>,
        /// New roles (replacing the old ones), comma-separated and/or repeated.
        #[arg(long, value_delimiter = ',', num_args = 1)]
        roles: Option<Vec<String>>,
        /// New expiration date, yyyy-MM-dd (midnight UTC at its start).
        #[arg(long, conflicts_with = "no_expiration")]
        expiration: Option<String>,
        /// Never expire.
        #[arg(long)]
        no_expiration: bool,
        /// New description ("" removes it).
        #[arg(long)]
        description: Option<String>,
        /// A label to set, key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A label to remove (repeatable).
        #[arg(long = "remove-label", value_name = "KEY")]
        remove_labels: Vec<String>,
        /// The sources, audiences or routes given replace the token's own.
        #[command(flatten)]
        bindings: Bindings,
        /// Remove every allowed source: usable from anywhere.
        #[arg(long, conflicts_with = "allow_source")]
        clear_allowed_sources: bool,
        /// Remove every audience: usable for any.
        #[arg(long, conflicts_with = "audience")]
        clear_audiences: bool,
        /// Remove every allowed route: usable on any route.
        #[arg(long, conflicts_with = "allow_route")]
        clear_allowed_routes: bool,
        /// A rate limit, NAME=LIMIT/PERIOD (repeatable); those given
        /// replace the token's own.
        #[arg(long, value_name = "NAME=LIMIT/PERIOD")]
        rate_limit: Vec<String>,
        /// Remove every rate limit.
        #[arg(long, conflicts_with = "rate_limit")]
        clear_rate_limits: bool,
        /// Give the token to this manager token (an admin's change); 0
        /// gives it back to the admins.
        #[arg(long, value_name = "ID")]
        owner: Option<u64>,
    },
    #[command(about = "Show a service token's checks per day")]
    Usage {
        /// The token's id.
        id: u64,
        /// How many days, today (UTC) the last (1 to 90).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    #[command(about = "Disable a service token: refused until enabled again")]
    Disable {
        /// The token's id.
        id: u64,
    },
    #[command(about = "Enable a disabled service token")]
    Enable {
        /// The token's id.
        id: u64,
    },
    #[command(
        about = "Revoke leaked service tokens by their secrets (no credential needed: holding a secret is the right to revoke it)"
    )]
    Revoke {
        /// A file with one token per line; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        token_file: std::path::PathBuf,
    },
    #[command(about = "Give a service token a new secret; the old one works for the grace period")]
    Rotate {
        /// The token's id.
        #[arg(required_unless_present = "own", conflicts_with = "own")]
        id: Option<u64>,
        /// Rotate the token this command runs with, with its own secret
        /// (no admin needed): renewed for its lifetime, within the
        /// server's policy. The current context then holds the new secret.
        #[arg(long = "self")]
        own: bool,
        /// With --self: the new secret's expiration, yyyy-MM-dd, instead of
        /// the token's lifetime from now.
        #[arg(long, requires = "own")]
        expiration: Option<String>,
        /// How long the old secret keeps working, e.g. 24h. The default,
        /// an hour, lets running clients switch without an outage; 0s ends
        /// it now (for a leaked token, `sts service-token revoke` is
        /// faster still: no credential needed).
        #[arg(long, default_value_t = DEFAULT_ROTATION_GRACE.into())]
        grace: humantime::Duration,
    },
}

#[derive(Args)]
struct ContextArgs {
    #[command(subcommand)]
    command: Option<ContextCommand>,
    /// The short form `sts context --name NAME --url URL --service-token TOKEN` saves a context.
    #[command(flatten)]
    save: SaveArgs,
}

#[derive(Args)]
struct SaveArgs {
    /// Name of the context.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// Save without checking the token against the server.
    #[arg(long)]
    skip_validate: bool,
}

#[derive(Subcommand)]
enum ContextCommand {
    #[command(about = "Save a context (with --url and --service-token) and make it current")]
    Save(SaveArgs),
    #[command(about = "List contexts")]
    List,
    #[command(about = "Make a context current")]
    Set {
        /// Name of the context to make current.
        #[arg(short = 'n', long)]
        name: String,
    },
    #[command(about = "Show the current context")]
    Show,
    #[command(about = "Delete a context (not the current one)")]
    Delete {
        /// Name of the context to delete.
        #[arg(short = 'n', long)]
        name: String,
    },
    #[command(about = "Check that the server answers and the token is valid")]
    Validate,
}

/// Whether the raw arguments ask for JSON output (`-o json`, `-ojson`,
/// `-o=json`, `--output json`, `--output=json`): what argument errors are
/// printed as when clap could not finish parsing.
fn json_requested(args: &[String]) -> bool {
    args.iter().enumerate().any(|(i, arg)| {
        let next_is_json = || args.get(i + 1).is_some_and(|next| next == "json");
        match arg.as_str() {
            "-o" | "--output" => next_is_json(),
            "-ojson" | "-o=json" | "--output=json" => true,
            _ => false,
        }
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Everything else did nothing it was asked to, `sts service-token`
        // alone (clap shows the help) included: a usage error.
        Err(e) => {
            let args: Vec<String> = std::env::args().collect();
            if json_requested(&args) {
                let printer = Printer {
                    format: Format::Json,
                    decorate: false,
                    decorate_errors: false,
                };
                let message = e.render().to_string();
                printer.error(&CliError::Usage(message.trim().to_owned()));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    init_logging(cli.verbose);
    let colour = !cli.no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let printer = Printer {
        format: match cli.output {
            OutputFormat::Text => Format::Text,
            OutputFormat::Json => Format::Json,
        },
        decorate: colour && std::io::stdout().is_terminal(),
        decorate_errors: colour && std::io::stderr().is_terminal(),
    };
    let globals = Globals {
        url: cli.url,
        service_token: cli.service_token,
        context: cli.context,
        config: cli.config,
        ca_cert_path: cli.ca_cert_path,
        skip_ssl: cli.skip_ssl,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            printer.error(&CliError::Config(format!("cannot start: {e}")));
            return ExitCode::from(exit::CONFIG);
        }
    };
    match runtime.block_on(run(cli.command, &globals, &printer)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            printer.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command, globals: &Globals, printer: &Printer) -> Result<(), CliError> {
    match command {
        Command::ServiceToken { command } => match *command {
            TokenCommand::Create {
                name,
                roles,
                expiration,
                bindings,
                rate_limit,
                no_rate_limit,
            } => {
                let limits = commands::LimitOptions {
                    limits: rate_limit,
                    none: no_rate_limit,
                };
                commands::create_token(
                    globals,
                    printer,
                    name,
                    roles,
                    expiration,
                    bindings.into(),
                    limits,
                )
                .await
            }
            TokenCommand::Delete { positional_id, id } => {
                let id = id
                    .or(positional_id)
                    .ok_or_else(|| CliError::Usage("give the id of the token to delete".into()))?;
                commands::delete_token(globals, printer, id).await
            }
            TokenCommand::List {
                name_prefix,
                role,
                unused_for,
                expiring_within,
                disabled,
                over_policy,
                owner,
                wide,
            } => {
                let options = commands::ListOptions {
                    name_prefix,
                    role,
                    unused_for: unused_for.map(Into::into),
                    expiring_within: expiring_within.map(Into::into),
                    disabled,
                    over_policy,
                    owner,
                    wide,
                };
                commands::list_tokens(globals, printer, options).await
            }
            TokenCommand::Describe { id } => commands::describe_token(globals, printer, id).await,
            TokenCommand::Update {
                id,
                name,
                roles,
                expiration,
                no_expiration,
                description,
                labels,
                remove_labels,
                bindings,
                clear_allowed_sources,
                clear_audiences,
                clear_allowed_routes,
                rate_limit,
                clear_rate_limits,
                owner,
            } => {
                let changes = commands::TokenChanges {
                    owner,
                    name,
                    roles,
                    expiration,
                    no_expiration,
                    description,
                    labels,
                    remove_labels,
                    bindings: bindings.into(),
                    clear_sources: clear_allowed_sources,
                    clear_audiences,
                    clear_routes: clear_allowed_routes,
                    limits: commands::LimitOptions {
                        limits: rate_limit,
                        none: clear_rate_limits,
                    },
                };
                commands::update_token(globals, printer, id, changes).await
            }
            TokenCommand::Usage { id, days } => {
                usage::usage_token(globals, printer, id, days).await
            }
            TokenCommand::Disable { id } => {
                commands::set_disabled(globals, printer, id, true).await
            }
            TokenCommand::Enable { id } => {
                commands::set_disabled(globals, printer, id, false).await
            }
            TokenCommand::Revoke { token_file } => {
                commands::revoke_leaked(globals, printer, &token_file).await
            }
            TokenCommand::Rotate {
                id,
                own,
                expiration,
                grace,
            } => match id {
                Some(id) if !own => commands::rotate_token(globals, printer, id, *grace).await,
                _ => commands::rotate_self(globals, printer, *grace, expiration.as_deref()).await,
            },
        },
        Command::Context(ContextArgs { command, save }) => match command {
            None | Some(ContextCommand::Save(_)) => {
                let save = match command {
                    Some(ContextCommand::Save(args)) => args,
                    _ => save,
                };
                let name = save.name.ok_or_else(|| {
                    CliError::Usage(
                        "--name is required: sts context save --name NAME --url URL --service-token TOKEN".into(),
                    )
                })?;
                contexts::save_context(globals, printer, name, save.skip_validate).await
            }
            Some(ContextCommand::List) => contexts::list_contexts(globals, printer),
            Some(ContextCommand::Set { name }) => contexts::set_context(globals, printer, &name),
            Some(ContextCommand::Show) => contexts::show_context(globals, printer),
            Some(ContextCommand::Delete { name }) => {
                contexts::delete_context(globals, printer, &name)
            }
            Some(ContextCommand::Validate) => contexts::validate_context(globals, printer).await,
        },
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => "sts=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
