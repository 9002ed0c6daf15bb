//! The same canary policy in five languages, side by side: component size,
//! load time (cold compile, and from the precompiled cache), and the cost
//! of one decision.
//!
//! Build the templates first (`bench/languages.sh` does, and times the
//! builds), then `cargo bench -p switchyard --bench languages`. Languages
//! whose `plugins/examples/<lang>/policy.wasm` is missing are skipped.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::config::{Config, PolicySource, UpstreamConfig};
use switchyard::policy::{
    BackendState, Policy, PolicyEngine, RequestView, SharedState, WasmPolicy,
};

const LANGS: [&str; 5] = ["rust", "python", "js", "c", "wat"];

fn policy_file(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples")
        .join(lang)
        .join("policy.wasm")
}

fn upstream(path: &Path) -> UpstreamConfig {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[upstreams.bench]
policy = "{}"
policy-memory = "256MiB"
policy-timeout = "1s"
backends = [
  {{ name = "stable-1", address = "127.0.0.1:9001" }},
  {{ name = "canary-1", address = "127.0.0.1:9002" }},
  {{ name = "stable-2", address = "127.0.0.1:9003" }},
]
"#,
        path.display()
    );
    Config::parse(Path::new("bench.toml"), &text)
        .expect("bench config")
        .upstreams
        .remove(0)
}

fn states() -> Vec<BackendState> {
    vec![
        BackendState {
            healthy: true,
            ..BackendState::default()
        };
        3
    ]
}

fn request(canary: bool) -> RequestView {
    let mut b = http::Request::builder()
        .method("GET")
        .uri("/api/users")
        .header("host", "shop.example")
        .header("user-agent", "bench/1.0");
    if canary {
        b = b.header("x-canary", "1");
    }
    RequestView {
        parts: b.body(()).unwrap().into_parts().0,
        client_ip: IpAddr::from([203, 0, 113, 7]),
        https: false,
        attempt: 1,
    }
}

/// Compiles (or loads from `cache`) and configures the policy; the time it took.
fn load(path: &Path, cache: Option<&Path>) -> (WasmPolicy, Duration) {
    let engine = PolicyEngine::new().expect("engine");
    engine.set_cache_dir(cache.map(Path::to_path_buf));
    let started = Instant::now();
    let compiled = engine
        .compile(&PolicySource::File(path.to_path_buf()))
        .expect("policy compiles");
    let policy = WasmPolicy::load(
        &engine,
        compiled,
        &upstream(path),
        Arc::new(SharedState::default()),
        &states(),
        1,
    )
    .expect("policy loads");
    (policy, started.elapsed())
}

fn languages(c: &mut Criterion) {
    let cache = std::env::temp_dir().join(format!("switchyard-bench-cache-{}", std::process::id()));
    let mut table = Vec::new();
    let mut group = c.benchmark_group("language");
    for lang in LANGS {
        let path = policy_file(lang);
        let Ok(meta) = std::fs::metadata(&path) else {
            eprintln!("{lang}: no {}, skipped (run its build.sh)", path.display());
            continue;
        };
        let (_, cold) = load(&path, None);
        let _ = load(&path, Some(&cache)); // fills the cache
        let (policy, cached) = load(&path, Some(&cache));
        let st = states();
        let mut req = request(false);
        group.bench_function(lang, |b| {
            b.iter(|| {
                let d = policy.select(&mut req, black_box(&st)).unwrap();
                policy.settle(Ok(()));
                black_box(d)
            })
        });
        table.push((lang, meta.len(), cold, cached));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&cache);
    println!("\n| language | component | load, cold | load, cached |");
    println!("| --- | --- | --- | --- |");
    for (lang, size, cold, cached) in table {
        println!(
            "| {lang} | {:.1} KB | {:.0} ms | {:.1} ms |",
            size as f64 / 1024.0,
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = languages
}
criterion_main!(benches);
