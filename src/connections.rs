//! The table of open connections and its bounds: in total
//! (`--max-connections`) and per source (`--max-connections-per-source`,
//! trusted proxies exempt).
//!
//! Why bound connections at all: every one holds a file descriptor, and a
//! process out of descriptors can accept nobody, probes included. Why evict
//! idle ones: at the total bound, a keep-alive connection with nothing in
//! flight costs its client only a reconnect, while refusing the newcomer
//! would lock out a probe behind a pool of idle clients. A connection with
//! a request in flight is never evicted; when none is idle, or a source is
//! at its own bound, the new connection is closed before anything is read
//! from it. Refusals are counted (metrics) and logged as summaries, never
//! one line per connection.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{
    metrics::Metrics,
    source::{Group, TrustedProxies},
};

/// Descriptors the default connection bound leaves to everything else: the
/// store's files, PostgreSQL's pool, webhook deliveries, the log.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The default total bound never goes above this, however many descriptors
/// the process may open: each idle connection still holds buffers.
pub const MAX_DEFAULT_CONNECTIONS: usize = 10_000;

/// The default total bound never goes below this.
pub const MIN_DEFAULT_CONNECTIONS: usize = 16;

/// By default one source may hold this share (1/n) of the total, so it
/// takes several addresses to fill the table.
pub const DEFAULT_PER_SOURCE_SHARE: usize = 4;

/// At most one summary of refused connections per this long.
const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// After a search for an idle connection found none, the next ones within
/// this long are refused without searching again: a flood of newcomers
/// against a table of busy connections costs one scan per this long.
const FRUITLESS_SCAN_PAUSE: Duration = Duration::from_millis(5);

/// How many connections may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_total: usize,
    pub max_per_source: usize,
    /// Requests being answered at once, on every connection together
    /// (a streamed answer's body, once its headers are out, is not
    /// counted: long-lived streams do not take the room of calls).
    pub max_requests_in_flight: usize,
}

/// The default bound on requests in flight. Far above what keeps both
/// cores busy (64 in flight saturate the server in `bench/run`), so an
/// ordinary load never meets it; what it bounds is costly work (store
/// reads and writes) queued behind a saturated server, answered at once
/// instead of late. Memory under a flood of streams is bounded by the
/// streams per connection, not by this (BENCHMARKS.md, the stream flood).
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 4096;

impl ConnectionLimits {
    /// Bounds that never refuse (a test's server, or a caller that bounds
    /// connections elsewhere).
    pub const UNBOUNDED: ConnectionLimits = ConnectionLimits {
        max_total: usize::MAX,
        max_per_source: usize::MAX,
        max_requests_in_flight: usize::MAX,
    };

    /// The defaults for a process that may open `descriptors` files: all
    /// but [`RESERVED_DESCRIPTORS`] of them, within
    /// [`MIN_DEFAULT_CONNECTIONS`]..=[`MAX_DEFAULT_CONNECTIONS`], and a
    /// [`DEFAULT_PER_SOURCE_SHARE`] of that per source.
    pub fn for_descriptors(descriptors: u64) -> ConnectionLimits {
        let spare = descriptors.saturating_sub(RESERVED_DESCRIPTORS);
        let max_total = usize::try_from(spare)
            .unwrap_or(usize::MAX)
            .clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS);
        ConnectionLimits {
            max_total,
            max_per_source: (max_total / DEFAULT_PER_SOURCE_SHARE).max(1),
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
        }
    }
}

impl ConnectionLimits {
    /// The bounds given, the others by default: the total from
    /// `descriptors` (the process's open-file limit; unknown or unlimited
    /// counts as plenty), the per-source bound a share of the total.
    pub fn resolve(
        max_total: Option<usize>,
        max_per_source: Option<usize>,
        descriptors: Option<u64>,
    ) -> ConnectionLimits {
        let max_total = max_total.unwrap_or_else(|| {
            ConnectionLimits::for_descriptors(descriptors.unwrap_or(u64::MAX)).max_total
        });
        ConnectionLimits {
            max_total,
            max_per_source: max_per_source.unwrap_or((max_total / DEFAULT_PER_SOURCE_SHARE).max(1)),
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
        }
    }
}

