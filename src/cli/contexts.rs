//! `sts context …`: saving, listing, choosing, showing, deleting and
//! validating the connection contexts of the config file.

use serde_json::json;

use super::{
    CliError,
    client::{Session, TlsOptions},
    commands::Globals,
    config::Context,
    output::{Printer, date, render_table, token_json},
};

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
