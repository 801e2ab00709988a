//! The audit log's tracing target, and its events for refused calls,
//! aggregated so that nobody can fill the disk with them.
//!
//! Anyone who can reach the port can send refused calls as fast as the
//! network allows, and so can any valid token, however little it may do:
//! each refusal used to be a log line (one low-privilege token wrote
//! 103 MiB in 10 s). Per interval, the first refusal of each kind is logged
//! in full at once (so a single mistake is seen with its reason straight
//! away) and the rest are counted, then written as summary events when the
//! interval ends (and at shutdown). A kind is, for a caller without a valid
//! credential, any refusal at all (then counted by RPC, source address and
//! reason); for an authenticated caller, its token, the call, the outcome
//! and the role it lacked. At most [`MAX_KEYS`] kinds of each are kept per
//! interval; beyond them refusals are counted together, unlogged, so memory
//! and log stay bounded under a distributed flood. Metrics still count
//! every call.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

/// The tracing target of audit events: every Create and Delete, every
/// refused or failed management call, and every refused role check, with
/// who made it. Never a secret.
pub const AUDIT: &str = "sts::audit";

/// The audit event of a management call that did what it was asked: the
/// fields every such event carries (`rpc`, `outcome = "OK"`, `caller.id`
/// and `caller.name` of `caller`, an `Option<&ServiceToken>` that is `None`
/// when no token asked (a bootstrap, a revocation by value, a purge),
/// `token.id`, `token.name`), then the event's own fields and message, as
/// `tracing` takes them. A macro, not a function: each event keeps fields of
/// its own, which `tracing` names at compile time.
macro_rules! done {
    ($level:ident, $rpc:expr, $caller:expr, $id:expr, $name:expr, $($rest:tt)+) => {{
        let caller: Option<&$crate::model::ServiceToken> = $caller;
        tracing::$level!(
            target: $crate::audit::AUDIT,
            rpc = $rpc,
            outcome = "OK",
            caller.id = caller.map(|c| c.id.get()),
            caller.name = caller.map(|c| c.name.as_str()),
            token.id = $id,
            token.name = $name,
            $($rest)+
        )
    }};
}
pub(crate) use done;

/// Distinct kinds of refusal kept per interval, for callers without a valid
/// credential and for authenticated callers each; further ones are counted
/// together, so memory stays bounded under a distributed flood.
pub const MAX_KEYS: usize = 16;

/// An unauthenticated refusal's kind: RPC, source, reason, outcome.
type AnonymousKey = (&'static str, Option<IpAddr>, &'static str, &'static str);

/// An authenticated refusal's kind: caller id, RPC, outcome, role.
type CallerKey = (u64, &'static str, &'static str, Option<String>);

/// What a summary says of an authenticated caller's kind of refusal.
struct CallerCount {
    name: String,
    reason: &'static str,
    /// Refusals after the first (which was logged in full).
    further: u64,
}

#[derive(Default)]
struct Window {
    /// Whether this interval's first unauthenticated refusal has been
    /// logged in full.
    first_logged: bool,
    anonymous: BTreeMap<AnonymousKey, u64>,
    /// Unauthenticated refusals beyond [`MAX_KEYS`] distinct kinds.
    anonymous_others: u64,
    callers: BTreeMap<CallerKey, CallerCount>,
    /// Authenticated refusals beyond [`MAX_KEYS`] distinct kinds.
    caller_others: u64,
}

pub struct Refusals {
    interval: Duration,
    window: Mutex<Window>,
    ticker: OnceLock<()>,
}

/// The token behind a refused call, when its credential was valid.
#[derive(Clone, Copy)]
pub struct RefusedCaller<'a> {
    pub id: u64,
    pub name: &'a str,
}

/// One refused call, as the service saw it.
pub struct Refusal<'a> {
    pub rpc: &'static str,
    pub source: Option<IpAddr>,
    /// A short, bounded label (`missing`, `not_found`, ...).
    pub reason: &'static str,
    /// The gRPC code name of the answer.
    pub outcome: &'static str,
    /// The full reason, for the one event logged in full.
    pub detail: &'a dyn std::fmt::Display,
    /// Who made the call, when its credential was valid.
    pub caller: Option<RefusedCaller<'a>>,
    /// The role the caller lacked, when that was the refusal.
    pub role: Option<&'a str>,
}

impl Refusals {
    pub fn new(interval: Duration) -> Arc<Refusals> {
        Arc::new(Refusals {
            interval,
            window: Mutex::default(),
            ticker: OnceLock::new(),
        })
    }

