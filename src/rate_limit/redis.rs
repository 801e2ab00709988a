//! `Shared`, the limits' state in Redis, so replicas share each limit:
//! one atomic script per check (`SCRIPT`) does `gcra`'s arithmetic on the
//! token's hash, with the time the server passes in, never Redis' own.
//! While Redis is away the check is answered by the policy
//! (`OnStoreError`), and Redis is tried again after a pause that doubles
//! (one probe at a time), so an outage costs no check a timeout after the
//! first.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Local, Quota, Standing, Terms};
use crate::model::{MAX_RATE_LIMITS, RateLimits, TokenId};

/// How long one check waits for Redis before it is answered by the policy.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// The first pause after Redis failed; it doubles while Redis keeps
/// failing, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// What a check is answered with while the shared store is away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// This replica's own counters: each replica enforces the full limits,
    /// as without a shared store. Never unlimited.
    #[default]
    Open,
    /// Refused as unavailable: no check passes uncounted.
    Closed,
}

impl OnStoreError {
    /// `open` or `closed`, as the flag takes it.
    pub fn parse(text: &str) -> Option<OnStoreError> {
        match text {
            "open" => Some(OnStoreError::Open),
            "closed" => Some(OnStoreError::Closed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Open => "open",
            OnStoreError::Closed => "closed",
        }
    }
}

/// The GCRA of `gcra.rs` over a token's hash (`KEYS[1]`): one field per
/// limit, named by its terms (`name|limit|period_ms`, so changed terms
/// start whole), holding `debt:at_ms`. ARGV: now (ms), the cost, then
/// each limit's field, number and period (ms). Numbers stay whole and
/// below 2^53 (`model::MAX_LIMIT`), so doubles hold them exactly; divisions
/// are corrected to the exact quotient. Answers: the first refusing limit
/// (1-based; 0: passed), the wait in ms, then each limit's remaining and
/// reset (ms). A passed check of a positive cost writes every limit's new
/// debt and lets the hash expire when the longest period has drained it.
const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
local function fdiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end
local function cdiv(a, b)
  local q = fdiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end
local fields, limits, periods = {}, {}, {}
for i = 1, n do
  fields[i] = ARGV[3 * i]
  limits[i] = tonumber(ARGV[3 * i + 1])
  periods[i] = tonumber(ARGV[3 * i + 2])
end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))
local debts, ats = {}, {}
local refused, wait = 0, 0
for i = 1, n do
  local limit, period = limits[i], periods[i]
  local debt, at = 0, now
  if stored[i] then
    local sep = string.find(stored[i], ':', 1, true)
    debt = tonumber(string.sub(stored[i], 1, sep - 1))
    at = tonumber(string.sub(stored[i], sep + 1))
  end
  local elapsed = now - at
  if elapsed < 0 then elapsed = 0 end
  if elapsed >= period then
    debt = 0
  else
    debt = debt - elapsed * limit
    if debt < 0 then debt = 0 end
  end
  if at < now then at = now end
  debts[i], ats[i] = debt, at
  local cap = period * limit
  local w = -1
  if cost > limit then
    w = period
  elseif debt + cost * period > cap then
    w = cdiv(debt + cost * period - cap, limit)
  end
  if w >= 0 then
    if refused == 0 then refused = i end
    if w > wait then wait = w end
  end
end
if refused == 0 and cost > 0 then
  local args, longest = {}, 0
  for i = 1, n do
    debts[i] = debts[i] + cost * periods[i]
    args[2 * i - 1] = fields[i]
    args[2 * i] = string.format('%d:%d', debts[i], ats[i])
    if periods[i] > longest then longest = periods[i] end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(args))
  redis.call('PEXPIRE', KEYS[1], longest)
end
local out = {refused, wait}
for i = 1, n do
  local cap = periods[i] * limits[i]
  local debt = debts[i]
  if debt > cap then debt = cap end
  out[2 * i + 1] = fdiv(cap - debt, periods[i])
  out[2 * i + 2] = cdiv(debts[i], limits[i])
end
return out
"#;

/// The limits' state in Redis, with this replica's own counters for when
/// Redis is away.
pub struct Shared {
    connection: ConnectionManager,
    script: redis::Script,
    /// The URL as shown (its password hidden), for the log.
    shown: String,
    on_error: OnStoreError,
    /// Used while Redis is away and the policy is open.
    fallback: Local,
    away: Away,
}

/// An outage of Redis, as the checks see it: while `retry_at` lies ahead
/// nobody asks Redis; after it, one check (the one that takes `probing`)
/// does.
struct Away {
    /// Milliseconds since `epoch`; 0: Redis is up.
    retry_at: AtomicU64,
    probing: AtomicBool,
    pause: Mutex<Duration>,
    /// Checks answered without Redis in the current outage.
    unanswered: AtomicU64,
    epoch: Instant,
}

/// A check's outcome from the shared store's side.
pub enum Spent {
    /// Counted where the limits are kept.
    Counted(Quota),
    /// The shared store was away: counted by this replica alone (the open
    /// policy).
    Alone(Quota),
    /// The shared store was away and the policy is closed.
    Unavailable,
}

/// Why Redis could not be used at start-up (a URL it cannot take).
#[derive(Debug, thiserror::Error)]
#[error("cannot use the rate-limit store {shown}: {reason}")]
pub struct SharedError {
    shown: String,
    reason: String,
}

