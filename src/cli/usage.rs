//! `sts service-token usage`: a token's checks per day, as a table (a bar
//! per day on a terminal) or JSON.

use serde_json::{Value, json};

use super::{
    CliError,
    commands::Globals,
    output::{Printer, render_table},
};
use crate::proto::DailyUsage;

/// `sts service-token usage ID [--days N]`: a row per day (checks that
/// passed, that a rate limit refused, and every other refusal), with a
/// bar of the day's checks on a terminal; `-o json` has each outcome.
pub async fn usage_token(
    globals: &Globals,
    printer: &Printer,
    id: u64,
    days: u32,
) -> Result<(), CliError> {
    let mut session = globals.session().await?;
    let usage = session.usage(id, days).await?;
    let table = usage_table(&usage, printer.decorate);
    let days: Vec<Value> = usage.iter().map(usage_json).collect();
    printer.table(
        table,
        "No usage recorded.",
        json!({ "service-token-usage": { "id": id, "days": days } }),
    );
    Ok(())
}

/// `service-token usage`: a row per day; with `bars`, the day's checks as
/// a bar scaled to the busiest day.
pub fn usage_table(days: &[DailyUsage], bars: bool) -> Option<String> {
    const WIDTH: u64 = 30;
    let refused = |d: &DailyUsage| {
        d.expired
            + d.disabled
            + d.source_not_allowed
            + d.audience_not_allowed
            + d.route_not_allowed
            + d.missing_role
    };
    let total = |d: &DailyUsage| d.valid + d.rate_limited + refused(d);
    let busiest = days.iter().map(total).max().unwrap_or(0);
    let rows = days
        .iter()
        .map(|day| {
            let mut row = vec![
                day.date.clone(),
                day.valid.to_string(),
                day.rate_limited.to_string(),
                refused(day).to_string(),
            ];
            if bars {
                let length = (total(day) * WIDTH).div_ceil(busiest.max(1));
                row.push("█".repeat(usize::try_from(length).unwrap_or(0)));
            }
            row
        })
        .collect();
    let mut header = vec!["DATE", "VALID", "RATE LIMITED", "REFUSED"];
    if bars {
        header.push("CHECKS");
    }
    render_table(&header, rows)
}

/// A day of usage in the CLI's JSON output, every outcome named as REST
/// names it.
pub fn usage_json(day: &DailyUsage) -> Value {
    json!({
        "date": day.date,
        "valid": day.valid,
        "rateLimited": day.rate_limited,
        "expired": day.expired,
        "disabled": day.disabled,
        "sourceNotAllowed": day.source_not_allowed,
        "audienceNotAllowed": day.audience_not_allowed,
        "routeNotAllowed": day.route_not_allowed,
        "missingRole": day.missing_role,
    })
}
