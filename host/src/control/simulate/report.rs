//! What a simulation found, per policy: requests and errors, client
//! latency percentiles, each backend's share overall and per window; as a
//! table, as JSON (stable: the same run gives the same bytes) or as an SVG
//! chart of each backend's share over time.

use std::fmt::Write as _;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value, json};

/// Where a request was answered from.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// The backend's index.
    pub backend: usize,
}

/// One policy's run.
#[derive(Debug)]
pub struct PolicyRun {
    /// The policy, as the proxy names it.
    pub policy: String,
    /// `sha256:HEX` of its component (empty for a native policy).
    pub digest: String,
    /// Requests answered with a 5xx.
    pub errors: u64,
    /// Requests sent by the fallback because the policy failed.
    pub policy_failures: u64,
    /// Each request's arrival, the backend that answered it and whether
    /// the answer was an error.
    requests: Vec<(Duration, Option<usize>, bool)>,
    /// Each request's time to its answer, ns.
    latencies: Vec<u64>,
}

impl PolicyRun {
    /// An empty run of `policy`, for about `expected` requests.
    pub fn new(policy: String, digest: String, expected: usize) -> PolicyRun {
        PolicyRun {
            policy,
            digest,
            errors: 0,
            policy_failures: 0,
            requests: Vec::with_capacity(expected),
            latencies: Vec::with_capacity(expected),
        }
    }

    /// A request that arrived at `at` was answered `status` after `took`.
    pub fn record(
        &mut self,
        at: Duration,
        served: Option<Served>,
        status: StatusCode,
        took: Duration,
    ) {
        let error = status.is_server_error();
        self.errors += u64::from(error);
        self.requests.push((at, served.map(|s| s.backend), error));
        self.latencies.push(took.as_nanos() as u64);
    }

    /// Requests simulated.
    pub fn total(&self) -> usize {
        self.requests.len()
    }

    /// Latency percentile `p` (0..=1), ms.
    fn percentile_ms(&self, sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i] as f64 / 1e6
    }

    /// Requests per backend, and in all, in consecutive buckets of
    /// `width` from 0 (`buckets` of them; a request past the last counts
    /// in the last), in one pass.
    fn histogram(&self, n: usize, width: Duration, buckets: usize) -> Vec<(Vec<u64>, u64)> {
        let mut out = vec![(vec![0; n], 0); buckets.max(1)];
        let last = out.len() - 1;
        for (at, backend, _) in &self.requests {
            let i = ((at.as_nanos() / width.as_nanos().max(1)) as usize).min(last);
            out[i].1 += 1;
            if let Some(b) = backend {
                out[i].0[*b] += 1;
            }
        }
        out
    }

    /// Requests per backend over the whole run.
    fn overall(&self, n: usize) -> Vec<u64> {
        self.histogram(n, Duration::MAX, 1).remove(0).0
    }
}

/// Everything a simulation found.
#[derive(Debug)]
pub struct Report {
    /// The upstream simulated.
    pub upstream: String,
    /// Its backends, in config order.
    pub backends: Vec<String>,
    /// Simulated time.
    pub duration: Duration,
    /// Width of the windows shares are given over.
    pub window: Duration,
    /// The scenario's events: when, and what changed.
    pub events: Vec<(Duration, String)>,
    /// One per policy, the upstream's own first.
    pub runs: Vec<PolicyRun>,
}