impl Shared {
    /// A limiter over the Redis at `url` (`shown` is the URL with its
    /// password hidden). Connects lazily: a Redis that is away at start-up
    /// is an outage like any other, not a reason not to serve.
    pub fn new(url: &str, shown: &str, on_error: OnStoreError) -> Result<Shared, SharedError> {
        let refused = |e: redis::RedisError| SharedError {
            shown: shown.to_owned(),
            // Its kind, never its text: that may quote the URL.
            reason: format!("{:?}", e.kind()),
        };
        let client = redis::Client::open(url).map_err(refused)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(FIRST_PAUSE);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(refused)?;
        Ok(Shared {
            connection,
            script: redis::Script::new(SCRIPT),
            shown: shown.to_owned(),
            on_error,
            fallback: Local::default(),
            away: Away {
                retry_at: AtomicU64::new(0),
                probing: AtomicBool::new(false),
                pause: Mutex::new(FIRST_PAUSE),
                unanswered: AtomicU64::new(0),
                epoch: Instant::now(),
            },
        })
    }

    pub async fn spend(&self, id: TokenId, limits: &RateLimits, cost: u64, now_ms: u64) -> Spent {
        if !self.may_ask() {
            return self.without_redis(id, limits, cost, now_ms);
        }
        match tokio::time::timeout(REDIS_TIMEOUT, self.ask(id, limits, cost, now_ms)).await {
            Ok(Ok(quota)) => {
                self.answered();
                Spent::Counted(quota)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                self.without_redis(id, limits, cost, now_ms)
            }
            Err(_) => {
                self.failed("no answer within the timeout");
                self.without_redis(id, limits, cost, now_ms)
            }
        }
    }

    async fn ask(
        &self,
        id: TokenId,
        limits: &RateLimits,
        cost: u64,
        now_ms: u64,
    ) -> redis::RedisResult<Quota> {
        let slice = limits.as_slice();
        let mut invocation = self.script.key(format!("sts:rl:{{{}}}", id.get()));
        invocation
            .arg(now_ms)
            .arg(cost.min(super::gcra::NEVER_FITS));
        for limit in slice {
            let terms = Terms::of(limit);
            invocation
                .arg(format!(
                    "{}|{}|{}",
                    limit.name(),
                    terms.limit,
                    terms.period_ms
                ))
                .arg(terms.limit)
                .arg(terms.period_ms);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<u64> = invocation.invoke_async(&mut connection).await?;
        let malformed = || {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "the rate-limit script answered an unexpected shape",
            ))
        };
        if answer.len() != 2 + 2 * slice.len() {
            return Err(malformed());
        }
        let mut standings = [Standing::default(); MAX_RATE_LIMITS];
        for (at, standing) in standings.iter_mut().enumerate().take(slice.len()) {
            *standing = Standing {
                remaining: answer[2 + 2 * at],
                reset: Duration::from_millis(answer[3 + 2 * at]),
            };
        }
        let refused = match usize::try_from(answer[0]).map_err(|_| malformed())? {
            0 => None,
            first if first <= slice.len() => Some((first - 1, Duration::from_millis(answer[1]))),
            _ => return Err(malformed()),
        };
        Ok(Quota::new(limits.clone(), standings, refused))
    }

    fn without_redis(&self, id: TokenId, limits: &RateLimits, cost: u64, now_ms: u64) -> Spent {
        self.away.unanswered.fetch_add(1, Ordering::Relaxed);
        match self.on_error {
            OnStoreError::Open => Spent::Alone(self.fallback.spend(id, limits, cost, now_ms)),
            OnStoreError::Closed => Spent::Unavailable,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.away.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether this check may ask Redis: it is up, or its pause is over and
    /// no other check is asking already.
    fn may_ask(&self) -> bool {
        let retry_at = self.away.retry_at.load(Ordering::Acquire);
        if retry_at == 0 {
            return true;
        }
        self.now_ms() >= retry_at
            && self
                .away
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn answered(&self) {
        if self.away.retry_at.swap(0, Ordering::AcqRel) != 0 {
            let unanswered = self.away.unanswered.swap(0, Ordering::Relaxed);
            *self.pause() = FIRST_PAUSE;
            self.away.probing.store(false, Ordering::Release);
            tracing::info!(
                store = %self.shown,
                checks_without_it = unanswered,
                "the rate-limit store answers again: limits are shared across replicas again"
            );
        }
    }

    /// One line per outage: the first failure names the cause; later ones
    /// only lengthen the pause.
    fn failed(&self, cause: &str) {
        let mut pause = self.pause();
        let retry_at = self.now_ms() + u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        let first = self.away.retry_at.swap(retry_at, Ordering::AcqRel) == 0;
        *pause = (*pause * 2).min(MAX_PAUSE);
        drop(pause);
        self.away.probing.store(false, Ordering::Release);
        if first {
            let meaning = match self.on_error {
                OnStoreError::Open => {
                    "each replica counts alone meanwhile (--rate-limit-on-error open)"
                }
                OnStoreError::Closed => {
                    "checks of limited tokens are refused meanwhile (--rate-limit-on-error closed)"
                }
            };
            tracing::warn!(store = %self.shown, cause, "the rate-limit store is away: {meaning}");
        }
    }

    fn pause(&self) -> std::sync::MutexGuard<'_, Duration> {
        self.away
            .pause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn sweep(&self, now_ms: u64) {
        self.fallback.sweep(now_ms);
    }
}
