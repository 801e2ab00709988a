//! Signals about tokens as a whole: counts by state, tokens expiring soon
//! and unused for long, the next expiry, in the metrics; and the alerting
//! rules we ship for them.

use std::time::Duration;

use sts::{
    config::ServiceConfig,
    proto::{ServiceToken, UpdateRequest},
};

use crate::support::{TestApp, eventually, server_config, spawn_app_with};
use crate::support::{sample, within};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The value of each series in `expected`, as `/metrics` shows them now.
fn values(text: &str, names: &[&str]) -> Vec<f64> {
    names
        .iter()
        .map(|name| sample(text, name).unwrap_or(f64::NAN))
        .collect()
}

const SERIES: [&str; 9] = [
    r#"sts_tokens{state="active"}"#,
    r#"sts_tokens{state="disabled"}"#,
    r#"sts_tokens{state="expired"}"#,
    r#"sts_tokens_expiring{within="1d"}"#,
    r#"sts_tokens_expiring{within="7d"}"#,
    r#"sts_tokens_expiring{within="30d"}"#,
    r#"sts_tokens_unused{for="30d"}"#,
    r#"sts_tokens_unused{for="90d"}"#,
    "sts_tokens_next_expiry_timestamp_seconds",
];

/// The event-delivery series (exported whether or not webhooks are on;
/// `tests/api/webhooks.rs` watches them move).
pub const EVENT_SERIES: [&str; 4] = [
    "sts_events_pending",
    "sts_events_oldest_pending_age_seconds",
    "sts_events_dropped_total",
    "sts_webhook_deliveries_total",
];

async fn until_metrics(app: &TestApp, expected: [f64; 9]) {
    let what = format!("the series reading {expected:?}");
    within(Duration::from_secs(10), &what, || async {
        values(&app.metrics_text().await, &SERIES) == expected
    })
    .await;
}

#[tokio::test]
async fn the_token_counts_follow_the_store_and_the_clock() {
    // Last-used tracking off: "unused" is then counted from creation.
    let service = ServiceConfig {
        last_used_resolution: Duration::ZERO,
        token_summary_interval: Duration::from_millis(20),
        ..ServiceConfig::default()
    };
    let app = spawn_app_with(service, server_config()).await;
    app.create("forever", &["r"]).await;
    let (_, day) = app.create_expiring_in("day", &["r"], 12 * 3600).await;
    app.create_expiring_in("week", &["r"], 5 * 24 * 3600).await;
    app.create_expiring_in("month", &["r"], 20 * 24 * 3600)
        .await;
    app.create_expiring_in("gone", &["r"], 60).await;
    let (_, off) = app.create("off", &["r"]).await;
    let disable = UpdateRequest {
        service_token: Some(ServiceToken {
            id: off.id,
            disabled: true,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["disabled".into()],
        }),
    };
    app.client.clone().update(app.admin(disable)).await.unwrap();
    app.clock.advance(Duration::from_secs(61));
    let next = day.expiration.unwrap().seconds as f64;
    // Active: the admin, forever, day, week, month.
    until_metrics(&app, [5.0, 1.0, 1.0, 1.0, 2.0, 3.0, 0.0, 0.0, next]).await;

    // A month on: day, week and month have expired too; the admin and
    // forever, never used, are unused for 30 days.
    app.clock.advance(DAY * 31);
    until_metrics(&app, [2.0, 1.0, 4.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]).await;
    eventually("still answering", || async {
        !app.metrics_text().await.is_empty()
    })
    .await;
}

#[test]
fn the_shipped_alerting_rules_ask_about_series_the_server_exports() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus-alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    let rules = rules["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 3);
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        assert!(rule["alert"].is_string(), "{rule}");
        assert!(rule["annotations"]["summary"].is_string(), "{rule}");
        // Every sts_ series the expression names is one we export.
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("sts_") {
                let base = SERIES
                    .iter()
                    .any(|s| s.starts_with(&format!("{word}{{")) || *s == word)
                    || EVENT_SERIES.contains(&word);
                assert!(base, "{word} in {expr}");
            }
        }
    }
    // And promtool, where Debian's prometheus package is installed,
    // agrees it is a valid rules file.
    let promtool = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output();
    assert!(
        promtool.is_ok() || std::env::var_os("STS_TEST_REQUIRE_PROMTOOL").is_none(),
        "promtool is missing and STS_TEST_REQUIRE_PROMTOOL is set"
    );
    if let Ok(output) = promtool {
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
