//! Uses answered from memory, counted per token, source and outcome, and
//! reported to the server in batches (`ReportUses`), so its last-used
//! times, recent sources and usage stay true.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sts_api::proto::{self, UseOutcome, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

use crate::watch::with_token;

/// Distinct (token, source, outcome) counted between two reports at most;
/// past it uses go uncounted until the next report.
const MAX_PENDING: usize = 10_000;

/// Uses per `ReportUses` call (the server's bound).
const PER_CALL: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    id: u64,
    source: Option<IpAddr>,
    outcome: i32,
}

struct Counted {
    count: u64,
    last: SystemTime,
}

#[derive(Default)]
pub(crate) struct Reports {
    pending: Mutex<HashMap<Key, Counted>>,
}

impl Reports {
    /// One use of token `id` answered from memory.
    pub(crate) fn used(
        &self,
        id: u64,
        source: Option<IpAddr>,
        outcome: UseOutcome,
        at: SystemTime,
    ) {
        let key = Key {
            id,
            source,
            outcome: outcome as i32,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counted) = pending.get_mut(&key) {
            counted.count += 1;
            counted.last = counted.last.max(at);
        } else if pending.len() < MAX_PENDING {
            pending.insert(key, Counted { count: 1, last: at });
        }
    }

    fn take(&self) -> Vec<proto::ReportedUse> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .map(|(key, counted)| proto::ReportedUse {
                token_id: key.id,
                at: Some(counted.last.into()),
                source_address: key.source.map(|s| s.to_string()).unwrap_or_default(),
                outcome: key.outcome,
                count: counted.count,
            })
            .collect()
    }
}

/// Reports every `every` until the task is aborted. A report the server
/// does not take is dropped (the uses were real; only their record is
/// lost), said once per outage.
pub(crate) async fn keep_reporting(
    client: TokenServiceClient<Channel>,
    token: String,
    reports: Arc<Reports>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let uses = reports.take();
        for batch in uses.chunks(PER_CALL) {
            let request = with_token(
                &token,
                proto::ReportUsesRequest {
                    uses: batch.to_vec(),
                },
            );
            match client.clone().report_uses(request).await {
                Ok(_) => failing = false,
                Err(status) => {
                    if !failing {
                        tracing::warn!(code = ?status.code(), message = status.message(), "cannot report cached uses to the token server; they go unrecorded meanwhile");
                        failing = true;
                    }
                    break;
                }
            }
        }
    }
}
