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
//! - `deadline`: the same decision with the epoch-deadline machinery on and
//!   off (an engine built without epoch interruption), to show its cost.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::config::{Config, PolicySource, UpstreamConfig};
use switchyard::policy::{
    BackendState, Decision, EngineOptions, Policy, PolicyEngine, RequestView, RoundRobin,
    SharedState, WasmPolicy,
};

/// An upstream of `n` backends with weights 1, 2, 3, 1, 2, 3...
fn upstream(policy: &str, n: usize) -> UpstreamConfig {
    let backends: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ name = \"backend-{i}\", address = \"127.0.0.1:{}\", weight = {} }}",
                9000 + i,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.bench]\npolicy = \"{policy}\"\nbackends = [{}]\n",
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
    let compiled = engine.compile(&source).expect("the policy compiles");
    WasmPolicy::load(
        engine,
        compiled,
        &upstream(name, n),
        Arc::new(SharedState::default()),
        &states(n),
        1,
    )
    .expect("built-in loads")
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

criterion_group!(benches, decision, deadline);
criterion_main!(benches);
