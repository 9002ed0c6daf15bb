//! `switchyard simulate`: an upstream's policy, and others for comparison,
//! run against simulated backends on a virtual clock.
//!
//! Nothing is mocked on the proxy's side: each policy is loaded as the
//! proxy loads it (same engine, sandbox and contract), and every request
//! goes through the same `Upstream::choose` (the policy's answer checked,
//! the fallback when it fails), ranked fallbacks and retries of refused
//! connections, and `Upstream::report` (passive health, latency average,
//! outcomes to an observing policy). Only the backends and the clock are
//! simulated: the process's monotonic clock is switched to a virtual one
//! that jumps from event to event, and every draw comes from `seed`, so a
//! run is deterministic and thousands of simulated seconds take a few
//! real ones.
//!
//! - [`scenario`]: the scenario file;
//! - [`traffic`]: the requests (synthetic, or replayed from an access log);
//! - [`report`]: what a run found, as text, JSON or SVG.

pub mod report;
pub mod scenario;
pub mod traffic;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use http::{HeaderValue, StatusCode};
use smallvec::SmallVec;

use super::app::App;
use crate::config::{Config, OciReference, PolicySource, UpstreamConfig};
use crate::policy::{Policy, RoundRobin, StateRegistry, WasmPolicy, set_virtual_ns};
use crate::upstream::{Backend, BackendRegistry, FailureKind, InFlight, Outcome, Upstream, states};
use report::{PolicyRun, Served};
use scenario::{BackendModel, Scenario};
use traffic::Arrival;

/// Where the virtual clock starts: not 0, which the contract uses for
/// "never" (e.g. a backend's `healthy-since`).
const START_NS: u64 = 1_000_000_000;

/// What `switchyard simulate` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy's config.
    pub config: PathBuf,
    /// The scenario file.
    pub scenario: PathBuf,
    /// The upstream to simulate (default: the config's only one).
    pub upstream: Option<String>,
    /// Other policies to compare (built-in names or paths), run without
    /// the upstream's `policy-config`.
    pub policies: Vec<String>,
    /// A JSON access log to replay instead of synthetic requests.
    pub access_log: Option<PathBuf>,
}

/// Runs the simulation: the upstream's policy first, then each other
/// policy, each on a fresh group over the same requests.
pub fn run(options: &Options) -> anyhow::Result<report::Report> {
    let config = Config::load(&options.config)?;
    let up = pick_upstream(&config, options.upstream.as_deref())?;
    let names: Vec<&str> = up.backends.iter().map(|b| b.name.as_str()).collect();
    let scenario = Scenario::load(&options.scenario, &names)?;
    let arrivals = match &options.access_log {
        Some(log) => traffic::replay(log)?,
        None => traffic::synthetic(&scenario),
    };
    crate::policy::use_virtual_clock(START_NS);
    let app = App::new(1)?;
    app.engine.set_cache_dir(config.cache_dir.clone());
    let mut sources = vec![(up.policy.clone(), up.policy_config.clone())];
    for p in &options.policies {
        sources.push((source_of(p, Path::new("."), &config)?, Vec::new()));
    }
    let mut runs = Vec::new();
    for (source, policy_config) in sources {
        let mut group = up.clone();
        if group.policy != source {
            group.policy_sha256 = None;
        }
        group.policy = source;
        group.policy_config = policy_config;
        group.shadow = None;
        runs.push(simulate_one(&app, group, &scenario, &arrivals)?);
    }
    Ok(report::Report {
        upstream: up.name.clone(),
        backends: names.iter().map(|s| s.to_string()).collect(),
        duration: scenario
            .duration
            .max(arrivals.last().map_or(Duration::ZERO, |a| a.at)),
        window: scenario.window,
        events: scenario
            .events
            .iter()
            .map(|e| (e.at, e.describe()))
            .collect(),
        runs,
    })
}

fn pick_upstream<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<&'a UpstreamConfig> {
    let all = || {
        config
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => config
            .upstreams
            .iter()
            .find(|u| u.name == n)
            .with_context(|| format!("no upstream {n:?} in the config (upstreams: {})", all())),
        None if config.upstreams.len() == 1 => Ok(&config.upstreams[0]),
        None => anyhow::bail!(
            "the config has several upstreams; name one with --upstream ({})",
            all()
        ),
    }
}

/// A policy named on the command line: a built-in, `native:round-robin`,
/// a component file, or an `oci://` reference (over plain HTTP if the
/// config already speaks so to that registry).
fn source_of(text: &str, base: &Path, config: &Config) -> anyhow::Result<PolicySource> {
    if text.starts_with("oci://") {
        let mut r =
            OciReference::parse(text).map_err(|e| anyhow::anyhow!("--policy {text}: {e}"))?;
        r.plain_http = config.upstreams.iter().any(|u| {
            matches!(&u.policy, PolicySource::Oci(o) if o.registry == r.registry && o.plain_http)
        });
        Ok(PolicySource::Oci(r))
    } else if let Some(native) = text.strip_prefix("native:") {
        Ok(PolicySource::Native(native.to_string()))
    } else if text.ends_with(".wasm") || text.contains('/') {
        Ok(PolicySource::File(base.join(text)))
    } else {
        Ok(PolicySource::Builtin(text.to_string()))
    }
}

