//! The load generator's engine: closed-loop or fixed-rate workers over any
//! request function, a fixed-rate load over raw HTTP/1.1 connections,
//! HDR-histogram latencies, and the report they produce.

pub mod http1;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// How to drive the load.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Closed loop: requests in flight at once (one worker each). Open loop:
    /// workers building requests in turn (connections are shared by them).
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `Some(rps)`: open loop at a fixed rate, latency measured from each
    /// request's due time (no coordinated omission); `None`: closed loop, as
    /// fast as answers come.
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    /// CPU seconds this (client) process used while measuring.
    pub client_cpu_seconds: f64,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn to_json(&self, scenario: &str) -> Value {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "scenario": scenario,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "rps": self.rps(),
            "p50_us": us(0.5),
            "p90_us": us(0.9),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "client_cpu_seconds": self.client_cpu_seconds,
        })
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs `plan` with one `request` closure per worker; `request` returns
/// whether the answer was the expected one.
pub async fn run<F, Fut>(plan: Plan, make_worker: impl Fn(usize) -> F) -> Outcome
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    measured(plan, |start, window| async move {
        match plan.rate {
            None => closed_loop(plan.concurrency, window, make_worker).await,
            Some(rps) => open_loop(plan.concurrency, rps, start, window, make_worker).await,
        }
    })
    .await
}

/// `rps` requests a second on a fixed schedule, each due request handed in
/// turn to one of `connections` HTTP/1.1 connections to `target`, which
/// sends `request` as soon as its previous answer is in, as wrk2 does.
/// Latency runs from the due time; an answer other than `expect` is an
/// error, and so is every request a failed connection would have sent.
///
/// Cheaper than [`run`]'s open loop, which took more than the client's core
/// at half of nginx's rate and then measured its own queueing: no task or
/// lock per request, and everything on one thread (a runtime of its own),
/// whose pacer checks the clock between polls instead of sleeping (a
/// wake-up from another thread costs more than a request). So the client's
/// CPU reads 1.0 here whatever the rate: the pacer spins.
pub async fn paced_http1(
    plan: Plan,
    rps: f64,
    target: std::net::SocketAddr,
    request: Arc<[u8]>,
    connections: usize,
    expect: u16,
) -> anyhow::Result<Outcome> {
    let paced = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut opened = Vec::with_capacity(connections);
            for _ in 0..connections.max(1) {
                opened.push(http1::Connection::open(target, request.clone()).await?);
            }
            Ok(measured(plan, |start, window| {
                paced(opened, rps, start, window, expect)
            })
            .await)
        })
    };
    tokio::task::spawn_blocking(paced).await?
}

async fn paced(
    connections: Vec<http1::Connection>,
    rps: f64,
    start: Instant,
    window: Window,
    expect: u16,
) -> Tally {
    let mut queues = Vec::with_capacity(connections.len());
    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in connections {
        let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        queues.push(due_tx);
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while let Some(due) = due_rx.recv().await {
                let answer = connection.send().await;
                let ok = matches!(answer, Ok(status) if status == expect);
                tally.record(window, due, Instant::now(), ok);
                if answer.is_err() {
                    break;
                }
            }
            tally
        });
    }
    let every = Duration::from_secs_f64(1.0 / rps);
    let (mut n, mut turn, mut lost) = (0u32, 0, 0);
    loop {
        let now = Instant::now();
        let mut due = start + every * n;
        while due <= now && due < window.to {
            turn = (turn + 1) % queues.len();
            // A connection that failed has stopped: what it would have
            // sent counts as failed, and the rest go on.
            if queues[turn].send(due).is_err() && due >= window.from {
                lost += 1;
            }
            n += 1;
            due = start + every * n;
        }
        if due >= window.to {
            break;
        }
        tokio::task::yield_now().await;
    }
    drop(queues);
    let mut tally = Tally::new();
    while let Some(done) = tasks.join_next().await {
        tally.add(done.expect("connection task panicked"));
    }
    tally.requests += lost;
    tally.errors += lost;
    tally
}

/// Runs `drive` over the window `plan` sets, timing it and the client's CPU.
async fn measured<Fut>(plan: Plan, drive: impl FnOnce(Instant, Window) -> Fut) -> Outcome
where
    Fut: Future<Output = Tally>,
{
    let start = Instant::now();
    let window = Window {
        from: start + plan.warmup,
        to: start + plan.warmup + plan.duration,
    };
    let me = std::process::id().to_string();
    let cpu_before = {
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.from.into()).await;
            cpu_seconds(&me)
        })
    };
    let tally = drive(start, window).await;
    let before = cpu_before.await.ok().flatten().unwrap_or(0.0);
    Outcome {
        requests: tally.requests,
        errors: tally.errors,
        seconds: plan.duration.as_secs_f64(),
        latency: tally.latency,
        client_cpu_seconds: cpu_seconds(&me).unwrap_or(0.0) - before,
    }
}

