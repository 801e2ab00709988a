//! What `sts` prints: StackState's text (✅/❌ and colour only on a terminal
//! without `NO_COLOR`), borderless tables, and stable JSON for scripts.

use std::io::Write as _;

use anstyle::{AnsiColor, Style};
use comfy_table::{ContentLineStyle, Table, TableStyle};
use serde_json::{Value, json};

use super::CliError;
use crate::{
    proto::{AllowedRoute, ServiceToken},
    text,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where and how results and errors are shown.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    /// Symbols and colour on stdout: only on a terminal, without `NO_COLOR` or `--no-color`.
    pub decorate: bool,
    /// The same for stderr, which may be a terminal while stdout is piped.
    pub decorate_errors: bool,
}

const OK: Style = AnsiColor::Green.on_default();
const FAILED: Style = AnsiColor::Red.on_default();

impl Printer {
    /// A finished action: `✅ text` (decorated) or `text`, or the JSON value.
    pub fn success(&self, text: &str, value: Value) {
        match self.format {
            Format::Json => self.json(&value),
            Format::Text if self.decorate => println!("{OK}✅ {text}{OK:#}"),
            Format::Text => println!("{text}"),
        }
    }

    /// What a person should know beside a result whose stdout is
    /// StackState's exact text (a new token's id): one line on stderr, so
    /// scripts reading stdout see StackState's output. Nothing with
    /// `-o json`, whose value carries it.
    pub fn note(&self, text: &str) {
        if self.format == Format::Text {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// A table (text) or the JSON value.
    pub fn table(&self, table: Option<String>, empty: &str, value: Value) {
        match (self.format, table) {
            (Format::Json, _) => self.json(&value),
            (Format::Text, Some(table)) => println!("{table}"),
            (Format::Text, None) => println!("{empty}"),
        }
    }

    fn json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
        println!("{text}");
    }

    /// Errors go to stderr: `❌ message` on a terminal, `error: message`
    /// piped, or `{"error": true, "error-message": ...}` with `-o json`.
    pub fn error(&self, error: &CliError) {
        let text = match self.format {
            Format::Json => {
                json!({ "error": true, "error-message": error.to_string() }).to_string()
            }
            Format::Text if self.decorate_errors => format!("{FAILED}❌ {error}{FAILED:#}"),
            Format::Text => format!("error: {error}"),
        };
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

/// StackState's table: upper-case header, ` | ` between padded columns, no
/// borders, no trailing spaces. `None` for no rows.
pub fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let mut table = Table::new();
    table
        .load_style(
            TableStyle::new()
                .header_lines(ContentLineStyle::none().junction('|'))
                .content_lines(ContentLineStyle::none().junction('|')),
        )
        .force_no_tty()
        .set_header(header.to_vec())
        .add_rows(rows);
    let last = header.len() - 1;
    for (i, column) in table.column_iter_mut().enumerate() {
        let left = u16::from(i > 0);
        let right = u16::from(i < last);
        column.set_padding((left, right));
    }
    Some(table.trim_fmt())
}

/// `yyyy-MM-dd` (UTC) of a timestamp.
pub fn date(timestamp: &prost_types::Timestamp) -> String {
    crate::clock::date(timestamp.seconds)
}

/// Epoch milliseconds, as StackState's JSON carries times.
pub fn epoch_millis(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos / 1_000_000))
}

/// `[a b]`, as StackState's CLI shows a role list.
pub fn roles(roles: &[String]) -> String {
    format!("[{}]", roles.join(" "))
}

/// `name` as a terminal may show it: what the server refuses in new names
/// but tokens from earlier releases may hold (format characters, line
/// separators, blank-looking, private-use and unassigned characters: see
/// `text`) is written as `\u{...}`, so no name can read as another one,
/// as nothing, or break the line; `|`, which reads as a table's column
/// border, as `\|`, and so `\` as `\\`.
pub fn shown(name: &str) -> String {
    let mut shown = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '|' | '\\' => {
                shown.push('\\');
                shown.push(c);
            }
            c if text::is_format(c) || text::is_misleading(c) => {
                shown.extend(c.escape_unicode());
            }
            c => shown.push(c),
        }
    }
    shown
}

