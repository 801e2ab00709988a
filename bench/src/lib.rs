//! The load generator's engine: closed-loop or fixed-rate workers over any
//! request function, HDR-histogram latencies, and the report they produce.

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
    /// Requests in flight at once (one worker each).
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `Some(rps)`: fixed rate, latency measured from the intended send time
    /// (no coordinated omission); `None`: closed loop, as fast as answers come.
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
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let interval = plan
        .rate
        .map(|rps| Duration::from_secs_f64(plan.concurrency as f64 / rps));
    let cpu_before = Arc::new(std::sync::Mutex::new(None::<f64>));

    let mut workers = Vec::with_capacity(plan.concurrency);
    for i in 0..plan.concurrency {
        let mut request = make_worker(i);
        workers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let (mut requests, mut errors) = (0u64, 0u64);
            // Fixed rate: stagger workers across one interval.
            let mut next =
                interval.map(|every| start + every.mul_f64(i as f64 / plan.concurrency as f64));
            loop {
                let intended = match (next, interval) {
                    (Some(at), Some(every)) => {
                        tokio::time::sleep_until(at.into()).await;
                        next = Some(at + every);
                        at
                    }
                    _ => Instant::now(),
                };
                if intended >= end {
                    break;
                }
                let ok = request().await;
                let done = Instant::now();
                if intended >= measure_from && done <= end {
                    requests += 1;
                    if !ok {
                        errors += 1;
                    }
                    let nanos = done.duration_since(intended).as_nanos() as u64;
                    let _ = latency.record(nanos.max(1));
                }
            }
            (latency, requests, errors)
        }));
    }
    let me = std::process::id().to_string();
    let sampler = {
        let cpu_before = cpu_before.clone();
        let me = me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *cpu_before.lock().unwrap() = cpu_seconds(&me);
        })
    };

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut requests, mut errors) = (0, 0);
    for worker in workers {
        let (h, r, e) = worker.await.expect("worker panicked");
        latency.add(h).unwrap();
        requests += r;
        errors += e;
    }
    let _ = sampler.await;
    let before = cpu_before.lock().unwrap().unwrap_or(0.0);
    Outcome {
        requests,
        errors,
        seconds: plan.duration.as_secs_f64(),
        latency,
        client_cpu_seconds: cpu_seconds(&me).unwrap_or(0.0) - before,
    }
}
