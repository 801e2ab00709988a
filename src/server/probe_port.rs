//! The probe port (`--probe-listen`): `/healthz` and `/readyz` on listeners
//! and an OS thread of their own, so an orchestrator's probes are answered
//! in milliseconds while the main port is flooded. On the main port a probe
//! is one task among every connection's; here the kernel schedules the
//! thread beside the runtime's workers, whatever they are busy with.

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle, time::Duration};

use tokio::sync::oneshot;

use crate::{
    connections::{ConnectionLimits, Connections},
    error::ServeError,
    http::{self, HttpState},
    metrics::Metrics,
    server::listener::{Incoming, Limits},
    server::protocol::{Protocol, serve},
    source::TrustedProxies,
};

/// Connections the probe port keeps open at once (kubelet opens one per
/// probe); past it, new ones are closed at once.
pub const PROBE_MAX_CONNECTIONS: usize = 64;

/// How long stopping waits for the probe thread.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// The running probe port; [`ProbePort::stop`] ends it.
pub struct ProbePort {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addresses: Vec<SocketAddr>,
}

impl ProbePort {
    /// Serves the probes on `listeners` (bound already, so a port taken is
    /// an error at start-up) from a thread of their own, with `state`'s
    /// readiness.
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        state: HttpState,
        protocol: Protocol,
        metrics: Arc<Metrics>,
    ) -> Result<ProbePort, ServeError> {
        let addresses = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        for listener in &listeners {
            listener.set_nonblocking(true).map_err(ServeError::Probe)?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("sts-probes")
            .build()
            .map_err(ServeError::Probe)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sts-probes".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listeners = match listeners
                        .into_iter()
                        .map(tokio::net::TcpListener::from_std)
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(listeners) => listeners,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serve the probe port");
                            return;
                        }
                    };
                    let limits = ConnectionLimits {
                        max_total: PROBE_MAX_CONNECTIONS,
                        max_per_source: PROBE_MAX_CONNECTIONS,
                        max_requests_in_flight: PROBE_MAX_CONNECTIONS,
                    };
                    let connections =
                        Connections::new(limits, Arc::new(TrustedProxies::none()), metrics);
                    let incoming = Incoming::new(
                        listeners,
                        Limits {
                            first_byte_timeout: protocol.first_bytes_timeout,
                            tls_handshake_timeout: protocol.first_bytes_timeout,
                        },
                        None,
                        connections,
                    );
                    let app = http::probe_router(state);
                    serve(incoming, app, &protocol, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })
            .map_err(ServeError::Probe)?;
        Ok(ProbePort {
            stop: Some(stop),
            thread: Some(thread),
            addresses,
        })
    }

    /// Where the probes are served.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops serving: the listeners close, and open probe connections are
    /// finished; waits up to [`STOP_DEADLINE`] for the thread, off the
    /// caller's runtime.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(STOP_DEADLINE, joined).await.is_err() {
                tracing::warn!("the probe port did not stop within {STOP_DEADLINE:?}; leaving it");
            }
        }
    }
}

impl Drop for ProbePort {
    fn drop(&mut self) {
        // Stopped without waiting: the thread ends on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
