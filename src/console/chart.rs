//! A token's usage per day as an inline SVG bar chart, drawn on the
//! server: a bar a day, valid checks below refused ones, styled by class
//! (the stylesheet colours them; no `style` attribute, which the CSP
//! forbids), each bar titled with its day and counts for a pointer or a
//! screen reader. Only numbers and dates of our own formatting go in.

use std::fmt::Write as _;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 160;
/// Room below the bars for the first and last day.
const AXIS: u32 = 18;

/// A drawn chart and a sentence saying what it shows.
pub struct Chart {
    pub svg: String,
    pub summary: String,
}

/// The chart of `days` (a day's date, valid checks, refused checks), oldest
/// first; `None` when no check was counted.
pub fn draw(days: &[(String, u64, u64)]) -> Option<Chart> {
    let most = days
        .iter()
        .map(|(_, v, r)| v + r)
        .max()
        .filter(|m| *m > 0)?;
    let (valid, refused) = days
        .iter()
        .fold((0u64, 0u64), |(v, r), (_, dv, dr)| (v + dv, r + dr));
    let summary = format!(
        "{} checks over {} days: {valid} valid, {refused} refused; at most {most} in a day.",
        valid + refused,
        days.len()
    );
    let plot = HEIGHT - AXIS;
    let slot = WIDTH as f64 / days.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let scale = |n: u64| (n as f64 / most as f64 * f64::from(plot - 4)).round();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="usage" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="usage-title usage-desc" xmlns="http://www.w3.org/2000/svg"><title id="usage-title">Checks per day</title><desc id="usage-desc">{summary}</desc>"#
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}"/>"#
    );
    for (i, (day, v, r)) in days.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar) / 2.0;
        let (hv, hr) = (scale(*v), scale(*r));
        let top = f64::from(plot) - hv;
        let _ = write!(
            svg,
            r#"<g class="day"><title>{day}: {v} valid, {r} refused</title><rect class="bar-valid" x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{hv:.1}"/><rect class="bar-refused" x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{hr:.1}"/></g>"#,
            top - hr
        );
    }
    if let (Some((first, ..)), Some((last, ..))) = (days.first(), days.last()) {
        let y = HEIGHT - 4;
        let _ = write!(
            svg,
            r#"<text class="tick" x="0" y="{y}">{first}</text><text class="tick end" x="{WIDTH}" y="{y}" text-anchor="end">{last}</text><text class="tick" x="2" y="12">{most}</text>"#
        );
    }
    svg.push_str("</svg>");
    Some(Chart { svg, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_bar_a_day_and_no_style_attribute() {
        let days = vec![
            ("2026-12-01".to_owned(), 10, 0),
            ("2026-12-02".to_owned(), 0, 0),
            ("2026-12-03".to_owned(), 3, 7),
        ];
        let chart = draw(&days).unwrap();
        assert_eq!(chart.svg.matches("class=\"bar-valid\"").count(), 3);
        assert!(!chart.svg.contains("style="));
        assert!(
            chart
                .summary
                .starts_with("20 checks over 3 days: 13 valid, 7 refused")
        );
        assert!(draw(&[("2026-12-01".to_owned(), 0, 0)]).is_none());
    }
}
