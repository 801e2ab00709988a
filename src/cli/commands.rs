//! What each `sts` command does, given its already-parsed arguments.
//!
//! Where the server URL and token come from, highest first: flags, then
//! environment (both resolved by the binary's argument parser), then the
//! config file's context (`--context`, else `current-context`). A context's
//! token is only ever sent to that context's URL.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde_json::json;

use super::{
    CliError,
    client::{Session, TlsOptions},
    config::{Config, Context, default_path},
    output::{Printer, describe_table, epoch_millis, token_json, token_table, wide_token_table},
};
use crate::proto::{CreateRequest, ListRequest, RevokeResult};

pub use super::bindings::{BindingOptions, parse_route};
use super::limits::parse_rate_limits;

/// What `--rate-limit` and `--no-rate-limit` (create) or
/// `--clear-rate-limits` (update) give.
#[derive(Debug, Clone, Default)]
pub struct LimitOptions {
    /// `NAME=LIMIT/PERIOD` each.
    pub limits: Vec<String>,
    /// None at all: not the server's default (create), every one removed
    /// (update).
    pub none: bool,
}

/// The options every command shares.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub url: Option<String>,
    pub service_token: Option<String>,
    pub context: Option<String>,
    pub config: Option<PathBuf>,
    pub ca_cert_path: Option<PathBuf>,
    pub skip_ssl: bool,
}

impl Globals {
    pub(super) fn config_path(&self) -> Result<PathBuf, CliError> {
        if let Some(path) = &self.config {
            return Ok(path.clone());
        }
        default_path(
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
        .ok_or_else(|| {
            CliError::Config("cannot find a config directory: set HOME or pass --config".into())
        })
    }

    pub(super) fn load_config(&self) -> Result<(Config, PathBuf), CliError> {
        let path = self.config_path()?;
        Ok((Config::load(&path)?, path))
    }

    /// The context named by `--context`, else the current one.
    pub(super) fn selected_context(&self) -> Result<(String, Context), CliError> {
        let (config, path) = self.load_config()?;
        let name = self
            .context
            .clone()
            .or(config.current_context.clone())
            .ok_or_else(|| {
                CliError::Config(format!(
                    "no current context in {}: run `sts context save --name NAME --url URL --service-token TOKEN`, or pass --url and --service-token",
                    path.display()
                ))
            })?;
        let context = config.get(&name).cloned().ok_or_else(|| {
            CliError::Config(format!("context '{name}' is not in {}", path.display()))
        })?;
        Ok((name, context))
    }

    /// The server, credential and TLS settings to use. A context supplies
    /// whatever the flags leave out, but only for its own server.
    pub(super) async fn session(&self) -> Result<Session, CliError> {
        let (url, context) = match &self.url {
            Some(url) => {
                let context = self
                    .selected_context()
                    .ok()
                    .map(|(_, c)| c)
                    .filter(|c| same_server(&c.url, url));
                (url.clone(), context)
            }
            None => {
                let (_, context) = self.selected_context()?;
                (context.url.clone(), Some(context))
            }
        };
        let token = self
            .service_token
            .clone()
            .or_else(|| context.as_ref().map(|c| c.service_token.clone()));
        Session::connect(&url, token, &self.tls(context.as_ref())).await
    }

    pub(super) fn tls(&self, context: Option<&Context>) -> TlsOptions {
        TlsOptions {
            ca_cert_path: self
                .ca_cert_path
                .clone()
                .or_else(|| context.and_then(|c| c.ca_cert_path.clone())),
            skip_ssl: self.skip_ssl || context.is_some_and(|c| c.skip_ssl),
        }
    }
}

fn same_server(a: &str, b: &str) -> bool {
    matches!(
        (super::client::origin(a), super::client::origin(b)),
        (Ok(a), Ok(b)) if a == b
    )
}

/// `sts service-token create`.
pub async fn create_token(
    globals: &Globals,
    printer: &Printer,
    name: String,
    roles: Vec<String>,
    expiration: Option<String>,
    bindings: BindingOptions,
    limits: LimitOptions,
) -> Result<(), CliError> {
    let expiration = expiration.as_deref().map(parse_expiration).transpose()?;
    let rate_limits = parse_rate_limits(&limits.limits)?;
    let asked_for_expiration = expiration.is_some();
    let allowed_routes = bindings
        .routes
        .iter()
        .map(|route| parse_route(route))
        .collect::<Result<Vec<_>, _>>()?;
    let mut session = globals.session().await?;
    let (token, created) = session
        .create(CreateRequest {
            description: String::new(),
            labels: Default::default(),
            name,
            roles,
            expiration,
            allowed_sources: bindings.sources,
            audiences: bindings.audiences,
            allowed_routes,
            rate_limits,
            no_rate_limits: limits.none,
        })
        .await?;
    let mut value = json!({ "id": created.id, "name": created.name, "token": token });
    if let Some(expiration) = &created.expiration {
        value["expiration"] = json!(epoch_millis(expiration));
    }
    printer.success(
        &format!("Service token created: {token}"),
        json!({ "service-token": value }),
    );
    let expires = match &created.expiration {
        Some(at) if !asked_for_expiration => format!(
            "; it expires {} UTC (this server's default token lifetime)",
            super::output::date_time(at)
        ),
        _ => String::new(),
    };
    printer.note(&format!("Its id is {}{expires}.", created.id));
    Ok(())
}

/// `yyyy-MM-dd`: midnight UTC at the start of that day, which must lie ahead.
pub fn parse_expiration(text: &str) -> Result<prost_types::Timestamp, CliError> {
    let invalid = || {
        CliError::Usage(format!(
            "invalid expiration '{text}': use a date as yyyy-MM-dd, e.g. 2030-12-31"
        ))
    };
    let start = crate::clock::parse_date(text).ok_or_else(invalid)?;
    if start <= crate::clock::epoch_seconds(std::time::SystemTime::now()) {
        return Err(CliError::Usage(format!(
            "invalid expiration '{text}': the date must be in the future"
        )));
    }
    Ok(prost_types::Timestamp {
        seconds: start,
        nanos: 0,
    })
}

/// `sts service-token list`'s filters and columns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub name_prefix: Option<String>,
    pub role: Option<String>,
    /// Not used for this long (never used included).
    pub unused_for: Option<Duration>,
    /// Expiring within this long (expired included).
    pub expiring_within: Option<Duration>,
    /// Only disabled tokens.
    pub disabled: bool,
    /// Only tokens over the server's maximum token lifetime.
    pub over_policy: bool,
    /// Only tokens this manager owns.
    pub owner: Option<u64>,
    /// Status, last use, creator and description too.
    pub wide: bool,
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    at.into()
}