/// The measured part of a run: requests sent from `from` and answered by `to`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

/// Latencies and counts of the requests inside the window.
struct Tally {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            requests: 0,
            errors: 0,
        }
    }

    fn record(&mut self, window: Window, sent: Instant, done: Instant, ok: bool) {
        if sent >= window.from && done <= window.to {
            self.requests += 1;
            self.errors += u64::from(!ok);
            let nanos = done.duration_since(sent).as_nanos() as u64;
            let _ = self.latency.record(nanos.max(1));
        }
    }

    fn add(&mut self, other: Tally) {
        self.latency.add(other.latency).expect("same bounds");
        self.requests += other.requests;
        self.errors += other.errors;
    }
}

/// Each worker sends its next request as soon as the last is answered.
async fn closed_loop<F, Fut>(
    concurrency: usize,
    window: Window,
    make_worker: impl Fn(usize) -> F,
) -> Tally
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut request = make_worker(i);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let sent = Instant::now();
                    if sent >= window.to {
                        break tally;
                    }
                    let ok = request().await;
                    tally.record(window, sent, Instant::now(), ok);
                }
            })
        })
        .collect();
    let mut tally = Tally::new();
    for worker in workers {
        tally.add(worker.await.expect("worker panicked"));
    }
    tally
}

/// The open loop's pacer wakes at most this often; requests due within one
/// tick go out together (each still timed from its own due time).
const PACER_TICK: Duration = Duration::from_micros(50);

/// Requests go out on a fixed schedule, `rps` a second, whether or not
/// earlier ones were answered (workers take turns building them), and each
/// latency runs from when its request was due, so a slow answer cannot hide
/// the requests it would have delayed (no coordinated omission).
///
/// tokio's timer has millisecond ticks: sleeping on it to each due time would
/// send requests in bursts, one burst per tick, and measure the client's own
/// queueing. The schedule is kept by a plain thread instead, whose sleeps are
/// precise to tens of microseconds, and handed to the runtime over a channel,
/// in bursts of at most one [`PACER_TICK`].
async fn open_loop<F, Fut>(
    concurrency: usize,
    rps: f64,
    start: Instant,
    window: Window,
    make_worker: impl Fn(usize) -> F,
) -> Tally
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut workers: Vec<F> = (0..concurrency.max(1)).map(make_worker).collect();
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = pace(rps, start, window, move |due| due_tx.send(due).is_ok());
    let tally = Arc::new(std::sync::Mutex::new(Tally::new()));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut turn = 0;
    while let Some(due) = due_rx.recv().await {
        let request = (workers[turn])();
        turn = (turn + 1) % workers.len();
        let tally = tally.clone();
        in_flight.spawn(async move {
            let ok = request.await;
            let done = Instant::now();
            tally
                .lock()
                .expect("no panics while held")
                .record(window, due, done, ok);
        });
        // Reap finished tasks so the set does not grow for the whole run.
        while in_flight.try_join_next().is_some() {}
    }
    pacer.join().expect("pacer panicked");
    while in_flight.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .ok()
        .expect("every request task has finished")
        .into_inner()
        .expect("no panics while held")
}

/// Starts the thread that keeps the schedule: it hands each request's due
/// time to `hand`, `rps` a second from `start` to the window's end (or
/// until `hand` says stop), those due within one [`PACER_TICK`] together.
fn pace(
    rps: f64,
    start: Instant,
    window: Window,
    mut hand: impl FnMut(Instant) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let every = Duration::from_secs_f64(1.0 / rps);
    std::thread::spawn(move || {
        let mut n = 0u32;
        loop {
            // Everything due by now goes out; then sleep to the next due
            // time, but at least PACER_TICK: at tens of thousands a second
            // a wake-up per request would take the client's core itself.
            let now = Instant::now();
            let mut due = start + every * n;
            while due <= now {
                if due >= window.to || !hand(due) {
                    return;
                }
                n += 1;
                due = start + every * n;
            }
            if due >= window.to {
                return;
            }
            std::thread::sleep((due - now).max(PACER_TICK));
        }
    })
}
