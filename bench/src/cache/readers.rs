//! An open-loop reading load: a few threads GET small blobs at a fixed total rate, each request
//! on its own connection (the raw reader of `src/rawget.rs`), and record every request's
//! latency from the moment it was scheduled (so a stall also counts against the requests it
//! delays, not only against the one it hit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Url;

use crate::{percentile, rawget};

/// A blob the readers GET: its URL and size.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: Url,
    pub size: u64,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was due.
    pub due: Instant,
    /// From `due` to its last byte (or to its failure).
    pub latency: Duration,
    pub error: Option<String>,
}

/// The load, running until [`stop`](Readers::stop).
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Readers {
    /// `threads` threads, `rate` GETs per second in all, round-robin over `targets`.
    pub fn start(targets: Arc<Vec<Target>>, rate: f64, threads: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(!targets.is_empty(), "no blobs to read");
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(threads as f64 / rate);
        let start = Instant::now();
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (targets, stop) = (targets.clone(), stop.clone());
            let first = start + period.mul_f64(t as f64 / threads as f64);
            let h = std::thread::Builder::new()
                .name(format!("reader-{t}"))
                .spawn(move || {
                    let mut samples = Vec::new();
                    let mut due = first;
                    let mut k = t;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let target = &targets[k % targets.len()];
                        let r = rawget::get_count(&target.url, target.size);
                        samples.push(Sample {
                            due,
                            latency: due.elapsed(),
                            error: r.err().map(|e| format!("{e:#}")),
                        });
                        k += threads;
                        due += period;
                    }
                    samples
                })?;
            handles.push(h);
        }
        Ok(Self {
            stop,
            threads: handles,
        })
    }

    /// Stops the load; every request made, in no particular order.
    pub fn stop(self) -> anyhow::Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in self.threads {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a reader thread panicked"))
                    .context("readers")?,
            );
        }
        Ok(all)
    }
}

/// The requests due within `[from, to]`, summarised.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Milliseconds.
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Requests per second actually made in the window.
    pub rate: f64,
}

impl Latency {
    pub fn of(samples: &[Sample], from: Instant, to: Instant) -> Self {
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.due >= from && s.due <= to)
            .collect();
        let ms: Vec<f64> = window
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.latency.as_secs_f64() * 1e3)
            .collect();
        let secs = to.saturating_duration_since(from).as_secs_f64();
        Self {
            requests: window.len(),
            errors: window.iter().filter(|s| s.error.is_some()).count(),
            first_error: window.iter().find_map(|s| s.error.clone()),
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            max: ms.iter().copied().fold(f64::NAN, f64::max),
            rate: if secs > 0.0 {
                window.len() as f64 / secs
            } else {
                f64::NAN
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_percentiles() {
        let t0 = Instant::now();
        let s = |ms: u64, lat: u64, err: bool| Sample {
            due: t0 + Duration::from_millis(ms),
            latency: Duration::from_millis(lat),
            error: err.then(|| "boom".to_string()),
        };
        let samples: Vec<Sample> = (0..100)
            .map(|i| s(i * 10, i + 1, false))
            .chain([s(500, 0, true), s(5000, 999, false)])
            .collect();
        let l = Latency::of(&samples, t0, t0 + Duration::from_millis(990));
        assert_eq!((l.requests, l.errors), (101, 1));
        assert_eq!(l.first_error.as_deref(), Some("boom"));
        assert_eq!((l.p50, l.p99, l.max), (50.0, 99.0, 100.0));
    }
}