fn now_seconds() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `sts service-token list`.
pub async fn list_tokens(
    globals: &Globals,
    printer: &Printer,
    options: ListOptions,
) -> Result<(), CliError> {
    let now = SystemTime::now();
    let too_long = |flag: &str| CliError::Usage(format!("{flag} is too long"));
    let unused_since = options
        .unused_for
        .map(|d| now.checked_sub(d).ok_or_else(|| too_long("--unused-for")))
        .transpose()?;
    let expiring_before = options
        .expiring_within
        .map(|d| {
            now.checked_add(d)
                .ok_or_else(|| too_long("--expiring-within"))
        })
        .transpose()?;
    let filter = ListRequest {
        name_prefix: options.name_prefix.unwrap_or_default(),
        role: options.role.unwrap_or_default(),
        unused_since: unused_since.map(timestamp),
        expiring_before: expiring_before.map(timestamp),
        disabled: options.disabled.then_some(true),
        over_policy: options.over_policy,
        owner_id: options.owner.unwrap_or_default(),
        ..ListRequest::default()
    };
    let mut session = globals.session().await?;
    let mut tokens = session.list_all(filter).await?;
    let table = if options.wide {
        wide_token_table(&mut tokens, now_seconds())
    } else {
        token_table(&mut tokens)
    };
    let value = json!({ "service-tokens": tokens.iter().map(token_json).collect::<Vec<_>>() });
    printer.table(table, "No service tokens found.", value);
    Ok(())
}

/// `sts service-token describe`.
pub async fn describe_token(globals: &Globals, printer: &Printer, id: u64) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    let token = session.get(id).await?;
    let table = describe_table(&token, now_seconds());
    printer.table(table, "", json!({ "service-token": token_json(&token) }));
    Ok(())
}

/// What `sts service-token update` changes; `None`/empty leaves a field.
#[derive(Debug, Clone, Default)]
pub struct TokenChanges {
    pub name: Option<String>,
    pub roles: Option<Vec<String>>,
    /// `yyyy-MM-dd`.
    pub expiration: Option<String>,
    pub no_expiration: bool,
    pub description: Option<String>,
    /// `key=value`, set or replaced.
    pub labels: Vec<String>,
    pub remove_labels: Vec<String>,
    /// Each non-empty list replaces the token's whole list.
    pub bindings: BindingOptions,
    pub clear_sources: bool,
    pub clear_audiences: bool,
    pub clear_routes: bool,
    /// Non-empty replaces the token's limits; `none` removes them.
    pub limits: LimitOptions,
    /// A new owner (0: none).
    pub owner: Option<u64>,
}