/// How many files this process may open (its soft `RLIMIT_NOFILE`), after
/// raising the soft limit to the hard one: the default soft limit (often
/// 1024) is a leftover of `select(2)`, which nothing here uses. `None`
/// where the limit cannot be read or is unlimited.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the open-file limit");
        }
        limit = getrlimit(Resource::Nofile);
    }
    limit.current
}

/// Why a connection was refused, as the metric labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The total bound, with no idle connection to make room.
    Total,
    /// The source's own bound.
    PerSource,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerSource => "per_source",
        }
    }
}

/// Requests in flight on every connection, and their bound.
#[derive(Debug)]
struct Requests {
    in_flight: AtomicUsize,
    max: usize,
}

/// One open connection, as the table and its server share it.
#[derive(Debug)]
pub struct Slot {
    in_flight: AtomicUsize,
    evicting: AtomicBool,
    evict: Notify,
    requests: Arc<Requests>,
}

impl Slot {
    /// Marks a request in flight until the guard drops, and counts it
    /// against `--max-requests-in-flight` if there is room (see
    /// [`InFlight::admitted`]).
    pub fn request(self: &Arc<Slot>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let requests = &self.requests;
        let admitted = requests.in_flight.fetch_add(1, Ordering::Relaxed) < requests.max;
        if !admitted {
            requests.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        InFlight {
            slot: self.clone(),
            admitted,
        }
    }

    /// Keeps the connection from being taken for idle until the guard
    /// drops, without counting against `--max-requests-in-flight`: what a
    /// Watch stream holds for as long as it is open (its request is done
    /// once its answer began).
    pub fn hold(self: &Arc<Slot>) -> Held {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Held { slot: self.clone() }
    }

    /// Resolves once the table asked this connection to close (at once if
    /// it already has).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.evicting.load(Ordering::Relaxed)
    }
}

/// A request in flight on its connection: it cannot be evicted meanwhile.
pub struct InFlight {
    slot: Arc<Slot>,
    admitted: bool,
}

