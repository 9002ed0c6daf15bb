//! Policies in five languages: each template builds with its toolchain,
//! passes `switchyard check`, and splits canary traffic exactly behind the
//! real proxy; `switchyard policy new` output does the same unchanged.
//! Python in particular: hot-swapped in under load without a failed or
//! stalled request, loaded from the precompiled cache in milliseconds, and
//! sandboxed (no files). JavaScript gets no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

pub fn template(lang: &str) -> PathBuf {
    repo().join("plugins/examples").join(lang)
}

/// Runs `dir/build.sh`; returns the policy it wrote.
pub fn build(dir: &Path) -> PathBuf {
    let out = tool("bash")
        .arg(dir.join("build.sh"))
        .env("SWITCHYARD", BIN)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}/build.sh failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = dir.join("policy.wasm");
    assert!(
        wasm.is_file(),
        "{} did not write policy.wasm",
        dir.display()
    );
    wasm
}

/// Three backends, one of them a canary, behind `policy`.
pub fn canary_config(policy: &Path, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"
{extra}

[upstreams.app]
policy = "{}"
# Interpreted runtimes need more than the defaults (4 MiB, 1 ms); the
# generous deadline also absorbs this debug build on a busy CI machine.
policy-memory = "128MiB"
policy-timeout = "100ms"
backends = [{}]
"#,
        policy.display(),
        list.join(", ")
    )
}

/// `canary_config` as a user writes it for a generated policy: the path
/// and the backends, no limits (the component states its own).
fn only_path_config(policy: &Path, backends: &[&Backend]) -> String {
    let config = canary_config(policy, backends, "");
    let trimmed: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("policy-memory") && !l.starts_with("policy-timeout"))
        .filter(|l| !l.starts_with("# Interpreted") && !l.starts_with("# generous"))
        .collect();
    trimmed.join("\n")
}

/// Runs `switchyard check` on `config`; returns what it printed.
fn check(config: &str) -> String {
    let dir = TempDir::new("lang-check");
    let path = dir.write(
        "switchyard.toml",
        config.replace("{port}", "0").replace("{admin}", "0"),
    );
    let out = check_config(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "check failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// 12 canary requests and 12 others: all canary ones to the canary, the
/// others alternating exactly between the two stable backends.
pub fn assert_canary_split(proxy: &Proxy) {
    let agent = client();
    let mut canary = BTreeMap::new();
    let mut stable = Vec::new();
    for _ in 0..12 {
        let r = get_with(&agent, &proxy.url("/"), &[("x-canary", "1")]);
        assert_eq!(r.status, 200);
        *canary.entry(r.body).or_insert(0) += 1;
        let r = get(&agent, &proxy.url("/"));
        stable.push(r.body);
    }
    assert_eq!(
        canary,
        BTreeMap::from([("canary-1".to_string(), 12)]),
        "{}",
        proxy.log()
    );
    let first = stable[0].clone();
    let second = if first == "stable-1" {
        "stable-2"
    } else {
        "stable-1"
    };
    for (i, b) in stable.iter().enumerate() {
        assert_eq!(b, if i % 2 == 0 { &first } else { second }, "{stable:?}");
    }
    assert_eq!(
        proxy.metric("switchyard_policy_decisions_total{upstream=\"app\"}"),
        24.0,
        "the policy did not decide every request:\n{}",
        proxy.metrics()
    );
}

fn backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("stable-1"),
        Backend::start("canary-1"),
        Backend::start("stable-2"),
    )
}

fn language(lang: &str) {
    match lang {
        "python" => require_python("componentize_py"),
        "js" => assert!(
            template("js")
                .join("node_modules/@bytecodealliance/componentize-js")
                .is_dir(),
            "no node_modules in plugins/examples/js: run ./test.sh, which runs npm ci there"
        ),
        _ => {}
    }
    let wasm = build(&template(lang));
    let (s1, c1, s2) = backends();
    let config = canary_config(&wasm, &[&s1, &c1, &s2], "");
    check(&config);
    let proxy = Proxy::start(&config);
    assert_canary_split(&proxy);
}

#[test]
fn rust_canary() {
    language("rust");
}

#[test]
fn python_canary() {
    language("python");
}

#[test]
fn javascript_canary() {
    language("js");
}

#[test]
fn c_canary() {
    language("c");
}

#[test]
fn wat_canary() {
    language("wat");
}