/// `sts service-token update`: the named fields only (one Update with a
/// field mask); labels are merged into the token's own by the server, one
/// `labels.<key>` path each, so updates running at once all land.
pub async fn update_token(
    globals: &Globals,
    printer: &Printer,
    id: u64,
    changes: TokenChanges,
) -> Result<(), CliError> {
    let mut token = crate::proto::ServiceToken {
        id,
        ..Default::default()
    };
    let mut paths: Vec<String> = Vec::new();
    if let Some(name) = changes.name {
        token.name = name;
        paths.push("name".into());
    }
    if let Some(roles) = changes.roles {
        token.roles = roles;
        paths.push("roles".into());
    }
    if let Some(expiration) = &changes.expiration {
        token.expiration = Some(parse_expiration(expiration)?);
        paths.push("expiration".into());
    }
    if changes.no_expiration {
        paths.push("expiration".into());
    }
    if let Some(description) = changes.description {
        token.description = description;
        paths.push("description".into());
    }
    if let Some(owner) = changes.owner {
        token.owner_id = owner;
        paths.push("owner_id".into());
    }
    let BindingOptions {
        sources,
        audiences,
        routes,
    } = changes.bindings;
    if !sources.is_empty() || changes.clear_sources {
        token.allowed_sources = sources;
        paths.push("allowed_sources".into());
    }
    if !audiences.is_empty() || changes.clear_audiences {
        token.audiences = audiences;
        paths.push("audiences".into());
    }
    if !routes.is_empty() || changes.clear_routes {
        token.allowed_routes = routes
            .iter()
            .map(|route| parse_route(route))
            .collect::<Result<_, _>>()?;
        paths.push("allowed_routes".into());
    }
    if !changes.limits.limits.is_empty() || changes.limits.none {
        token.rate_limits = parse_rate_limits(&changes.limits.limits)?;
        paths.push("rate_limits".into());
    }
    let mut session = globals.session().await?;
    for label in &changes.labels {
        let (key, value) = label
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("invalid --label '{label}': use key=value")))?;
        token.labels.insert(key.to_owned(), value.to_owned());
        paths.push(format!("labels.{key}"));
    }
    // A key named but absent from the message is removed.
    for key in &changes.remove_labels {
        paths.push(format!("labels.{key}"));
    }
    if paths.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --name, --roles, --expiration, --no-expiration, --description, --label, --remove-label, --allow-source, --audience, --allow-route, --rate-limit or a --clear-... flag".into(),
        ));
    }
    let updated = session.update(token, paths).await?;
    printer.success(
        &format!("Service token updated: {id}"),
        json!({ "service-token": token_json(&updated) }),
    );
    Ok(())
}

/// `sts service-token disable` / `enable`.
pub async fn set_disabled(
    globals: &Globals,
    printer: &Printer,
    id: u64,
    disabled: bool,
) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    let token = crate::proto::ServiceToken {
        id,
        disabled,
        ..Default::default()
    };
    let updated = session.update(token, vec!["disabled".into()]).await?;
    let done = if disabled { "disabled" } else { "enabled" };
    printer.success(
        &format!("Service token {done}: {id}"),
        json!({ "service-token": token_json(&updated) }),
    );
    Ok(())
}

/// After rotating the token this command ran with: the saved context it
/// came from takes the new secret (its old one may stop any moment, and a
/// previous secret cannot manage anyway); a token given by flag or
/// environment gets a word saying what to update.
fn follow_rotation(globals: &Globals, printer: &Printer, token: &str) -> Result<(), CliError> {
    let from_context = globals
        .service_token
        .is_none()
        .then(|| globals.selected_context().ok())
        .flatten();
    let Some((name, context)) = from_context else {
        printer.note(
            "This rotated the token this command ran with (--service-token or STS_CLI_SERVICE_TOKEN): give it the new secret.",
        );
        return Ok(());
    };
    let (mut config, path) = globals.load_config()?;
    config.upsert(
        &name,
        Context {
            service_token: token.to_owned(),
            ..context
        },
    );
    config.save(&path)?;
    printer.note(&format!(
        "Context '{name}' now uses the new secret (it held the rotated one)."
    ));
    Ok(())
}