/// A share as a fraction, rounded to 4 places (stable output).
fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn share(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

impl Report {
    fn windows(&self) -> Vec<(Duration, Duration)> {
        let mut out = Vec::new();
        let mut from = Duration::ZERO;
        while from < self.duration {
            let to = (from + self.window).min(self.duration);
            out.push((from, to));
            from = to;
        }
        out
    }

    /// The report as JSON: `{"policies": [{"policy", "requests", "p50_ms",
    /// "p99_ms", "errors", "backends": {"a": {"requests", "share"}}, ...}]}`.
    pub fn json(&self) -> String {
        let n = self.backends.len();
        let windows = self.windows();
        let policies: Vec<Value> = self
            .runs
            .iter()
            .map(|run| {
                let mut sorted = run.latencies.clone();
                sorted.sort_unstable();
                let total = run.total() as u64;
                let counts = run.overall(n);
                let per_window = run.histogram(n, self.window, windows.len());
                let mut backends = Map::new();
                for (name, c) in self.backends.iter().zip(&counts) {
                    backends.insert(
                        name.clone(),
                        json!({"requests": c, "share": round(share(*c, total), 4)}),
                    );
                }
                let windows: Vec<Value> = windows
                    .iter()
                    .zip(&per_window)
                    .map(|(&(from, to), (counts, total))| {
                        let total = *total;
                        let mut shares = Map::new();
                        for (name, c) in self.backends.iter().zip(counts) {
                            shares.insert(name.clone(), json!(round(share(*c, total), 4)));
                        }
                        json!({
                            "from_s": round(from.as_secs_f64(), 3),
                            "to_s": round(to.as_secs_f64(), 3),
                            "requests": total,
                            "share": shares,
                        })
                    })
                    .collect();
                json!({
                    "policy": run.policy,
                    "digest": run.digest,
                    "requests": total,
                    "p50_ms": round(run.percentile_ms(&sorted, 0.50), 3),
                    "p99_ms": round(run.percentile_ms(&sorted, 0.99), 3),
                    "errors": run.errors,
                    "error_rate": round(share(run.errors, total), 4),
                    "policy_failures": run.policy_failures,
                    "backends": backends,
                    "windows": windows,
                })
            })
            .collect();
        let doc = json!({
            "upstream": self.upstream,
            "duration_s": round(self.duration.as_secs_f64(), 3),
            "window_s": round(self.window.as_secs_f64(), 3),
            "policies": policies,
        });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The report as a table per policy; windows as columns when there
    /// are 12 or fewer.
    pub fn text(&self) -> String {
        let n = self.backends.len();
        let windows = self.windows();
        let width = self
            .backends
            .iter()
            .map(|b| b.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "upstream {}: {:.0} s simulated, {} backends",
            self.upstream,
            self.duration.as_secs_f64(),
            n
        );
        for run in &self.runs {
            let mut sorted = run.latencies.clone();
            sorted.sort_unstable();
            let total = run.total() as u64;
            let hex = run.digest.strip_prefix("sha256:").unwrap_or(&run.digest);
            let digest = if hex.is_empty() {
                String::new()
            } else {
                format!(" (sha256 {})", &hex[..hex.len().min(12)])
            };
            let _ = writeln!(
                out,
                "\npolicy {}{digest}: {} requests, p50 {:.1} ms, p99 {:.1} ms, errors {} ({:.1}%), policy failures {}",
                run.policy,
                total,
                run.percentile_ms(&sorted, 0.50),
                run.percentile_ms(&sorted, 0.99),
                run.errors,
                share(run.errors, total) * 100.0,
                run.policy_failures
            );
            let show_windows = windows.len() > 1 && windows.len() <= 12;
            let _ = write!(
                out,
                "  {:<width$} {:>8} {:>7}",
                "backend", "requests", "share"
            );
            if show_windows {
                for (from, to) in &windows {
                    let label = format!("{}-{}s", from.as_secs(), to.as_secs());
                    let _ = write!(out, " {label:>8}");
                }
            }
            out.push('\n');
            let counts = run.overall(n);
            let per_window = run.histogram(n, self.window, windows.len());
            for (i, name) in self.backends.iter().enumerate() {
                let _ = write!(
                    out,
                    "  {name:<width$} {:>8} {:>6.1}%",
                    counts[i],
                    share(counts[i], total) * 100.0
                );
                if show_windows {
                    for (c, t) in &per_window {
                        let _ = write!(out, " {:>7.1}%", share(c[i], *t) * 100.0);
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// Each backend's share over time, one panel per policy.
    pub fn svg(&self) -> String {
        let secs = self.duration.as_secs_f64().max(1.0);
        let height = TOP + self.runs.len() as f64 * (H + GAP) + 20.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
            W + LEFT + 140.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="18" font-size="14">Share of requests per backend over {:.0} simulated seconds, upstream {}</text>"#,
            secs,
            escape(&self.upstream)
        );
        for (p, run) in self.runs.iter().enumerate() {
            self.panel(&mut out, run, TOP + p as f64 * (H + GAP) + 20.0);
        }
        out.push_str("</svg>\n");
        out
    }

    /// One policy's panel, its top at `y0`: a line per backend over 1 s
    /// buckets (coarser past 300 s), the scenario's events marked.
    fn panel(&self, out: &mut String, run: &PolicyRun, y0: f64) {
        let n = self.backends.len();
        let secs = self.duration.as_secs_f64().max(1.0);
        let bucket = Duration::from_secs_f64((secs / 300.0).max(1.0));
        let buckets = (secs / bucket.as_secs_f64()).ceil() as usize;
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}">{}</text>
<rect x="{LEFT}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#999"/>"##,
            y0 - 6.0,
            escape(&run.policy)
        );
        for pct in [0, 50, 100] {
            let y = y0 + H - H * f64::from(pct) / 100.0;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="end">{pct}%</text>"#,
                LEFT - 4.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{secs:.0} s</text>"#,
            LEFT + W,
            y0 + H + 14.0
        );
        for (at, what) in &self.events {
            let x = LEFT + W * at.as_secs_f64() / secs;
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#555" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="10">{}</text>"##,
                y0 + H,
                x + 3.0,
                y0 + 12.0,
                escape(what)
            );
        }
        let per = run.histogram(n, bucket, buckets);
        for b in 0..n {
            let colour = COLOURS[b % COLOURS.len()];
            let points: Vec<String> = per
                .iter()
                .enumerate()
                .map(|(k, (c, t))| {
                    let mid = ((k as f64 + 0.5) * bucket.as_secs_f64()).min(secs);
                    let x = LEFT + W * mid / secs;
                    let y = y0 + H - H * share(c[b], *t);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>
<text x="{}" y="{}" fill="{colour}">{}</text>"#,
                points.join(" "),
                LEFT + W + 8.0,
                y0 + 14.0 + 16.0 * b as f64,
                escape(&self.backends[b])
            );
        }
    }
}

/// The SVG chart's geometry: panel width and height, margins, colours.
const W: f64 = 720.0;
const H: f64 = 180.0;
const LEFT: f64 = 50.0;
const TOP: f64 = 30.0;
const GAP: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