/// StackState's four columns of a token.
fn token_row(token: &ServiceToken) -> Vec<String> {
    vec![
        token.id.to_string(),
        shown(&token.name),
        token.expiration.as_ref().map(date).unwrap_or_default(),
        roles(&token.roles),
    ]
}

/// The `service-token list` table, rows sorted by name (then id).
pub fn token_table(tokens: &mut [ServiceToken]) -> Option<String> {
    tokens.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let rows = tokens.iter().map(token_row).collect();
    render_table(&["ID", "NAME", "EXPIRATION", "ROLES"], rows)
}

/// `yyyy-MM-dd HH:MM` (UTC): a last use, to its resolution.
pub fn date_time(timestamp: &prost_types::Timestamp) -> String {
    crate::clock::date_time(timestamp.seconds)
}

/// `active`, `disabled` or `expired` (at `now`, epoch seconds).
pub fn status(token: &ServiceToken, now: i64) -> &'static str {
    if token.expiration.as_ref().is_some_and(|e| e.seconds <= now) {
        "expired"
    } else if token.disabled {
        "disabled"
    } else {
        "active"
    }
}

/// The `service-token list --wide` table: StackState's four columns, then
/// status, last use, creator and description.
pub fn wide_token_table(tokens: &mut [ServiceToken], now: i64) -> Option<String> {
    tokens.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let rows = tokens
        .iter()
        .map(|t| {
            let mut row = token_row(t);
            row.extend([
                status(t, now).to_owned(),
                t.last_used_at
                    .as_ref()
                    .map_or_else(|| "never".to_owned(), date_time),
                shown(&t.created_by),
                shown(&t.description),
                bound(t),
            ]);
            row
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "EXPIRATION",
            "ROLES",
            "STATUS",
            "LAST USED",
            "CREATED BY",
            "DESCRIPTION",
            "BOUND",
        ],
        rows,
    )
}

/// The kinds of binding a token has (`source,audience,route`), or `-`.
pub fn bound(token: &ServiceToken) -> String {
    let kinds: Vec<&str> = [
        ("source", token.allowed_sources.is_empty()),
        ("audience", token.audiences.is_empty()),
        ("route", token.allowed_routes.is_empty()),
    ]
    .into_iter()
    .filter(|(_, none)| !none)
    .map(|(kind, _)| kind)
    .collect();
    if kinds.is_empty() {
        "-".to_owned()
    } else {
        kinds.join(",")
    }
}

/// A route as `--allow-route` takes it: `GET,HEAD /api/*`, or the path
/// alone for any method.
pub fn route_text(route: &AllowedRoute) -> String {
    if route.methods.is_empty() {
        route.path.clone()
    } else {
        format!("{} {}", route.methods.join(","), route.path)
    }
}