/// An attempt on its way back from a simulated backend.
struct Pending {
    request: usize,
    backend: usize,
    attempt: u32,
    status: StatusCode,
    took: Duration,
    failure: Option<FailureKind>,
    _in_flight: InFlight,
}

/// How long backend `m` takes to answer and what, given `busy` requests
/// already in progress on it.
fn answer(m: &BackendModel, rng: &mut fastrand::Rng, busy: u32) -> (StatusCode, Duration) {
    if m.errors > 0.0 && rng.f64() < m.errors {
        return (StatusCode::SERVICE_UNAVAILABLE, m.error_latency);
    }
    let median = m.latency.as_secs_f64();
    let p99 = m.p99.map_or(median * 2.0, |p| p.as_secs_f64());
    // Log-normal: p99 is 2.326 standard deviations above the median.
    let sigma = if median > 0.0 {
        (p99 / median).ln() / 2.326_348
    } else {
        0.0
    };
    let mut secs = median * (sigma * normal(rng)).exp();
    if m.capacity > 0 && busy >= m.capacity {
        secs *= f64::from(busy + 1) / f64::from(m.capacity);
    }
    (StatusCode::OK, Duration::from_secs_f64(secs))
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn load(
    app: &App,
    group: &UpstreamConfig,
    backends: &[Backend],
) -> anyhow::Result<Box<dyn Policy>> {
    if let PolicySource::Native(_) = group.policy {
        return Ok(Box::new(RoundRobin::default()));
    }
    let what = || format!("policy {}", group.policy);
    // As the proxy would: pulled if a reference, checked against its pin.
    let compiled = super::runtime::compile(app, group).with_context(what)?;
    let policy = WasmPolicy::load(
        &app.engine,
        compiled,
        group,
        StateRegistry::default().get(&group.name, &Default::default()),
        &states(backends, &[]),
        1,
    )
    .with_context(what)?;
    Ok(Box::new(policy))
}

/// One policy's run over `arrivals`.
fn simulate_one(
    app: &App,
    group: UpstreamConfig,
    scenario: &Scenario,
    arrivals: &[Arrival],
) -> anyhow::Result<PolicyRun> {
    set_virtual_ns(START_NS);
    // The host's `random` import draws from this thread's generator.
    fastrand::seed(scenario.seed);
    // Each entry is its own simulated backend, even where the config
    // gives two the same address (the registry would make them one).
    let mut group = group;
    for (i, b) in group.backends.iter_mut().enumerate() {
        b.socket_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16));
    }
    let backends =
        BackendRegistry::default().backends(&group, 0, |b| app.metrics.backend(&group.name, b));
    let models = backends.iter().map(|b| scenario.model(&b.name)).collect();
    let policy = load(app, &group, &backends)?;
    let metrics = app.metrics.upstream(&group.name);
    let upstream = Upstream::new(group, backends, policy, metrics);
    let policy = upstream.policy();
    let mut sim = Sim {
        watched: policy.watched_headers().len(),
        run: PolicyRun::new(
            policy.name().to_string(),
            crate::upstream::shadow::prefixed(policy.status().digest),
            arrivals.len(),
        ),
        policy,
        upstream,
        models,
        rng: fastrand::Rng::with_seed(scenario.seed ^ 0x5eed_5eed_5eed_5eed),
        pending: BinaryHeap::new(),
        slots: HashMap::new(),
        seq: 0,
        jar: HashMap::new(),
    };
    let mut events: Vec<_> = scenario.events.iter().collect();
    events.sort_by_key(|e| e.at);
    let mut events = events.into_iter().peekable();
    for (i, arrival) in arrivals.iter().enumerate() {
        let now = START_NS + arrival.at.as_nanos() as u64;
        // Everything due before this request, in time order.
        loop {
            let next_event = events.peek().map(|e| START_NS + e.at.as_nanos() as u64);
            let limit = next_event.map_or(now, |e| e.min(now));
            if sim.finish_one(arrivals, limit) {
                continue;
            }
            match (next_event, events.peek()) {
                (Some(at), Some(ev)) if at <= now => {
                    set_virtual_ns(at);
                    if let Some(b) = sim.index_of(&ev.backend) {
                        ev.apply(&mut sim.models[b]);
                    }
                    events.next();
                }
                _ => break,
            }
        }
        set_virtual_ns(now);
        sim.send(i, arrival, scenario);
    }
    while sim.finish_one(arrivals, u64::MAX) {}
    Ok(sim.run)
}

