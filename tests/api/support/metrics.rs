//! The one reader of the Prometheus text tests get from `/metrics`.

/// The value of `series` (a metric name with its labels, exactly as
/// exposed, e.g. `sts_tokens{state="active"}`) in `text`; `None` when the
/// series is not there. A trailing space after the series is allowed.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let series = series.trim_end();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// As [`sample`], 0 for a series not (yet) exposed: a counter nothing has
/// counted.
pub fn metric_in(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}
