//! What one policy decision costs: lending the request to the guest,
//! copying the backend states in, the guest's own work (including the
//! request-resource reads it makes), and checking the answer.
//!
//! `cargo bench -p switchyard --bench decision`
//!
//! Groups:
//! - `decision`: the three built-in policies (contract 0.2, and as they
//!   shipped for 0.1: `NAME@0.1`, from `tests/fixtures/v0.1/`) and the
//!   native round-robin, each for 3 and 16 backends, as the proxy runs them
//!   (deadline armed, memory limiter on). `sticky-session` is measured with a valid cookie
//!   (one `cookie()` read and a lookup) and without one (a weighted pick and
//!   a `Set-Cookie`).
//! - `adaptive`: the built-ins of issue 14 at 3 and 16 backends, with
//!   equal weights unless the name says `weighted`: `least-request` (P2C
//!   on in-flight), `least-request/weighted` (Envoy's weight / (in-flight +
//!   1)), `peak-ewma`, `round-robin/eject` (`eject-after = 5`) and
//!   `consistent-hash` keyed by a header; `round-robin` again, equal
//!   weights, for the ratio. A policy that observes has a second row,
//!   `/+outcome`, where one attempt ends per decision as under load (the
//!   host's push of the outcome and its share of a batched `observe`).
//! - `deadline`: the same decision with the epoch-deadline machinery on and
//!   off (an engine built without epoch interruption), to show its cost.
//! - `shared-state`: `round-robin` and `weighted` (each a shared counter
//!   per decision) with `shared-state = "local"` and `"redis"`, the latter
//!   against a `redis-server` the bench starts on a free loopback port
//!   (rows skipped when there is none on `PATH`).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::config::{
    Config, PolicySource, RedisTarget, SharedStateMode, StateConfig, UpstreamConfig,
};
use switchyard::policy::{
    BackendState, Decision, EngineOptions, Observed, Policy, PolicyEngine, RequestView, RoundRobin,
    SharedState, StateRegistry, WasmPolicy, monotonic_ns,
};

/// An upstream of `n` backends with weights 1, 2, 3, 1, 2, 3...
fn upstream(policy: &str, n: usize) -> UpstreamConfig {
    upstream_with(policy, n, true, "")
}

/// An upstream of `n` backends, weighted 1, 2, 3... or all 1, with
/// `policy_config` lines.
fn upstream_with(policy: &str, n: usize, weighted: bool, policy_config: &str) -> UpstreamConfig {
    let backends: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ name = \"backend-{i}\", address = \"127.0.0.1:{}\", weight = {} }}",
                9000 + i,
                if weighted { 1 + i % 3 } else { 1 }
            )
        })
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.bench]\npolicy = \"{policy}\"\nbackends = [{}]\n\
         [upstreams.bench.policy-config]\n{policy_config}\n",
        backends.join(", ")
    );
    Config::parse(Path::new("bench.toml"), &text)
        .expect("bench config")
        .upstreams
        .remove(0)
}

fn states(n: usize) -> Vec<BackendState> {
    (0..n)
        .map(|i| BackendState {
            healthy: true,
            in_flight: i as u32,
            latency_ewma_us: 250,
            healthy_since_ns: 1,
            consecutive_failures: 0,
        })
        .collect()
}

fn request(cookie: Option<&str>) -> RequestView {
    let mut b = http::Request::builder()
        .method("GET")
        .uri("/api/users?page=2")
        .header("host", "shop.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    RequestView {
        parts: b.body(()).unwrap().into_parts().0,
        client_ip: IpAddr::from([203, 0, 113, 7]),
        https: false,
        attempt: 1,
    }
}

/// Where the built-ins are as they shipped with contract 0.1.
fn v01(name: &str) -> PolicySource {
    PolicySource::File(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/v0.1")
            .join(format!("{name}.wasm")),
    )
}

fn load(engine: &PolicyEngine, name: &str, n: usize) -> WasmPolicy {
    load_from(engine, PolicySource::Builtin(name.to_string()), name, n)
}

fn load_from(engine: &PolicyEngine, source: PolicySource, name: &str, n: usize) -> WasmPolicy {
    load_upstream(engine, source, &upstream(name, n), n)
}

fn load_upstream(
    engine: &PolicyEngine,
    source: PolicySource,
    upstream: &UpstreamConfig,
    n: usize,
) -> WasmPolicy {
    load_on(
        engine,
        source,
        upstream,
        n,
        Arc::new(SharedState::default()),
    )
}

fn load_on(
    engine: &PolicyEngine,
    source: PolicySource,
    upstream: &UpstreamConfig,
    n: usize,
    state: Arc<SharedState>,
) -> WasmPolicy {
    let compiled = engine.compile(&source).expect("the policy compiles");
    WasmPolicy::load(engine, compiled, upstream, state, &states(n), 1).expect("built-in loads")
}

/// One decision as the proxy makes it: `select`, then the verdict handed
/// back (the policy keeps its health from it).
fn decide(policy: &dyn Policy, req: &mut RequestView, st: &[BackendState]) -> Decision {
    let d = policy.select(req, st).unwrap();
    policy.settle(Ok(()));
    d
}