/// A group under simulation and what it has in progress.
struct Sim {
    upstream: Upstream,
    policy: crate::upstream::PolicyRef,
    /// How each backend behaves now.
    models: Vec<BackendModel>,
    /// Draws of answers and latencies (the policy has its own).
    rng: fastrand::Rng,
    /// Attempts in progress, by when they end.
    pending: BinaryHeap<Reverse<(u64, u64)>>,
    slots: HashMap<u64, Pending>,
    seq: u64,
    /// Each client's cookies.
    jar: HashMap<u32, Vec<(String, String)>>,
    /// How many response headers the policy watches.
    watched: usize,
    run: PolicyRun,
}

impl Sim {
    fn index_of(&self, name: &str) -> Option<usize> {
        self.upstream.backends.iter().position(|b| &*b.name == name)
    }

    /// Sends request `i` as the proxy's retry loop would: the policy's
    /// ranked backends, then the policy again, past refused connections.
    fn send(&mut self, i: usize, arrival: &Arrival, scenario: &Scenario) {
        let upstream = &self.upstream;
        let mut view = traffic::request(arrival, scenario, self.jar.get(&arrival.key));
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut ranked: SmallVec<[usize; 4]> = SmallVec::new();
        loop {
            view.attempt = tried.len() as u32 + 1;
            let index = match upstream.next_ranked(&mut ranked, &tried) {
                Some(i) => i,
                None => {
                    let Some(choice) = upstream.choose(&**self.policy, &mut view, &tried) else {
                        break;
                    };
                    if choice.fallback.is_some() {
                        self.run.policy_failures += 1;
                    }
                    if let Some(cookie) = &choice.set_cookie {
                        remember(&mut self.jar, arrival.key, cookie);
                    }
                    ranked = choice.ranked;
                    choice.backend
                }
            };
            if self.models[index].down {
                // Refused at once: reported, and the next backend tried.
                upstream.report(
                    index,
                    &Outcome {
                        failure: Some(FailureKind::Connect),
                        attempt: view.attempt,
                        watched: vec![None; self.watched],
                        ..Outcome::default()
                    },
                );
                tried.push(index);
                if tried.len() > upstream.config.retries as usize {
                    break;
                }
                continue;
            }
            let stats = &upstream.backends[index].stats;
            let (mut status, mut took) =
                answer(&self.models[index], &mut self.rng, stats.in_flight());
            let mut failure = None;
            if took > upstream.config.response_timeout {
                (status, took, failure) = (
                    StatusCode::GATEWAY_TIMEOUT,
                    upstream.config.response_timeout,
                    Some(FailureKind::ResponseTimeout),
                );
            }
            self.seq += 1;
            let pending = Pending {
                request: i,
                backend: index,
                attempt: view.attempt,
                status,
                took,
                failure,
                _in_flight: stats.start(),
            };
            self.slots.insert(self.seq, pending);
            let ends = START_NS + (arrival.at + took).as_nanos() as u64;
            self.pending.push(Reverse((ends, self.seq)));
            return;
        }
        // Every backend tried refused: the client gets 502 at once.
        self.run
            .record(arrival.at, None, StatusCode::BAD_GATEWAY, Duration::ZERO);
    }

    /// Ends the next attempt in progress if it ends by `limit`: reported
    /// to the group (and through it the policy), counted for the client.
    fn finish_one(&mut self, arrivals: &[Arrival], limit: u64) -> bool {
        let Some(&Reverse((at, id))) = self.pending.peek() else {
            return false;
        };
        if at > limit {
            return false;
        }
        self.pending.pop();
        let Some(p) = self.slots.remove(&id) else {
            return true;
        };
        set_virtual_ns(at);
        let outcome = Outcome {
            connected: true,
            status: p.failure.is_none().then_some(p.status),
            headers_after: Some(p.took),
            body_after: p.failure.is_none().then_some(p.took),
            failure: p.failure,
            attempt: p.attempt,
            watched: vec![None; self.watched],
            trace: None,
        };
        self.upstream.report(p.backend, &outcome);
        drop(p._in_flight);
        let arrived = arrivals[p.request].at;
        let total = Duration::from_nanos(at - START_NS).saturating_sub(arrived);
        let served = Served { backend: p.backend };
        self.run.record(arrived, Some(served), p.status, total);
        true
    }
}

/// Keeps a cookie the policy set, as the client's browser would.
fn remember(jar: &mut HashMap<u32, Vec<(String, String)>>, key: u32, set_cookie: &HeaderValue) {
    let Ok(text) = set_cookie.to_str() else {
        return;
    };
    let pair = text.split(';').next().unwrap_or_default();
    let Some((name, value)) = pair.split_once('=') else {
        return;
    };
    let cookies = jar.entry(key).or_default();
    cookies.retain(|(n, _)| n != name.trim());
    cookies.push((name.trim().to_string(), value.trim().to_string()));
}
