//! `capture_logs()`: the log events an in-process server emits during a
//! test, as JSON objects, for checks of audit events and logged errors.

use std::sync::{Arc, Mutex};

/// Log events of the current thread, as JSON objects: what a test's
/// in-process server logs while [`capture_logs`]'s guard lives (a
/// `#[tokio::test]` runs the server on the test's own thread).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The events of tracing target `target`.
    pub fn target(&self, target: &str) -> Vec<serde_json::Value> {
        let mut events = self.events();
        events.retain(|event| event["target"] == target);
        events
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every event (all levels) of this thread until the guard drops.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, CapturedLogs) {
    // tracing-core asks only the *calling thread's* subscriber for a new
    // callsite's interest while it knows of at most one dispatcher: with
    // one test capturing, another thread (no subscriber) reaching a
    // callsite first caches "never" for it, and this test loses those
    // events. A second dispatcher, kept for good, makes it ask them all.
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), logs)
}
