//! Incidents: a store failure that many requests meet at once (a database
//! away, a disk stalled) is one incident, logged once in full under one id
//! and counted, instead of a log line per request anyone could multiply.
//!
//! Every client whose request failed the same way within
//! [`INCIDENT_WINDOW`] is told the same incident id, so the one line in the
//! log is the line each of them can quote. When the window has passed, a
//! summary says how many more requests failed under that incident; the
//! same failure after it opens a new incident.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

/// How long one failure keeps one incident id.
pub const INCIDENT_WINDOW: Duration = Duration::from_secs(10);

/// Distinct failures followed at once; past it, further ones share one
/// entry (their texts are the server's own, but a bound costs nothing).
const MAX_OPEN: usize = 16;

/// The key failures beyond [`MAX_OPEN`] share.
const OTHERS: &str = "(other store failures)";

/// How bad a failure is: what level its lines are logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Try again later (the store away).
    Unavailable,
    /// The server's own failure (a corrupt record).
    Internal,
}

struct Open {
    id: String,
    since: Instant,
    severity: Severity,
    /// Requests that failed the same way after the first.
    more: u64,
}

static OPEN: LazyLock<Mutex<HashMap<String, Open>>> = LazyLock::new(Mutex::default);

/// The incident id for a request that failed with `error` (the whole text,
/// causes included): the open incident of the same failure, counted, or a
/// new one, logged in full now.
pub fn of(error: &str, severity: Severity) -> String {
    of_at(error, severity, Instant::now())
}

fn of_at(error: &str, severity: Severity, now: Instant) -> String {
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let key = if open.contains_key(error) || open.len() < MAX_OPEN {
        error
    } else {
        OTHERS
    };
    if let Some(incident) = open.get_mut(key)
        && now.duration_since(incident.since) < INCIDENT_WINDOW
    {
        incident.more += 1;
        return incident.id.clone();
    }
    if let Some(ended) = open.remove(key) {
        summarize_one(key, &ended);
    }
    let id = new_id();
    match severity {
        Severity::Unavailable => tracing::warn!(
            incident = %id,
            %error,
            "request failed: store unavailable (the same failure in the next {}s shares this incident)",
            INCIDENT_WINDOW.as_secs()
        ),
        Severity::Internal => tracing::error!(
            incident = %id,
            %error,
            "request failed (the same failure in the next {}s shares this incident)",
            INCIDENT_WINDOW.as_secs()
        ),
    }
    open.insert(
        key.to_owned(),
        Open {
            id: id.clone(),
            since: now,
            severity,
            more: 0,
        },
    );
    id
}

/// Ends the incidents whose window has passed, with a summary of each that
/// more requests met. Called twice a second by the server; with
/// `everything`, ends them all (at shutdown).
pub fn summarize(everything: bool) {
    let now = Instant::now();
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|error, incident| {
        let ended = everything || now.duration_since(incident.since) >= INCIDENT_WINDOW;
        if ended {
            summarize_one(error, incident);
        }
        !ended
    });
}

fn summarize_one(error: &str, incident: &Open) {
    if incident.more == 0 {
        return;
    }
    let (id, count, seconds) = (&incident.id, incident.more, INCIDENT_WINDOW.as_secs());
    match incident.severity {
        Severity::Unavailable => tracing::warn!(
            incident = %id,
            count,
            window_seconds = seconds,
            %error,
            "more requests failed under this incident (summary)"
        ),
        Severity::Internal => tracing::error!(
            incident = %id,
            count,
            window_seconds = seconds,
            %error,
            "more requests failed under this incident (summary)"
        ),
    }
}

/// 16 hex digits, random: unique enough to find one line in a log.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_within_the_window_is_one_incident_and_a_new_one_after() {
        // A text of this test's own: the table is shared with every test.
        let error = "a failure only this test meets";
        let start = Instant::now();
        let first = of_at(error, Severity::Unavailable, start);
        for i in 1..50 {
            let at = start + Duration::from_millis(i);
            assert_eq!(of_at(error, Severity::Unavailable, at), first);
        }
        assert_eq!(OPEN.lock().unwrap().get(error).map(|i| i.more), Some(49));
        let later = of_at(error, Severity::Unavailable, start + INCIDENT_WINDOW);
        assert_ne!(later, first);
        assert_eq!(OPEN.lock().unwrap().get(error).map(|i| i.more), Some(0));
        assert_eq!(first.len(), 16);
    }

    /// The log lines (JSON) written on this thread while `run` runs.
    fn logged(run: impl FnOnce()) -> Vec<serde_json::Value> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // A second dispatcher, kept: callsites then ask every thread's
        // subscriber, not only the first thread's to reach them.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn an_incident_is_one_line_then_one_summary_of_the_rest() {
        let error = "a failure only the summary test meets";
        let start = Instant::now();
        let mut ids = Vec::new();
        let events = logged(|| {
            for i in 0..10 {
                ids.push(of_at(
                    error,
                    Severity::Internal,
                    start + Duration::from_millis(i),
                ));
            }
            // The window over: the first incident is summed up, a new one opens.
            ids.push(of_at(error, Severity::Internal, start + INCIDENT_WINDOW));
        });
        let ours: Vec<_> = events
            .iter()
            .filter(|e| e["fields"]["error"] == error)
            .collect();
        assert_eq!(ours.len(), 3, "{ours:#?}");
        let (first, summary, second) = (&ours[0], &ours[1], &ours[2]);
        assert_eq!(first["fields"]["incident"], ids[0].as_str());
        assert!(first["fields"]["count"].is_null());
        assert_eq!(first["level"], "ERROR");
        assert_eq!(summary["fields"]["incident"], ids[0].as_str());
        assert_eq!(summary["fields"]["count"], 9);
        assert_eq!(
            summary["fields"]["window_seconds"],
            INCIDENT_WINDOW.as_secs()
        );
        assert_eq!(second["fields"]["incident"], ids[10].as_str());
        assert_ne!(ids[10], ids[0]);
    }
}