/// `sts service-token rotate`: the new secret, printed as `create` prints
/// a new token's.
pub async fn rotate_token(
    globals: &Globals,
    printer: &Printer,
    id: u64,
    grace: Duration,
) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    // Whether this rotates the very token this command runs with: asked
    // before, while its secret surely works.
    let own = session.validate_own_token().await.is_ok_and(|t| t.id == id);
    let (token, rotated) = session.rotate(id, grace).await.map_err(|e| match e {
        // The token's own expiration breaks the lifetime policy: a new
        // secret would live as long, so the fix comes first.
        CliError::Usage(why) if why.contains("maximum token lifetime") => CliError::Usage(format!(
            "cannot rotate: the token's expiration is not within this server's lifetime policy ({why}); give it one first: sts service-token update {id} --expiration YYYY-MM-DD"
        )),
        other => other,
    })?;
    print_rotated(printer, &token, &rotated);
    if own {
        follow_rotation(globals, printer, &token)?;
    }
    Ok(())
}

/// `sts service-token rotate --self`: the token this command runs with
/// rotates itself; the current context (when it supplied the token) gets
/// the new secret, as after any rotation of the command's own token.
pub async fn rotate_self(
    globals: &Globals,
    printer: &Printer,
    grace: Duration,
    expiration: Option<&str>,
) -> Result<(), CliError> {
    let expiration = expiration.map(parse_expiration).transpose()?;
    let mut session = globals.session().await?;
    let (token, rotated) = session.rotate_self(grace, expiration).await?;
    print_rotated(printer, &token, &rotated);
    follow_rotation(globals, printer, &token)
}

/// The new secret of a rotation, printed as `create` prints a new token's.
fn print_rotated(printer: &Printer, token: &str, rotated: &crate::proto::ServiceToken) {
    let mut value = json!({ "id": rotated.id, "name": rotated.name, "token": token });
    if let Some(expiration) = &rotated.expiration {
        value["expiration"] = json!(epoch_millis(expiration));
    }
    let until = rotated
        .previous_secret_expiration
        .as_ref()
        .map(|t| {
            format!(
                " (the previous secret works until {} UTC)",
                super::output::date_time(t)
            )
        })
        .unwrap_or_default();
    printer.success(
        &format!("Service token rotated: {token}{until}"),
        json!({ "service-token": value }),
    );
}

/// The most tokens the server takes in one revocation call.
const REVOKE_BATCH: usize = 100;

/// `sts service-token revoke --token-file FILE`: revokes every token in
/// the file (one per line; `-` reads stdin), in calls of at most 100.
/// Prints one line per token, by its line number: never the secret.
pub async fn revoke_leaked(
    globals: &Globals,
    printer: &Printer,
    token_file: &std::path::Path,
) -> Result<(), CliError> {
    let text = if token_file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(token_file)
    }
    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", token_file.display())))?;
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim().to_owned()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(CliError::Usage(format!(
            "{} holds no token",
            token_file.display()
        )));
    }
    let mut session = globals.session().await?;
    let mut results = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(REVOKE_BATCH) {
        let tokens = chunk.iter().map(|(_, token)| token.clone()).collect();
        results.extend(session.revoke_leaked(tokens).await?);
    }
    let mut text = String::new();
    let mut json_results = Vec::with_capacity(results.len());
    for ((line, _), result) in lines.iter().zip(&results) {
        let result = match RevokeResult::try_from(*result) {
            Ok(RevokeResult::Revoked) => "revoked",
            Ok(RevokeResult::NotFound) => "not found",
            Ok(RevokeResult::Malformed) => "malformed",
            _ => "unknown",
        };
        text.push_str(&format!("line {line}: {result}\n"));
        json_results.push(json!({ "line": line, "result": result }));
    }
    let revoked = json_results
        .iter()
        .filter(|r| r["result"] == "revoked")
        .count();
    text.push_str(&format!(
        "Revoked {revoked} of {} service tokens.",
        lines.len()
    ));
    printer.success(&text, json!({ "revoked": json_results }));
    Ok(())
}

/// `sts service-token delete`.
pub async fn delete_token(globals: &Globals, printer: &Printer, id: u64) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    session.delete(id).await?;
    printer.success(
        &format!("Service token deleted: {id}"),
        json!({ "deleted-service-token": id }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_are_future_dates_at_midnight_utc() {
        let ts = parse_expiration("2099-12-31").unwrap();
        assert_eq!(ts.seconds, 4_102_358_400);
        assert_eq!(ts.nanos, 0);
        // The last day the server accepts is a day the CLI accepts too.
        assert_eq!(
            parse_expiration("9999-12-31").unwrap().seconds,
            253_402_214_400
        );
        for bad in [
            "10000-01-01",
            "2000-01-01",
            "31-12-2099",
            "2099-13-01",
            "tomorrow",
            "",
        ] {
            assert!(
                matches!(parse_expiration(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }
}