impl InFlight {
    /// Whether the request fit under `--max-requests-in-flight`: one that
    /// did not is answered at once (the server's own probes excepted).
    pub fn admitted(&self) -> bool {
        self.admitted
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.admitted {
            self.slot.requests.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A long-lived call's hold on its connection (see [`Slot::hold`]).
pub struct Held {
    slot: Arc<Slot>,
}

impl Clone for Held {
    fn clone(&self) -> Held {
        self.slot.hold()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections.
pub struct Connections {
    limits: ConnectionLimits,
    requests: Arc<Requests>,
    trusted: Arc<TrustedProxies>,
    metrics: Arc<Metrics>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Open connections by place; `None` marks a free place.
    slots: Vec<Option<Arc<Slot>>>,
    free: Vec<usize>,
    open: usize,
    /// Where the next search for an idle connection starts, so evictions
    /// go round the table instead of hitting the same place.
    cursor: usize,
    per_source: HashMap<Group, usize>,
    fruitless_scan: Option<Instant>,
    /// Refusals since the last summary, by [`Refused`] (total, per source).
    refused: Tally<2>,
    /// Connections sent away for breaking the protocol.
    misbehaved: Tally<1>,
    /// Requests shed.
    shed: Tally<1>,
}

/// Counts of one kind of event since its last log line, and when that line
/// was written: what keeps each kind to one line a minute.
struct Tally<const N: usize> {
    counts: [u64; N],
    last_line: Option<Instant>,
}

impl<const N: usize> Tally<N> {
    /// Counts one event of `kind`; the counts to log now (and start
    /// again from), when a line is due.
    fn count(&mut self, kind: usize, now: Instant) -> Option<[u64; N]> {
        self.counts[kind] += 1;
        let due = self
            .last_line
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_SUMMARY_INTERVAL);
        due.then(|| {
            self.last_line = Some(now);
            std::mem::replace(&mut self.counts, [0; N])
        })
    }
}

impl<const N: usize> Default for Tally<N> {
    fn default() -> Self {
        Tally {
            counts: [0; N],
            last_line: None,
        }
    }
}

impl Connections {
    pub fn new(
        limits: ConnectionLimits,
        trusted: Arc<TrustedProxies>,
        metrics: Arc<Metrics>,
    ) -> Arc<Connections> {
        Arc::new(Connections {
            requests: Arc::new(Requests {
                in_flight: AtomicUsize::new(0),
                max: limits.max_requests_in_flight,
            }),
            limits,
            trusted,
            metrics,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// A place for a connection from `peer` (`None`: its address is not
    /// known), or why there is none. At the total bound an idle connection
    /// is asked to close and the newcomer takes its place.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Admitted, Refused> {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, peer: Option<IpAddr>, now: Instant) -> Result<Admitted, Refused> {
        let group = peer.filter(|p| !self.trusted.contains(*p)).map(Group::of);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let from_group = group.map_or(0, |g| table.per_source.get(&g).copied().unwrap_or(0));
        let refused = if from_group >= self.limits.max_per_source {
            Some(Refused::PerSource)
        } else if table.open >= self.limits.max_total && !table.evict_one(now) {
            Some(Refused::Total)
        } else {
            None
        };
        if let Some(refused) = refused {
            table.refused(refused, now, &self.limits);
            drop(table);
            self.metrics.connection_refused(refused.as_str());
            return Err(refused);
        }
        if table.open >= self.limits.max_total {
            self.metrics.connection_evicted();
        }
        let slot = Arc::new(Slot {
            in_flight: AtomicUsize::new(0),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
            requests: self.requests.clone(),
        });
        let place = match table.free.pop() {
            Some(place) => {
                table.slots[place] = Some(slot.clone());
                place
            }
            None => {
                table.slots.push(Some(slot.clone()));
                table.slots.len() - 1
            }
        };
        table.open += 1;
        if let Some(group) = group {
            *table.per_source.entry(group).or_default() += 1;
        }
        drop(table);
        self.metrics.connection_open(true);
        Ok(Admitted {
            connections: self.clone(),
            place,
            group,
            slot,
        })
    }

    /// A connection the server sent away because its peer broke the
    /// protocol (an HTTP/2 GOAWAY with `reason`: rapid resets and the
    /// like). Counted; logged in full once a minute with the count since
    /// the last line, never once per connection: anyone can open them.
    pub fn misbehaved(&self, peer: Option<IpAddr>, reason: &dyn std::fmt::Display) {
        self.metrics.protocol_error();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let due = table.misbehaved.count(0, Instant::now());
        drop(table);
        if let Some([count]) = due {
            tracing::warn!(
                peer = peer.map(tracing::field::display),
                %reason,
                count,
                "sent a connection away for breaking HTTP/2's rules (counts since the last such line; at most one a minute; sts_connections_protocol_errors_total counts all)"
            );
        }
    }

    /// A request answered at once for want of room
    /// (`--max-requests-in-flight`): counted, summarized once a minute.
    pub fn shed(&self) {
        self.metrics.request_shed();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let due = table.shed.count(0, Instant::now());
        drop(table);
        if let Some([count]) = due {
            tracing::warn!(
                max_requests_in_flight = self.limits.max_requests_in_flight,
                count,
                "answering requests past the bound on requests in flight with 503 / RESOURCE_EXHAUSTED (counts since the last such line; at most one a minute; sts_requests_shed_total counts all)"
            );
        }
    }

    fn release(&self, place: usize, group: Option<Group>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.slots[place] = None;
        table.free.push(place);
        table.open -= 1;
        if let Some(group) = group
            && let Some(count) = table.per_source.get_mut(&group)
        {
            *count -= 1;
            if *count == 0 {
                table.per_source.remove(&group);
            }
        }
        drop(table);
        self.metrics.connection_open(false);
    }
}

impl Table {
    /// Asks one idle connection to close; whether there was one.
    fn evict_one(&mut self, now: Instant) -> bool {
        if self
            .fruitless_scan
            .is_some_and(|at| now.duration_since(at) < FRUITLESS_SCAN_PAUSE)
        {
            return false;
        }
        let count = self.slots.len();
        for offset in 0..count {
            let at = (self.cursor + offset) % count;
            if let Some(slot) = &self.slots[at]
                && slot.idle()
            {
                slot.evicting.store(true, Ordering::Relaxed);
                slot.evict.notify_one();
                self.cursor = (at + 1) % count;
                self.fruitless_scan = None;
                return true;
            }
        }
        self.fruitless_scan = Some(now);
        false
    }

    /// Counts a refusal; the first of an interval is logged with the
    /// counts since the last line.
    fn refused(&mut self, why: Refused, now: Instant, limits: &ConnectionLimits) {
        if let Some([total, per_source]) = self.refused.count(why as usize, now) {
            tracing::warn!(
                open = self.open,
                max_connections = limits.max_total,
                max_connections_per_source = limits.max_per_source,
                refused_total = total,
                refused_per_source = per_source,
                "closing new connections at the connection bounds (counts since the last such line; at most one a minute; sts_connections_refused_total counts all)"
            );
        }
    }
}

/// A connection's place in the table, given back when it drops.
pub struct Admitted {
    connections: Arc<Connections>,
    place: usize,
    group: Option<Group>,
    slot: Arc<Slot>,
}

impl Admitted {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    pub fn table(&self) -> &Arc<Connections> {
        &self.connections
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.release(self.place, self.group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_total: usize, max_per_source: usize, trusted: &str) -> Arc<Connections> {
        Connections::new(
            ConnectionLimits {
                max_total,
                max_per_source,
                max_requests_in_flight: usize::MAX,
            },
            Arc::new(TrustedProxies::parse(trusted).unwrap()),
            Arc::new(Metrics::with(|_| {})),
        )
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        let limits = ConnectionLimits::for_descriptors(256);
        assert_eq!(limits.max_total, 128);
        assert_eq!(limits.max_per_source, 32);
        assert_eq!(
            ConnectionLimits::for_descriptors(1_048_576).max_total,
            10_000
        );
        assert_eq!(ConnectionLimits::for_descriptors(20).max_total, 16);
        let given = ConnectionLimits::resolve(Some(40), None, Some(256));
        assert_eq!((given.max_total, given.max_per_source), (40, 10));
        let given = ConnectionLimits::resolve(None, Some(3), Some(256));
        assert_eq!((given.max_total, given.max_per_source), (128, 3));
        let unknown = ConnectionLimits::resolve(None, None, None);
        assert_eq!(unknown.max_total, MAX_DEFAULT_CONNECTIONS);
    }

    #[test]
    fn each_source_has_its_bound_and_trusted_proxies_none() {
        let connections = table(100, 2, "10.0.0.1");
        let a = [
            connections.admit(ip("192.0.2.1")),
            connections.admit(ip("192.0.2.1")),
        ];
        assert!(a.iter().all(Result::is_ok));
        assert_eq!(
            connections.admit(ip("192.0.2.1")).err(),
            Some(Refused::PerSource)
        );
        // The same /64 is one source; another address is not.
        let v6 = [
            connections.admit(ip("2001:db8::1")),
            connections.admit(ip("2001:db8::2")),
        ];
        assert!(v6.iter().all(Result::is_ok));
        assert_eq!(
            connections.admit(ip("2001:db8::3")).err(),
            Some(Refused::PerSource)
        );
        assert!(connections.admit(ip("192.0.2.2")).is_ok());
        let proxied: Vec<_> = (0..10).map(|_| connections.admit(ip("10.0.0.1"))).collect();
        assert!(proxied.iter().all(Result::is_ok));
        // A closed connection gives its place back.
        drop(a);
        assert!(connections.admit(ip("192.0.2.1")).is_ok());
    }

    #[tokio::test]
    async fn at_the_total_an_idle_connection_makes_room_and_a_busy_one_does_not() {
        let connections = table(2, 10, "");
        let busy = connections.admit(ip("192.0.2.1")).unwrap();
        let _request = busy.slot().request();
        let idle = connections.admit(ip("192.0.2.2")).unwrap();
        let newcomer = connections.admit(ip("192.0.2.3")).unwrap();
        // The idle one was told to close (the notice waits for it).
        idle.slot().evicted().await;
        // Nothing else is idle (one is already going): the next is refused.
        let in_flight = newcomer.slot().request();
        let start = Instant::now();
        let refused = connections.admit_at(ip("192.0.2.4"), start);
        assert_eq!(refused.err(), Some(Refused::Total));
        drop(idle);
        drop(in_flight);
        // Right after a fruitless search, no new search; past the pause, the
        // newcomer (idle again) makes room.
        let soon = connections.admit_at(ip("192.0.2.4"), start + Duration::from_millis(1));
        assert_eq!(soon.err(), Some(Refused::Total));
        let later = start + FRUITLESS_SCAN_PAUSE;
        assert!(connections.admit_at(ip("192.0.2.4"), later).is_ok());
        newcomer.slot().evicted().await;
    }
}