    /// Records `refusal`: logged in full if it is the first of its kind in
    /// this interval, otherwise counted for the summary.
    pub fn record(self: &Arc<Self>, refusal: Refusal<'_>) {
        self.ticker.get_or_init(|| {
            tokio::spawn(tick(Arc::downgrade(self), self.interval));
        });
        match refusal.caller {
            None => self.record_anonymous(&refusal),
            Some(caller) => self.record_caller(&refusal, caller),
        }
    }

    fn record_anonymous(&self, refusal: &Refusal<'_>) {
        let first = {
            let mut window = self.lock();
            if window.first_logged {
                let key = (refusal.rpc, refusal.source, refusal.reason, refusal.outcome);
                let room = window.anonymous.len() < MAX_KEYS;
                match window.anonymous.get_mut(&key) {
                    Some(count) => *count += 1,
                    None if room => {
                        window.anonymous.insert(key, 1);
                    }
                    None => window.anonymous_others += 1,
                }
                false
            } else {
                window.first_logged = true;
                true
            }
        };
        if first {
            tracing::warn!(
                target: AUDIT,
                rpc = refusal.rpc,
                outcome = refusal.outcome,
                source = %Source(refusal.source),
                reason = %refusal.detail,
                "call refused to a caller without a valid credential (further such refusals in the next {:?} are summarized)",
                self.interval
            );
        }
    }

    fn record_caller(&self, refusal: &Refusal<'_>, caller: RefusedCaller<'_>) {
        let first = {
            let mut window = self.lock();
            let key = (
                caller.id,
                refusal.rpc,
                refusal.outcome,
                refusal.role.map(str::to_owned),
            );
            let room = window.callers.len() < MAX_KEYS;
            match window.callers.get_mut(&key) {
                Some(count) => {
                    count.further += 1;
                    false
                }
                None if room => {
                    let count = CallerCount {
                        name: caller.name.to_owned(),
                        reason: refusal.reason,
                        further: 0,
                    };
                    window.callers.insert(key, count);
                    true
                }
                None => {
                    window.caller_others += 1;
                    false
                }
            }
        };
        if first {
            let message = if refusal.rpc == ROLE_CHECK {
                "role check refused"
            } else {
                "management call refused"
            };
            tracing::warn!(
                target: AUDIT,
                rpc = refusal.rpc,
                outcome = refusal.outcome,
                caller.id = caller.id,
                caller.name = caller.name,
                source = refusal.source.map(tracing::field::display),
                role = refusal.role,
                reason = %refusal.detail,
                "{message} (the same refusal of this caller in the next {:?} is summarized)",
                self.interval
            );
        }
    }

    /// Writes the summary of the interval so far and starts a new one.
    pub fn flush(&self) {
        let window = std::mem::take(&mut *self.lock());
        let seconds = self.interval.as_secs_f64();
        for ((rpc, source, reason, outcome), count) in window.anonymous {
            tracing::warn!(
                target: AUDIT,
                rpc,
                outcome,
                source = %Source(source),
                reason,
                count,
                window_seconds = seconds,
                "calls refused to callers without a valid credential (summary)"
            );
        }
        if window.anonymous_others > 0 {
            tracing::warn!(
                target: AUDIT,
                source = "others",
                count = window.anonymous_others,
                window_seconds = seconds,
                "calls refused to callers without a valid credential (summary of further sources)"
            );
        }
        for ((id, rpc, outcome, role), count) in window.callers {
            if count.further == 0 {
                continue;
            }
            tracing::warn!(
                target: AUDIT,
                rpc,
                outcome,
                caller.id = id,
                caller.name = count.name,
                role,
                reason = count.reason,
                count = count.further,
                window_seconds = seconds,
                "calls refused to an authenticated caller after the first (summary)"
            );
        }
        if window.caller_others > 0 {
            tracing::warn!(
                target: AUDIT,
                caller = "others",
                count = window.caller_others,
                window_seconds = seconds,
                "calls refused to further authenticated callers (summary)"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counts only: a panic elsewhere cannot leave them inconsistent.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `rpc` of a refused role check (forward-auth's `?role=`, a reviewer's
/// credential).
pub const ROLE_CHECK: &str = "RoleCheck";

/// Flushes every interval while the service lives.
async fn tick(refusals: Weak<Refusals>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match refusals.upgrade() {
            Some(refusals) => refusals.flush(),
            None => return,
        }
    }
}

/// A source address, or `unknown` where the transport had none.
struct Source(Option<IpAddr>);

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}
