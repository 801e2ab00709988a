//! The log layer that survives thread exit: events sent while a thread's
//! thread-locals are being destroyed are dropped instead of aborting the
//! process.
//!
//! tracing-subscriber's fmt layer formats every event into a thread-local
//! buffer and panics when that buffer is already gone (tokio-rs/tracing
//! #3239). A panic in a thread-local destructor aborts the process. sled
//! logs from such a destructor: crossbeam-epoch runs deferred work when a
//! thread's epoch handle is destroyed, and one of sled's deferred closures
//! logs at trace level. With `RUST_LOG=trace`, a tokio blocking thread that
//! exited (idle, or at shutdown) could abort the server.

use std::cell::Cell;

use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::layer::{Context, Layer};

thread_local! {
    /// Set once this thread's [`LIVE`] is destroyed. A `Cell<bool>` has no
    /// destructor, so it is readable to the thread's very end.
    static EXITING: Cell<bool> = const { Cell::new(false) };
    /// First touched after the inner layer handled an event, so registered
    /// after the inner layer's own thread-locals; destructors run in
    /// reverse order of registration, so it goes before them.
    static LIVE: Live = const { Live };
}

struct Live;

impl Drop for Live {
    fn drop(&mut self) {
        EXITING.set(true);
    }
}

/// `inner`, minus the events sent once the thread has begun destroying its
/// thread-locals: no log line is worth an abort.
pub struct ExitSafe<L> {
    inner: L,
}

impl<L> ExitSafe<L> {
    pub fn new(inner: L) -> ExitSafe<L> {
        ExitSafe { inner }
    }
}

impl<S: Subscriber, L: Layer<S>> Layer<S> for ExitSafe<L> {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if EXITING.get() {
            return;
        }
        self.inner.on_event(event, ctx);
        // Already destroyed (or being destroyed): EXITING is set.
        let _ = LIVE.try_with(|_| ());
    }

    // Everything else goes to `inner` unchanged.

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use tracing_subscriber::{fmt, layer::SubscriberExt};

    use super::ExitSafe;

    const CHILD: &str = "STS_LOGGING_TEST_CHILD";
    const NAME: &str = "logging::tests::an_event_sent_while_a_thread_exits_is_dropped_not_an_abort";

    struct LogsWhenDropped;

    impl Drop for LogsWhenDropped {
        fn drop(&mut self) {
            tracing::info!("from a thread-local destructor");
        }
    }

    thread_local! {
        static LOGS_WHEN_DROPPED: LogsWhenDropped = const { LogsWhenDropped };
    }

    /// What sled does at trace level: a thread-local registered before the
    /// log layer's, whose destructor logs. Without `ExitSafe` the process
    /// aborts. In a child process (this test binary again), because the
    /// subscriber must be the global default: a thread's scoped default is
    /// itself a thread-local, gone by then.
    #[test]
    fn an_event_sent_while_a_thread_exits_is_dropped_not_an_abort() {
        if std::env::var_os(CHILD).is_some() {
            let subscriber = tracing_subscriber::registry()
                .with(ExitSafe::new(fmt::layer().with_writer(std::io::stderr)));
            tracing::subscriber::set_global_default(subscriber).unwrap();
            std::thread::spawn(|| {
                LOGS_WHEN_DROPPED.with(|_| ());
                tracing::info!("before the thread exits");
            })
            .join()
            .unwrap();
            return;
        }
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(child.status.success(), "{:?}\n{stderr}", child.status);
        assert!(stderr.contains("before the thread exits"), "{stderr}");
        assert!(
            !stderr.contains("from a thread-local destructor"),
            "{stderr}"
        );
    }
}