/// `service-token describe`: one field per row.
pub fn describe_table(token: &ServiceToken, now: i64) -> Option<String> {
    // Every field named: a new one must decide whether `describe` shows it.
    let ServiceToken {
        id,
        name,
        roles: token_roles,
        expiration,
        created_at,
        description,
        labels,
        disabled: _,
        last_used_at,
        created_by,
        updated_at,
        previous_secret_expiration,
        previous_secret_last_used_at,
        // For scripts (`--output json`), not for reading.
        etag: _,
        allowed_sources,
        audiences,
        allowed_routes,
        recent_sources,
        rate_limits,
        owner_id,
        lifetime,
    } = token;
    let any = |items: Vec<String>| {
        if items.is_empty() {
            "any".to_owned()
        } else {
            items
                .iter()
                .map(|i| shown(i))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let recent = recent_sources
        .iter()
        .map(|source| {
            let at = source
                .last_seen_at
                .as_ref()
                .map(date_time)
                .unwrap_or_default();
            format!("{} ({at})", shown(&source.address))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(date_time).unwrap_or_default();
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", shown(v)))
        .collect::<Vec<_>>()
        .join(",");
    let rows = [
        ("ID", id.to_string()),
        ("NAME", shown(name)),
        ("ROLES", roles(token_roles)),
        (
            "EXPIRATION",
            expiration.as_ref().map(date).unwrap_or_default(),
        ),
        ("STATUS", status(token, now).to_owned()),
        ("DESCRIPTION", shown(description)),
        ("LABELS", labels),
        ("ALLOWED SOURCES", any(allowed_sources.clone())),
        ("AUDIENCES", any(audiences.clone())),
        (
            "ALLOWED ROUTES",
            any(allowed_routes.iter().map(route_text).collect()),
        ),
        ("RECENT SOURCES", recent),
        (
            "RATE LIMITS",
            if rate_limits.is_empty() {
                "none".to_owned()
            } else {
                rate_limits
                    .iter()
                    .map(|limit| shown(&super::limits::rate_limit_text(limit)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("CREATED", time(created_at)),
        ("CREATED BY", shown(created_by)),
        (
            "OWNER",
            match owner_id {
                0 => "none (admins manage it)".to_owned(),
                owner => owner.to_string(),
            },
        ),
        (
            "LIFETIME",
            lifetime.as_ref().map_or_else(
                || "none".to_owned(),
                |l| {
                    crate::clock::span_text(std::time::Duration::new(
                        u64::try_from(l.seconds).unwrap_or(0),
                        u32::try_from(l.nanos).unwrap_or(0),
                    ))
                },
            ),
        ),
        ("UPDATED", time(updated_at)),
        (
            "LAST USED",
            last_used_at
                .as_ref()
                .map_or_else(|| "never".to_owned(), date_time),
        ),
        ("PREVIOUS SECRET UNTIL", time(previous_secret_expiration)),
        (
            "PREVIOUS SECRET LAST USED",
            time(previous_secret_last_used_at),
        ),
    ];
    let rows = rows
        .into_iter()
        .map(|(field, value)| vec![field.to_owned(), value])
        .collect();
    render_table(&["FIELD", "VALUE"], rows)
}

/// A token in the CLI's JSON output: StackState's fields (times in epoch
/// milliseconds), then every lifecycle field, named as the REST API names
/// them.
pub fn token_json(token: &ServiceToken) -> Value {
    // Every field named: a new one must decide how the JSON carries it.
    let ServiceToken {
        id,
        name,
        roles,
        expiration,
        created_at,
        description,
        labels,
        disabled,
        last_used_at,
        created_by,
        updated_at,
        previous_secret_expiration,
        previous_secret_last_used_at,
        etag,
        allowed_sources,
        audiences,
        allowed_routes,
        recent_sources,
        rate_limits,
        owner_id,
        // As REST's: `describe` shows it.
        lifetime: _,
    } = token;
    let mut value = json!({ "id": id, "name": name, "roles": roles });
    let millis = |t: &Option<prost_types::Timestamp>| t.as_ref().map(epoch_millis);
    if let Some(expiration) = expiration {
        value["expiration"] = json!(epoch_millis(expiration));
    }
    value["description"] = json!(description);
    value["labels"] = json!(labels);
    value["disabled"] = json!(disabled);
    value["createdBy"] = json!(created_by);
    for (key, time) in [
        ("createdAt", millis(created_at)),
        ("updatedAt", millis(updated_at)),
        ("lastUsedAt", millis(last_used_at)),
        (
            "previousSecretExpiration",
            millis(previous_secret_expiration),
        ),
        (
            "previousSecretLastUsedAt",
            millis(previous_secret_last_used_at),
        ),
    ] {
        if let Some(time) = time {
            value[key] = json!(time);
        }
    }
    // As REST's: for `If-Match`, or gRPC's `etag`.
    if !etag.is_empty() {
        value["etag"] = json!(etag);
    }
    // As REST's, each left out while empty.
    if !allowed_sources.is_empty() {
        value["allowedSources"] = json!(allowed_sources);
    }
    if !audiences.is_empty() {
        value["audiences"] = json!(audiences);
    }
    if !allowed_routes.is_empty() {
        value["allowedRoutes"] = allowed_routes
            .iter()
            .map(|route| {
                let mut rule = json!({ "path": route.path });
                if !route.methods.is_empty() {
                    rule["methods"] = json!(route.methods);
                }
                rule
            })
            .collect();
    }
    if !recent_sources.is_empty() {
        value["recentSources"] = recent_sources
            .iter()
            .map(|source| {
                json!({
                    "address": source.address,
                    "lastSeenAt": source.last_seen_at.as_ref().map(epoch_millis),
                })
            })
            .collect();
    }
    if !rate_limits.is_empty() {
        value["rateLimits"] = rate_limits
            .iter()
            .map(|limit| {
                json!({
                    "name": limit.name,
                    "limit": limit.limit,
                    "periodSeconds": limit.period.map_or(0, |p| p.seconds),
                })
            })
            .collect();
    }
    if *owner_id != 0 {
        value["ownerId"] = json!(owner_id);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u64, name: &str, roles: &[&str], expiration: Option<i64>) -> ServiceToken {
        ServiceToken {
            id,
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expiration: expiration.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            ..ServiceToken::default()
        }
    }

    #[test]
    fn the_list_table_matches_the_documentation() {
        let mut tokens = vec![token(
            107484341630693,
            "my-service-token",
            &["stackstate-k8s-troubleshooter"],
            None,
        )];
        assert_eq!(
            token_table(&mut tokens).unwrap(),
            "ID              | NAME             | EXPIRATION | ROLES\n\
             107484341630693 | my-service-token |            | [stackstate-k8s-troubleshooter]"
        );
    }

    #[test]
    fn rows_sort_by_name_and_show_dates_and_role_lists() {
        let mut tokens = vec![
            token(2, "zeta", &["a"], None),
            token(1, "alpha", &["a", "b"], Some(1_782_777_600)),
        ];
        let table = token_table(&mut tokens).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "1  | alpha | 2026-06-30 | [a b]");
        assert_eq!(lines[2], "2  | zeta  |            | [a]");
        assert!(token_table(&mut []).is_none());
    }

    #[test]
    fn the_last_day_of_year_9999_is_a_date_not_never() {
        let mut tokens = vec![token(1, "far", &["a"], Some(253_402_214_400))];
        let table = token_table(&mut tokens).unwrap();
        assert_eq!(table.lines().nth(1), Some("1  | far  | 9999-12-31 | [a]"));
    }

    #[test]
    fn format_characters_in_stored_names_are_shown_escaped() {
        assert_eq!(shown("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(shown("\u{200b}"), "\\u{200b}");
        assert_eq!(shown("café ✓"), "café ✓");
        assert_eq!(shown("a\u{2028}b\u{a0}c"), "a\\u{2028}b\\u{a0}c");
        assert_eq!(shown("a|b\\c"), "a\\|b\\\\c");
        let mut tokens = vec![token(1, "a\u{2066}b", &["r"], None)];
        assert!(token_table(&mut tokens).unwrap().contains("a\\u{2066}b"));
    }

    #[test]
    fn json_carries_expiration_in_epoch_millis() {
        let value = token_json(&token(7, "ci", &["r"], Some(1_782_777_600)));
        assert_eq!(
            value,
            json!({
                "id": 7, "name": "ci", "roles": ["r"], "expiration": 1_782_777_600_000i64,
                "description": "", "labels": {}, "disabled": false, "createdBy": "",
            })
        );
        assert!(
            token_json(&token(7, "ci", &["r"], None))
                .get("expiration")
                .is_none()
        );
    }
}