fn decision(c: &mut Criterion) {
    let engine = PolicyEngine::new().expect("engine");
    let mut group = c.benchmark_group("decision");
    for n in [3usize, 16] {
        let st = states(n);
        // The built-ins now (contract 0.2) and as they shipped for 0.1.
        for (contract, source) in [("", None), ("@0.1", Some(v01 as fn(&str) -> PolicySource))] {
            for name in ["round-robin", "weighted"] {
                let policy = match source {
                    None => load(&engine, name, n),
                    Some(f) => load_from(&engine, f(name), name, n),
                };
                let mut req = request(None);
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}{contract}"), n),
                    &n,
                    |b, _| b.iter(|| black_box(decide(&policy, &mut req, black_box(&st)))),
                );
            }
            let sticky = match source {
                None => load(&engine, "sticky-session", n),
                Some(f) => load_from(&engine, f("sticky-session"), "sticky-session", n),
            };
            let mut fresh = request(None);
            let first = sticky.select(&mut fresh, &st).unwrap();
            let cookie = first.set_cookie.unwrap();
            let pair = format!("{}={}", cookie.name, cookie.value);
            let mut returning = request(Some(&format!("theme=dark; {pair}")));
            group.bench_with_input(
                BenchmarkId::new(format!("sticky-session{contract}/cookie"), n),
                &n,
                |b, _| b.iter(|| black_box(decide(&sticky, &mut returning, black_box(&st)))),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("sticky-session{contract}/new"), n),
                &n,
                |b, _| b.iter(|| black_box(decide(&sticky, &mut fresh, black_box(&st)))),
            );
        }

        let native = RoundRobin::default();
        let mut req = request(None);
        group.bench_with_input(BenchmarkId::new("native-round-robin", n), &n, |b, _| {
            b.iter(|| black_box(decide(&native, &mut req, black_box(&st))))
        });
    }
    group.finish();
}

/// The outcome of a 200 from `backend` after 250 µs, ending now.
fn outcome(backend: &Arc<str>) -> Observed {
    Observed {
        backend: backend.clone(),
        attempt: 1,
        status: Some(200),
        failure: None,
        headers_us: Some(250),
        body_us: Some(300),
        ended_ns: monotonic_ns(),
        headers: Vec::new(),
    }
}

fn adaptive(c: &mut Criterion) {
    let engine = PolicyEngine::new().expect("engine");
    let mut group = c.benchmark_group("adaptive");
    // (row, policy, weighted, policy-config)
    let rows: [(&str, &str, bool, &str); 6] = [
        ("round-robin", "round-robin", false, ""),
        ("round-robin/eject", "round-robin", false, "eject-after = 5"),
        ("least-request", "least-request", false, ""),
        ("least-request/weighted", "least-request", true, ""),
        ("peak-ewma", "peak-ewma", false, ""),
        (
            "consistent-hash",
            "consistent-hash",
            false,
            "key = \"header:user-agent\"",
        ),
    ];
    for n in [3usize, 16] {
        let st = states(n);
        for (row, name, weighted, config) in rows {
            let up = upstream_with(name, n, weighted, config);
            let policy = load_upstream(&engine, PolicySource::Builtin(name.into()), &up, n);
            let mut req = request(None);
            let names: Vec<Arc<str>> = (0..n).map(|i| format!("backend-{i}").into()).collect();
            if policy.observes() {
                // Every backend has an estimate before the clock starts.
                for name in &names {
                    policy.observe(outcome(name));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                decide(&policy, &mut req, &st);
            }
            group.bench_with_input(BenchmarkId::new(row, n), &n, |b, _| {
                b.iter(|| black_box(decide(&policy, &mut req, black_box(&st))))
            });
            if policy.observes() {
                // As under load: one attempt ends per decision (the push on
                // the response path, and its share of a batched `observe`).
                let mut i = 0;
                group.bench_with_input(
                    BenchmarkId::new(format!("{row}/+outcome"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            i = (i + 1) % n;
                            policy.observe(outcome(&names[i]));
                            black_box(decide(&policy, &mut req, black_box(&st)))
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

fn deadline(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadline");
    for (label, deadlines) in [("on", true), ("off", false)] {
        let engine = PolicyEngine::with_options(EngineOptions { deadlines }).expect("engine");
        for name in ["round-robin", "weighted"] {
            let policy = load(&engine, name, 3);
            let st = states(3);
            let mut req = request(None);
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| black_box(decide(&policy, &mut req, black_box(&st))))
            });
        }
    }
    group.finish();
}

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis(child, port);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shared_state(c: &mut Criterion) {
    let engine = PolicyEngine::new().expect("engine");
    let redis = Redis::start();
    if redis.is_none() {
        eprintln!("shared-state: no redis-server on PATH; the redis rows are skipped");
    }
    let registry = StateRegistry::default();
    let mut group = c.benchmark_group("shared-state");
    for n in [3usize, 16] {
        let st = states(n);
        for name in ["round-robin", "weighted"] {
            let up = upstream(name, n);
            let mut modes = vec![("local", SharedStateMode::Local)];
            if let Some(r) = &redis {
                modes.push((
                    "redis",
                    SharedStateMode::Redis(StateConfig {
                        redis: RedisTarget::Single(format!("redis://127.0.0.1:{}", r.1)),
                        ca: None,
                        counter_block: switchyard::config::DEFAULT_COUNTER_BLOCK,
                        refresh: switchyard::config::DEFAULT_STATE_REFRESH,
                    }),
                ));
            }
            for (label, mode) in modes {
                let state = registry.get(&format!("{name}-{n}-{label}"), &mode);
                let source = PolicySource::Builtin(name.into());
                let policy = load_on(&engine, source, &up, n, state);
                // Let the first block arrive, as it has by the first request.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut req = request(None);
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}/{label}"), n),
                    &n,
                    |b, _| b.iter(|| black_box(decide(&policy, &mut req, black_box(&st)))),
                );
            }
        }
    }
    group.finish();
    if let Some(status) = registry.redis_status() {
        eprintln!("shared-state: redis up {}, errors {}", status.0, status.1);
    }
}

criterion_group!(benches, decision, adaptive, deadline, shared_state);
criterion_main!(benches);
