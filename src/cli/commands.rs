//! What each `sts` command does, given its already-parsed arguments.
//!
//! Where the server URL and token come from, highest first: flags, then
//! environment (both resolved by the binary's argument parser), then the
//! config file's context (`--context`, else `current-context`). A context's
//! token is only ever sent to that context's URL.

use std::path::PathBuf;

use serde_json::json;

use super::{
    CliError,
    client::{Session, TlsOptions},
    config::{Config, Context, default_path},
    output::{DATE, Printer, date, epoch_millis, render_table, token_json, token_table},
};
use crate::proto::{CreateRequest, ListRequest};

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
    fn config_path(&self) -> Result<PathBuf, CliError> {
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

    fn load_config(&self) -> Result<(Config, PathBuf), CliError> {
        let path = self.config_path()?;
        Ok((Config::load(&path)?, path))
    }

    /// The context named by `--context`, else the current one.
    fn selected_context(&self) -> Result<(String, Context), CliError> {
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
    async fn session(&self) -> Result<Session, CliError> {
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

    fn tls(&self, context: Option<&Context>) -> TlsOptions {
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
) -> Result<(), CliError> {
    let expiration = expiration.as_deref().map(parse_expiration).transpose()?;
    let mut session = globals.session().await?;
    let (token, created) = session
        .create(CreateRequest {
            description: String::new(),
            labels: Default::default(),
            name,
            roles,
            expiration,
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
    Ok(())
}

/// `yyyy-MM-dd`: midnight UTC at the start of that day, which must lie ahead.
pub fn parse_expiration(text: &str) -> Result<prost_types::Timestamp, CliError> {
    let invalid = || {
        CliError::Usage(format!(
            "invalid expiration '{text}': use a date as yyyy-MM-dd, e.g. 2030-12-31"
        ))
    };
    let day = time::Date::parse(text, DATE).map_err(|_| invalid())?;
    let start = day.midnight().assume_utc().unix_timestamp();
    if start <= time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err(CliError::Usage(format!(
            "invalid expiration '{text}': the date must be in the future"
        )));
    }
    Ok(prost_types::Timestamp {
        seconds: start,
        nanos: 0,
    })
}

/// `sts service-token list`.
pub async fn list_tokens(globals: &Globals, printer: &Printer) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    let mut tokens = session.list_all(ListRequest::default()).await?;
    let table = token_table(&mut tokens);
    let value = json!({ "service-tokens": tokens.iter().map(token_json).collect::<Vec<_>>() });
    printer.table(table, "No service tokens found.", value);
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

/// `sts context save` (and the short form `sts context --name …`).
pub async fn save_context(
    globals: &Globals,
    printer: &Printer,
    name: String,
    skip_validate: bool,
) -> Result<(), CliError> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(CliError::Usage("--name must not be empty".into()));
    }
    let url = globals
        .url
        .clone()
        .ok_or_else(|| CliError::Usage("--url is required to save a context".into()))?;
    let token = globals
        .service_token
        .clone()
        .ok_or_else(|| CliError::Usage("--service-token is required to save a context".into()))?;
    super::client::origin(&url)?;
    // Saved absolute, so the context works from any directory.
    let ca_cert_path = globals
        .ca_cert_path
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| CliError::Usage(format!("invalid --ca-cert-path: {e}")))?;
    let tls = TlsOptions {
        ca_cert_path,
        skip_ssl: globals.skip_ssl,
    };
    if !skip_validate {
        Session::connect(&url, Some(token.clone()), &tls)
            .await?
            .validate_own_token()
            .await?;
    }
    let (mut config, path) = globals.load_config()?;
    config.upsert(
        &name,
        Context {
            url: url.clone(),
            service_token: token,
            ca_cert_path: tls.ca_cert_path,
            skip_ssl: tls.skip_ssl,
        },
    );
    config.save(&path)?;
    printer.success(
        &format!("Saved context: '{name}'"),
        json!({ "saved-context": { "name": name, "url": url } }),
    );
    Ok(())
}

/// `sts context list`.
pub fn list_contexts(globals: &Globals, printer: &Printer) -> Result<(), CliError> {
    let (config, _) = globals.load_config()?;
    let current = |name: &str| config.current_context.as_deref() == Some(name);
    let rows = config
        .contexts
        .iter()
        .map(|c| {
            let marker = if current(&c.name) { "*" } else { "" };
            vec![marker.to_owned(), c.name.clone(), c.context.url.clone()]
        })
        .collect();
    let value = json!({
        "contexts": config.contexts.iter().map(|c| json!({
            "name": c.name,
            "url": c.context.url,
            "current": current(&c.name),
        })).collect::<Vec<_>>(),
    });
    printer.table(
        render_table(&["CURRENT", "NAME", "URL"], rows),
        "No contexts found.",
        value,
    );
    Ok(())
}

/// `sts context set`.
pub fn set_context(globals: &Globals, printer: &Printer, name: &str) -> Result<(), CliError> {
    let (mut config, path) = globals.load_config()?;
    config.set_current(name)?;
    config.save(&path)?;
    printer.success(
        &format!("Current context set to: '{name}'"),
        json!({ "current-context": name }),
    );
    Ok(())
}

/// `sts context show`: the selected context, never its token.
pub fn show_context(globals: &Globals, printer: &Printer) -> Result<(), CliError> {
    let (name, context) = globals.selected_context()?;
    let table = render_table(
        &["NAME", "URL"],
        vec![vec![name.clone(), context.url.clone()]],
    );
    printer.table(
        table,
        "",
        json!({ "context": { "name": name, "url": context.url } }),
    );
    Ok(())
}

/// `sts context delete`.
pub fn delete_context(globals: &Globals, printer: &Printer, name: &str) -> Result<(), CliError> {
    let (mut config, path) = globals.load_config()?;
    config.remove(name)?;
    config.save(&path)?;
    printer.success(
        &format!("Deleted context: '{name}'"),
        json!({ "deleted-context": name }),
    );
    Ok(())
}

/// `sts context validate`: the server answers and the token is valid.
pub async fn validate_context(globals: &Globals, printer: &Printer) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    let identity = session.validate_own_token().await?;
    let expires = identity.expiration.as_ref().map(date);
    printer.success(
        &format!(
            "Connection verified to {} as '{}'{}",
            session.url(),
            identity.name,
            expires
                .map(|d| format!(" (expires {d})"))
                .unwrap_or_default()
        ),
        json!({ "valid": true, "url": session.url(), "service-token": token_json(&identity) }),
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