#[test]
fn policy_new_output_builds_and_checks_unchanged() {
    let dir = TempDir::new("scaffold");
    for lang in ["rust", "python", "js", "c", "wat"] {
        if lang == "python" {
            require_python("componentize_py");
        }
        let project = dir.path().join(format!("my-{lang}-policy"));
        let out = sy()
            .args(["policy", "new", "--lang", lang])
            .arg(&project)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if lang == "js" {
            // Reuse the template's packages rather than download them again.
            std::os::unix::fs::symlink(
                template("js").join("node_modules"),
                project.join("node_modules"),
            )
            .unwrap();
        }
        let mut cmd = tool("bash");
        cmd.arg(project.join("build.sh")).env("SWITCHYARD", BIN);
        if lang == "wat" {
            // No switchyard on PATH nor in $SWITCHYARD: build.sh uses the
            // one that wrote the project.
            cmd.env_remove("SWITCHYARD").env("PATH", "/usr/bin:/bin");
        }
        if lang == "rust" {
            // Share compiled dependencies with the template's build.
            cmd.env("CARGO_TARGET_DIR", template("rust").join("target"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{lang}: build.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The config names only the policy's path: an interpreted policy
        // runs under the limits its build.sh stated.
        let (s1, c1, s2) = backends();
        let config = only_path_config(&project.join("policy.wasm"), &[&s1, &c1, &s2]);
        let said = check(&config);
        if lang == "python" || lang == "js" {
            assert!(
                said.contains("limits: memory 64.0 MiB (asked for by the policy), timeout 10ms (asked for by the policy)"),
                "{lang}: {said}"
            );
            assert_canary_split(&Proxy::start(&config));
        }
    }
}

#[test]
fn python_hot_swaps_in_under_load_without_stalling_anyone() {
    require_python("componentize_py");
    let python = build(&template("python"));
    let (s1, c1, s2) = backends();
    let dir = TempDir::new("py-swap-src");
    let rr = builtin_policies(dir.path()).remove("round-robin").unwrap();
    // A cache of its own: the first Python compile happens during the swap.
    let config = canary_config(
        Path::new("policy.wasm"),
        &[&s1, &c1, &s2],
        "cache-dir = \"cache\"",
    );
    let proxy = Proxy::start_with(&config, |d| {
        d.write("policy.wasm", &rr);
    });
    let load = Load::start(&proxy.url("/"), 8);
    // A probe that runs for the whole swap (the compile takes seconds):
    // the slowest of its requests.
    let done = Arc::new(AtomicBool::new(false));
    let slowest = {
        let (url, done) = (proxy.url("/"), done.clone());
        std::thread::spawn(move || {
            let agent = client();
            let mut worst = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(get(&agent, &url).status, 200);
                worst = worst.max(t.elapsed());
            }
            worst
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let tmp = proxy.dir.path().join("policy.wasm.new");
    std::fs::copy(&python, &tmp).unwrap();
    std::fs::rename(&tmp, proxy.dir.path().join("policy.wasm")).unwrap();
    let swapped = wait_for(Duration::from_secs(120), || {
        proxy.log().contains("swapped in")
    });
    done.store(true, Ordering::Relaxed);
    let worst = slowest.join().unwrap();
    let (total, failures) = load.stop();
    assert!(swapped, "{}", proxy.log());
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    // The swap's own load (compile, instances, dry run) against the worst
    // wait a request saw meanwhile: a request stalled by it would have
    // waited about as long.
    let swap_ms = proxy
        .log()
        .lines()
        .filter(|l| l.contains(" loaded in "))
        .filter_map(|l| {
            l.split("loaded in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .next_back()
        .unwrap_or(0.0);
    assert!(
        worst.as_secs_f64() * 1000.0 * 10.0 < swap_ms,
        "a request waited {worst:?} during a swap that took {swap_ms} ms"
    );
    let compiled = proxy
        .log()
        .lines()
        .find(|l| l.contains("swapped in"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(!compiled.is_empty());
    // After the swap the Python policy routes.
    let agent = client();
    for _ in 0..4 {
        assert_eq!(
            get_with(&agent, &proxy.url("/"), &[("x-canary", "1")]).body,
            "canary-1"
        );
    }
}

/// Milliseconds from the "policy ... loaded in N ms" log line.
fn load_ms(log: &str) -> f64 {
    log.lines()
        .find_map(|l| {
            l.split("loaded in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("a 'loaded in' line")
}

#[test]
fn a_cached_python_policy_loads_far_faster_than_a_cold_one() {
    require_python("componentize_py");
    let python = build(&template("python"));
    let (s1, c1, s2) = backends();
    let cache = TempDir::new("py-cache");
    let config = canary_config(
        &python,
        &[&s1, &c1, &s2],
        &format!("cache-dir = \"{}\"", cache.path().display()),
    );
    let first = Proxy::start_cold(&config);
    let cold = load_ms(&first.log());
    drop(first);
    let second = Proxy::start(&config);
    let warm = load_ms(&second.log());
    // The speed itself is measured by `cargo bench --bench languages`; here
    // only the ratio, with a wide margin (about 1000x on a quiet machine).
    assert!(
        cold > 20.0 * warm,
        "cached load took {warm} ms, cold {cold} ms"
    );
    assert_canary_split(&second);
    eprintln!("python policy load: cold {cold:.0} ms, cached {warm:.1} ms");
    drop(second);

    // A corrupt cache entry is noticed, ignored and rebuilt.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let third = Proxy::start_cold(&config);
    assert!(
        third.log().contains("ignoring corrupt policy cache entry"),
        "{}",
        third.log()
    );
    assert_canary_split(&third);
}

/// A copy of a template's files (its `node_modules` linked), to build
/// apart from the template itself. Not for Rust (its SDK path is
/// relative).
pub fn copy_of(lang: &str) -> TempDir {
    let dir = TempDir::new(&format!("{lang}-copy"));
    for entry in std::fs::read_dir(template(lang)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let path = entry.path();
        if name == "node_modules" {
            std::os::unix::fs::symlink(&path, dir.path().join(&name)).unwrap();
        } else if path.is_file() && name != "policy.wasm" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// Builds a variant of a template with `from` replaced by `to` in `file`.
fn variant(lang: &str, file: &str, from: &str, to: &str) -> (TempDir, PathBuf) {
    let dir = copy_of(lang);
    let src = std::fs::read_to_string(dir.path().join(file)).unwrap();
    assert!(src.contains(from), "{file} has no {from:?}");
    dir.write(file, src.replace(from, to));
    let wasm = build(dir.path());
    (dir, wasm)
}

/// Requests with `header` make the policy try something forbidden: each
/// still gets a 200 from a backend (the fallback), and the failure is
/// counted.
fn forbidden_is_contained(wasm: &Path, header: &str) -> Proxy {
    let (s1, c1, s2) = backends();
    // A deadline no busy machine reaches: the failures counted below are
    // the forbidden call failing, never the clock.
    let config = canary_config(wasm, &[&s1, &c1, &s2], "")
        .replace("policy-timeout = \"100ms\"", "policy-timeout = \"2s\"");
    let proxy = Proxy::start(&config);
    let agent = client();
    // Serving the canary: an instance of the policy is ready (a trapped
    // one is replaced in the background; meanwhile the fallback serves,
    // and its round-robin may pick the canary too: only a decision the
    // policy counted proves an instance).
    let canary = || get_with(&agent, &proxy.url("/"), &[("x-canary", "1")]).body;
    let decisions = || proxy.metric("switchyard_policy_decisions_total{upstream=\"app\"}");
    let decided = || {
        let before = decisions();
        canary() == "canary-1" && decisions() > before
    };
    let ready = || wait_for(Duration::from_secs(20), &decided);
    for _ in 0..3 {
        assert!(ready(), "{}", proxy.log());
        let r = get_with(&agent, &proxy.url("/"), &[(header, "1")]);
        assert_eq!(r.status, 200, "{}", proxy.log());
    }
    let failures: f64 = ["trap", "error"]
        .iter()
        .map(|k| {
            proxy.metric(&format!(
                "switchyard_policy_failures_total{{upstream=\"app\",kind=\"{k}\"}}"
            ))
        })
        .sum();
    assert_eq!(failures, 3.0, "{}", proxy.metrics());
    // Without the header the policy still works: once every worker thread
    // has a fresh instance again, the canary gets every canary request. (A
    // request on a thread whose instance trapped goes through the fallback
    // until the background refill hands that thread a spare, so `ready()`
    // on one thread does not prove the next request's thread is ready.)
    let five_in_a_row = || (0..5).all(|_| canary() == "canary-1");
    assert!(
        wait_for(Duration::from_secs(20), five_in_a_row),
        "{}",
        proxy.log()
    );
    proxy
}

#[test]
fn a_python_policy_cannot_open_files() {
    require_python("componentize_py");
    let (_dir, wasm) = variant(
        "python",
        "app.py",
        "        want = request.header(\"x-canary\") == \"1\"",
        "        if request.header(\"x-read-file\") is not None:\n            with open(\"/etc/hostname\") as f:\n                f.read()\n        want = request.header(\"x-canary\") == \"1\"",
    );
    let proxy = forbidden_is_contained(&wasm, "x-read-file");
    assert!(proxy.log().contains("/etc/hostname"), "{}", proxy.log());
}

#[test]
fn a_javascript_policy_has_no_network() {
    let (_dir, wasm) = variant(
        "js",
        "policy.js",
        "    const want = header(\"x-canary\") === \"1\";",
        "    if (header(\"x-fetch\") !== undefined) {\n      fetch(\"http://127.0.0.1:9/\");\n    }\n    const want = header(\"x-canary\") === \"1\";",
    );
    forbidden_is_contained(&wasm, "x-fetch");
}
