//! Shadow policies and decision traces seen from outside: a candidate
//! policy (`shadow-policy`) asked beside the live one is only counted and
//! never routes (nor slows, nor fails) a request, even when it is hostile;
//! it is asked about a `shadow-sample` share of decisions; its file is
//! hot-swapped like a live policy's; `[admin] decisions = N` keeps what
//! each decision saw, chose and came to for `GET /decisions`; and mistakes
//! in the shadow keys are refused with their line.
//!
//! Figures go to standard error past the harness's capture (lines starting
//! with `shadow`), so they show in CI's log even when the tests pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::fixtures::{self, Hostile};

/// A config with an admin API (`admin` lines go under `[admin]`) and one
/// upstream `app` of `backends` under `policy`; `upstream` lines end
/// `[upstreams.app]` (so they may open its sub-tables).
fn config(policy: &str, backends: &[String], admin: &str, upstream: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"
{admin}

[server]
listen = "127.0.0.1:{{port}}"

[upstreams.app]
policy = "{policy}"
backends = [{}]
{upstream}
"#,
        backends.join(", ")
    )
}

/// Backends `a` (weight 3) and `b` (weight 1).
fn three_to_one(a: &Backend, b: &Backend) -> Vec<String> {
    let weighted =
        |x: &Backend, w: u32| format!("{}, weight = {w} }}", x.entry().trim_end_matches('}'));
    vec![weighted(a, 3), weighted(b, 1)]
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Asserts that share `x` of `what` is within `tol` of `want`.
fn near(what: &str, x: f64, want: f64, tol: f64) {
    let (x_pct, want_pct) = (pct(x), pct(want));
    assert!((x - want).abs() <= tol, "{what}: {x_pct} (want {want_pct})");
}

fn failed(samples: &[Sample]) -> usize {
    samples.iter().filter(|s| s.status != 200).count()
}

/// What `/metrics` says of upstream `app`'s decisions: the live policy's
/// (`switchyard_policy_decisions_total`), and the shadow's answers that
/// agreed or not, its failures and its choices of `a` and `b`.
#[derive(Debug, Clone, Copy)]
struct Counts {
    live: f64,
    agree: f64,
    disagree: f64,
    failures: f64,
    a: f64,
    b: f64,
}

impl Counts {
    fn of(proxy: &Proxy) -> Counts {
        let m = proxy.metrics();
        let v = |name: &str, label: &str| {
            let series = format!("switchyard_{name}_total{{upstream=\"app\"{label}}}");
            let mut values = m.lines().filter_map(|l| l.strip_prefix(&series));
            values.find_map(|v| v.trim().parse().ok()).unwrap_or(0.0)
        };
        Counts {
            live: v("policy_decisions", ""),
            agree: v("shadow_decisions", ",agree=\"true\""),
            disagree: v("shadow_decisions", ",agree=\"false\""),
            failures: v("shadow_failures", ""),
            a: v("shadow_backend", ",backend=\"a\""),
            b: v("shadow_backend", ",backend=\"b\""),
        }
    }

    /// What `proxy` counts while `d` passes.
    fn during(proxy: &Proxy, d: Duration) -> Counts {
        let start = Counts::of(proxy);
        std::thread::sleep(d);
        let end = Counts::of(proxy);
        Counts {
            live: end.live - start.live,
            agree: end.agree - start.agree,
            disagree: end.disagree - start.disagree,
            failures: end.failures - start.failures,
            a: end.a - start.a,
            b: end.b - start.b,
        }
    }

    /// Decisions the shadow answered.
    fn answered(&self) -> f64 {
        self.agree + self.disagree
    }

    /// The share of the shadow's answers that chose `a`.
    fn share_a(&self) -> f64 {
        self.a / (self.a + self.b).max(1.0)
    }
}

/// `/status`'s `shadow` of the first upstream.
fn shadow_status(proxy: &Proxy) -> Value {
    proxy.status()["upstreams"][0]["shadow"].clone()
}

/// `GET` an admin path: the status and the JSON body (null if not JSON).
fn admin_json(proxy: &Proxy, path: &str) -> (u16, Value) {
    let r = get(&client(), &proxy.admin_url(path));
    (r.status, serde_json::from_str(&r.body).unwrap_or_default())
}

/// `GET` an admin path: the status and the body's `error`.
fn admin_error(proxy: &Proxy, path: &str) -> (u16, String) {
    let (code, body) = admin_json(proxy, path);
    (code, body["error"].as_str().unwrap_or_default().to_string())
}

/// `GET /decisions` + `query`, which must answer 200: the decisions.
fn decisions(proxy: &Proxy, query: &str) -> Vec<Value> {
    let (code, body) = admin_json(proxy, &format!("/decisions{query}"));
    assert_eq!(code, 200, "{body}");
    body["decisions"].as_array().cloned().unwrap_or_default()
}

/// The paths of decisions `ds`, in order.
fn paths(ds: &[Value]) -> Vec<&str> {
    ds.iter().filter_map(|d| d["path"].as_str()).collect()
}

/// A digest without the `sha256:` prefix `/status` gives the live policy's.
fn bare(digest: &Value) -> String {
    let d = digest.as_str().unwrap_or_default();
    d.strip_prefix("sha256:").unwrap_or(d).to_string()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// The Fréchet bounds of the agreement of two choices between `a` and `b`
/// whose shares of `a` are `p` and `q`: both choose `a` for a share in
/// [max(0, p+q-1), min(p, q)], both `b` for one in [max(0, 1-p-q),
/// min(1-p, 1-q)].
fn frechet(p: f64, q: f64) -> (f64, f64) {
    let lower = (p + q - 1.0).max(0.0) + (1.0 - p - q).max(0.0);
    (lower, p.min(q) + (1.0 - p).min(1.0 - q))
}

#[test]
fn shadow_weighted_behind_round_robin_under_load() {
    let _alone = crate::adaptive::alone();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let upstream = "shadow-policy = \"weighted\"";
    let proxy = Proxy::start(&config("round-robin", &three_to_one(&a, &b), "", upstream));
    let samples = run_clients(&proxy.url("/"), 8, Duration::from_secs(2), no_headers);
    let (c, status) = (Counts::of(&proxy), shadow_status(&proxy));
    let (n, live_a, shadow_a) = (samples.len() as f64, share_of(&samples, "a"), c.share_a());
    let agreement = c.agree / c.answered().max(1.0);
    let (lower, upper) = frechet(live_a, shadow_a);
    let bounds = format!("{} .. {}", pct(lower), pct(upper));
    let (live_pct, shadow_pct, agree_pct) = (pct(live_a), pct(shadow_a), pct(agreement));
    let fails = failed(&samples);
    crate::figures!(
        "shadow weighted behind round-robin: {n} requests, {fails} failed; live a {live_pct}, shadow a {shadow_pct}; {c:?}; agreement {agree_pct} (Fréchet bounds {bounds}); /status {status}"
    );
    assert_eq!(fails, 0, "{:?}", per_backend(&samples));
    near("live share of a", live_a, 0.5, 0.05);
    near("shadow share of a", shadow_a, 0.75, 0.05);
    assert_eq!(c.live, n, "live decisions against requests answered");
    assert_eq!(c.answered(), c.live, "shadow answers against decisions");
    assert_eq!((c.failures, c.a + c.b), (0.0, c.answered()));
    let within = agreement >= lower - 0.02 && agreement <= upper + 0.02;
    assert!(within, "agreement {agree_pct} outside {bounds}");
    assert_eq!(status["policy"], "weighted", "{status}");
    assert_eq!(status["sample"], 1.0, "{status}");
    assert_eq!(status["decisions"].as_f64(), Some(c.answered()), "{status}");
    assert_eq!(status["agreed"].as_f64(), Some(c.agree), "{status}");
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    let shown = status["agreement"].as_f64().expect("agreement");
    assert!((shown - agreement).abs() < 1e-9, "{status}");
}

/// What the shadow's trace says of decision `d`: the kind of its failure,
/// or "none".
fn shadow_failure(d: &Value) -> &str {
    d["shadow"]["failed"].as_str().unwrap_or("none")
}

/// Four clients on `/x` for 2 s through round-robin over two fresh
/// backends, with `shadow` (a hostile fixture) as shadow policy if given,
/// every decision kept: the requests, the counts, `/status`'s `shadow` and
/// the decision traces by what they say of the shadow.
fn hostile_run(shadow: Option<Hostile>) -> (Vec<Sample>, Counts, Value, BTreeMap<String, usize>) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let upstream = shadow.map_or("", |_| "shadow-policy = \"shadow.wasm\"");
    let ab = [a.entry(), b.entry()];
    let text = config("round-robin", &ab, "decisions = 100000", upstream);
    let proxy = Proxy::start_with(&text, |d| {
        if let Some(h) = shadow {
            d.write("shadow.wasm", fixtures::hostile(h));
        }
    });
    let samples = run_clients(&proxy.url("/x"), 4, Duration::from_secs(2), no_headers);
    let kept = decisions(&proxy, "?limit=100000");
    assert_eq!(kept.len(), samples.len(), "one decision per request");
    assert!(kept.iter().all(|d| d["fallback"].is_null()));
    let kinds = tally(kept.iter().map(shadow_failure));
    (samples, Counts::of(&proxy), shadow_status(&proxy), kinds)
}

#[test]
fn a_hostile_shadow_costs_no_request() {
    let _alone = crate::adaptive::alone();
    let (base, ..) = hostile_run(None);
    let plain = LatencyStats::of(&base);
    crate::figures!("shadow none: {plain}");
    assert_eq!(failed(&base), 0, "{:?}", per_backend(&base));
    for h in [Hostile::Loop, Hostile::Trap] {
        let (samples, c, status, kinds) = hostile_run(Some(h));
        let stats = LatencyStats::of(&samples);
        let (fails, live_a) = (failed(&samples), share_of(&samples, "a"));
        let (live_pct, answered, shadow_failures) = (pct(live_a), c.answered(), c.failures);
        crate::figures!(
            "shadow {h:?}: {stats}; {fails} failed, live a {live_pct}; shadow failures {shadow_failures}, answers {answered}; traces say {kinds:?}; /status {status}"
        );
        assert_eq!(fails, 0, "{h:?}: {:?}", per_backend(&samples));
        near(&format!("{h:?}: live share of a"), live_a, 0.5, 0.05);
        assert_eq!(c.live, samples.len() as f64, "{h:?}: live decisions");
        assert_eq!(answered, 0.0, "{h:?}: the shadow never answers on /x");
        assert!(c.failures > 0.0, "{h:?}: no shadow failure counted");
        // Once unhealthy it is skipped, and a skipped shadow is not called:
        // only the calls that failed count, a few per probe.
        assert!(
            c.failures * 10.0 < samples.len() as f64,
            "{h:?}: {} failures counted for {} requests",
            c.failures,
            samples.len()
        );
        assert!(status["failures"].as_u64() > Some(0), "{h:?}: {status}");
        assert_eq!(status["healthy"], false, "{h:?}: {status}");
        // A trace says how the shadow failed, or nothing while it is skipped.
        let named =
            kinds.contains_key(h.kind()) && kinds.keys().all(|k| k == h.kind() || k == "none");
        assert!(named, "{h:?}: {kinds:?}");
        let p50_cap = plain.p50 + Duration::from_millis(2);
        let p99_cap = plain.p99 * 2 + Duration::from_millis(10);
        assert!(stats.p50 <= p50_cap, "{h:?}: {stats} against {plain}");
        assert!(stats.p99 <= p99_cap, "{h:?}: {stats} against {plain}");
    }
}

#[test]
fn shadow_sample_asks_about_a_share_of_decisions() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let upstream = "shadow-policy = \"weighted\"\nshadow-sample = 0.25";
    let ab = [a.entry(), b.entry()];
    let proxy = Proxy::start(&config("round-robin", &ab, "", upstream));
    let (agent, n) = (client(), 800);
    for i in 0..n {
        assert_eq!(get(&agent, &proxy.url(&format!("/s{i}"))).status, 200);
    }
    let (c, status) = (Counts::of(&proxy), shadow_status(&proxy));
    let (asked, share) = (c.answered(), c.answered() / n as f64);
    let (share_pct, failures) = (pct(share), c.failures);
    crate::figures!(
        "shadow sample 0.25: asked about {asked} of {n} decisions ({share_pct}), failures {failures}"
    );
    assert_eq!((c.live, failures), (n as f64, 0.0));
    near("share of decisions asked", share, 0.25, 0.08);
    assert_eq!(status["sample"], 0.25, "{status}");
    assert_eq!(status["decisions"].as_f64(), Some(asked), "{status}");
}

#[test]
fn a_shadow_file_is_swapped_on_change() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let src = TempDir::new("shadow-src");
    let policies = builtin_policies(src.path());
    let (rr, weighted) = (&policies["round-robin"], &policies["weighted"]);
    let upstream = "shadow-policy = \"cand.wasm\"";
    let text = config("round-robin", &three_to_one(&a, &b), "", upstream);
    let proxy = Proxy::start_with(&text, |d| {
        d.write("cand.wasm", weighted);
    });
    let file = proxy.dir.path().join("cand.wasm");
    let digest = || bare(&shadow_status(&proxy)["digest"]);
    assert_eq!(digest(), sha256(weighted));
    assert!(
        shadow_status(&proxy)["policy"]
            .to_string()
            .ends_with("cand.wasm\"")
    );
    let load = Load::start(&proxy.url("/"), 2);
    let before = Counts::during(&proxy, Duration::from_millis(700));

    // Renamed over, as deploy tools do.
    std::fs::write(file.with_extension("tmp"), rr).unwrap();
    std::fs::rename(file.with_extension("tmp"), &file).unwrap();
    let swapped = wait_for(Duration::from_secs(10), || digest() == sha256(rr));
    assert!(swapped, "the shadow was not swapped:\n{}", proxy.log());
    let after = Counts::during(&proxy, Duration::from_millis(700));

    std::fs::write(&file, fixtures::random_bytes(4096)).unwrap();
    let refused = |l: &str| l.contains("shadow policy") && l.contains("refused");
    let logged = wait_for(Duration::from_secs(10), || proxy.log().lines().any(refused));
    let garbage = Counts::during(&proxy, Duration::from_millis(500));
    let (sent, failures) = load.stop();
    let (was, now) = (pct(before.share_a()), pct(after.share_a()));
    let (n_was, n_now, n_garbage) = (before.answered(), after.answered(), garbage.answered());
    let (garbage_failures, failed) = (garbage.failures, failures.len());
    crate::figures!(
        "shadow swap: weighted shadow a {was} of {n_was} answers; round-robin shadow a {now} of {n_now}; after garbage {n_garbage} answers, {garbage_failures} failures; {sent} requests, {failed} failed"
    );
    assert!(logged, "no refusal logged:\n{}", proxy.log());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(n_was > 20.0 && n_now > 20.0);
    near("weighted shadow's share of a", before.share_a(), 0.75, 0.05);
    near("rr shadow's share of a", after.share_a(), 0.5, 0.05);
    // The old shadow stays, and keeps answering.
    assert_eq!(digest(), sha256(rr));
    assert!(n_garbage > 0.0 && garbage_failures == 0.0);
}

/// The outcomes of decision trace `d`.
fn outcomes(d: &Value) -> &[Value] {
    d["outcome"].as_array().map_or(&[], Vec::as_slice)
}

/// Checks that outcome `o` is attempt `attempt` of its request, served by
/// `backend` (`None`: refused by `dead`).
fn attempt(o: &Value, backend: Option<&str>, attempt: u32) {
    let (name, status, failure) = match backend {
        Some(b) => (b, json!(200), Value::Null),
        None => ("dead", Value::Null, json!("connect")),
    };
    assert_eq!(o["backend"], name, "{o}");
    assert_eq!(o["attempt"], attempt, "{o}");
    assert_eq!(o["status"], status, "{o}");
    assert_eq!(o["failure"], failure, "{o}");
    assert_eq!(o["headers_ms"].is_f64(), backend.is_some(), "{o}");
}

/// Checks one trace of a request `backend` answered at once, on
/// `consistent-hash` (with `digest`) with the key header if `keyed`.
fn check_trace(d: &Value, digest: &str, backend: &str, keyed: bool) {
    let reason = (!keyed).then_some("no key: fallback");
    assert_eq!(d["reason"].as_str(), reason, "{d}");
    assert_eq!(d["fallback"], Value::Null, "{d}");
    assert_eq!(d["method"], "GET", "{d}");
    assert_eq!(d["policy"], "consistent-hash", "{d}");
    assert_eq!(d["digest"], digest, "{d}");
    assert_eq!(d["attempt"], 1, "{d}");
    assert!(d["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
    assert!(d["host"].to_string().contains("127.0.0.1"), "{d}");
    assert_eq!(d["candidates"], json!([backend]), "{d}");
    assert_eq!(outcomes(d).len(), 1, "{d}");
    attempt(&outcomes(d)[0], Some(backend), 1);
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let seen = &d["backends"][i];
        assert_eq!(seen["name"], name, "{d}");
        assert_eq!(seen["healthy"], true, "{d}");
        let numbers = seen["in_flight"].is_u64() && seen["latency_ewma_us"].is_u64();
        assert!(numbers, "{d}");
    }
    let shadow = d["shadow"]["backend"].as_str().unwrap_or_default();
    assert!(shadow == "a" || shadow == "b", "{d}");
}

#[test]
fn decisions_show_what_the_policy_saw_and_its_reason() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let upstream =
        "shadow-policy = \"round-robin\"\n\n[upstreams.app.policy-config]\nkey = \"header:x-user\"";
    let ab = [a.entry(), b.entry()];
    let proxy = Proxy::start(&config("consistent-hash", &ab, "decisions = 5", upstream));
    let (agent, keyed) = (client(), [true, true, false, true, false]);
    let answered: Vec<String> = (0..5)
        .map(|i| {
            let (user, url) = (format!("user-{i}"), proxy.url(&format!("/p{i}")));
            let header = [("x-user", user.as_str())];
            get_with(&agent, &url, &header[..usize::from(keyed[i])]).body
        })
        .collect();
    // `sha256:HEX`, as /status gives it.
    let digest = proxy.status()["upstreams"][0]["policy"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, body) = admin_json(&proxy, "/decisions?upstream=app&limit=10");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (&body["upstream"], &body["kept"]),
        (&json!("app"), &json!(5))
    );
    let shown = body["decisions"].as_array().expect("decisions");
    assert_eq!(paths(shown), ["/p4", "/p3", "/p2", "/p1", "/p0"], "{body}");
    for (d, i) in shown.iter().zip((0..5).rev()) {
        check_trace(d, &digest, &answered[i], keyed[i]);
    }
    // The shadow round-robin takes its own turns, one per decision.
    let turns: Vec<&Value> = shown.iter().map(|d| &d["shadow"]["backend"]).collect();
    assert!(turns.windows(2).all(|w| w[0] != w[1]), "{turns:?}");
    crate::figures!("shadow decisions: newest {}", shown[0]);

    for i in 5..15 {
        get(&agent, &proxy.url(&format!("/p{i}")));
    }
    let kept = decisions(&proxy, "");
    assert_eq!(paths(&kept), ["/p14", "/p13", "/p12", "/p11", "/p10"]);
    assert_eq!(decisions(&proxy, "?upstream=app&limit=2").len(), 2);
    assert_eq!(decisions(&proxy, "?limit=0").len(), 0);
    let (code, error) = admin_error(&proxy, "/decisions?upstream=app&limit=x");
    assert!(code == 400 && error.contains("limit=x"), "{code} {error}");
    let (code, error) = admin_error(&proxy, "/decisions?upstream=nope");
    assert!(code == 404 && error.contains("nope"), "{code} {error}");

    // Without `[admin] decisions`, nothing is kept, and the answer says
    // what to set.
    let plain = Proxy::start(&config("round-robin", &[a.entry()], "", ""));
    get(&agent, &plain.url("/"));
    let (code, error) = admin_error(&plain, "/decisions?upstream=app");
    assert!(
        code == 404 && error.contains("[admin] decisions"),
        "{code} {error}"
    );
    assert!(plain.status()["upstreams"][0].get("shadow").is_none());
}

#[test]
fn decisions_are_kept_per_upstream() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let api = format!(
        "\n[upstreams.api]\npolicy = \"weighted\"\nbackends = [{}]\n\n[[routes]]\npath-prefix = \"/api\"\nupstream = \"api\"\n\n[[routes]]\nupstream = \"app\"",
        b.entry()
    );
    let proxy = Proxy::start(&config("round-robin", &[a.entry()], "decisions = 10", &api));
    let agent = client();
    for path in ["/api/1", "/web/1", "/api/2"] {
        assert_eq!(get(&agent, &proxy.url(path)).status, 200);
    }
    let api = decisions(&proxy, "?upstream=api");
    assert_eq!(paths(&api), ["/api/2", "/api/1"]);
    let by_weighted = |d: &Value| d["policy"] == "weighted" && d["candidates"] == json!(["b"]);
    assert!(api.iter().all(by_weighted), "{api:?}");
    let app = decisions(&proxy, "?upstream=app");
    assert_eq!(paths(&app), ["/web/1"]);
    assert_eq!(app[0]["shadow"], Value::Null, "no shadow: {}", app[0]);
    // With two upstreams, one must be named.
    let (code, error) = admin_error(&proxy, "/decisions");
    let both = error.contains("app") && error.contains("api");
    assert!(code == 400 && both, "{code} {error}");
}

/// `tests/fixtures/v0.2/learner` (a Python policy that, with `rank =
/// "true"`, answers the first healthy backend and ranks the others after
/// it) built into `dir`.
fn ranking_policy(dir: &TempDir) -> PathBuf {
    require_python("componentize_py");
    let app = repo().join("tests/fixtures/v0.2/learner/app.py");
    std::fs::copy(app, dir.path().join("app.py")).unwrap();
    let out = tool("componentize-py")
        .current_dir(dir.path())
        .arg("-d")
        .arg(repo().join("wit"))
        .args(["-w", "adaptive-policy", "componentize", "app"])
        .args(["-o", "policy.wasm"])
        .output()
        .expect("componentize-py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "componentize-py: {stderr}");
    dir.path().join("policy.wasm")
}

/// Six requests to a proxy with `retries = 1` and `max-fails = 0` over a
/// stopped backend `dead` and `b`, under `policy` (with `policy-config`
/// lines `pc`): each is served by `b`. The decisions kept, newest first.
fn dead_first(policy: &str, pc: &str, prepare: impl FnOnce(&TempDir)) -> Vec<Value> {
    let (b, mut dead) = (Backend::start("b"), Backend::start("dead"));
    dead.stop();
    let upstream = format!(
        "retries = 1\nmax-fails = 0\npolicy-timeout = \"200ms\"\npolicy-memory = \"128MiB\"\n\n[upstreams.app.policy-config]\n{pc}"
    );
    let entries = [dead.entry(), b.entry()];
    let text = config(policy, &entries, "decisions = 20", &upstream);
    let proxy = Proxy::start_with(&text, prepare);
    let agent = client();
    for i in 0..6 {
        let r = get(&agent, &proxy.url(&format!("/r{i}")));
        assert_eq!((r.status, r.body.as_str()), (200, "b"), "{}", proxy.log());
    }
    decisions(&proxy, "?upstream=app")
}

#[test]
fn a_decision_trace_records_every_attempt() {
    // A policy that ranks: one decision, both attempts on it.
    let dir = TempDir::new("ranking");
    let wasm = ranking_policy(&dir);
    let shown = dead_first("policy.wasm", "rank = \"true\"", |d| {
        std::fs::copy(&wasm, d.path().join("policy.wasm")).unwrap();
    });
    crate::figures!("shadow ranked trace: {}", shown[0]);
    assert_eq!(paths(&shown), ["/r5", "/r4", "/r3", "/r2", "/r1", "/r0"]);
    for d in &shown {
        assert_eq!(d["candidates"], json!(["dead", "b"]), "{d}");
        assert_eq!(d["reason"], "first healthy, then the others", "{d}");
        assert_eq!(d["attempt"], 1, "{d}");
        assert_eq!(outcomes(d).len(), 2, "{d}");
        attempt(&outcomes(d)[0], None, 1);
        attempt(&outcomes(d)[1], Some("b"), 2);
    }

    // Round-robin is asked again for the retry (a decision of its own, on
    // which the dead backend shows as tried); each request's attempts are
    // all there, in order.
    let shown = dead_first("round-robin", "", |_| {});
    crate::figures!("shadow retried traces: {} then {}", shown[1], shown[0]);
    for i in 0..6 {
        let path = format!("/r{i}");
        let mine: Vec<&Value> = shown.iter().filter(|d| d["path"] == path).collect();
        let tried: Vec<&Value> = mine.iter().rev().flat_map(|d| outcomes(d)).collect();
        assert_eq!(tried.len(), 2, "{mine:?}");
        attempt(tried[0], None, 1);
        attempt(tried[1], Some("b"), 2);
        for retry in mine.iter().filter(|d| d["attempt"] == 2) {
            assert_eq!(retry["backends"][0]["healthy"], false, "{retry}");
        }
    }
}

/// `switchyard check` refuses `config` at `line` for all of `reasons`.
fn refused_in(config: &str, line: usize, reasons: &[&str]) {
    let (ok, text, path) = check_with(config, |_| {});
    assert!(!ok, "check accepted a broken config:\n{text}");
    let at = format!("{path}:{line}:");
    assert!(text.contains(&at), "no {at} in:\n{text}");
    for reason in reasons {
        assert!(text.contains(reason), "no {reason:?} in:\n{text}");
    }
}

/// Round-robin over one backend, then `extra` from line 9 on.
fn checked(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:18080\"\n\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [\n  {{ name = \"a\", address = \"127.0.0.1:19001\" }},\n]\n{extra}\n"
    )
}

fn refused(extra: &str, line: usize, reasons: &[&str]) {
    refused_in(&checked(extra), line, reasons);
}

#[test]
fn shadow_config_mistakes_are_refused_with_their_line() {
    let share = "upstreams.app.shadow-sample: give a share above 0 and at most 1";
    for s in ["0", "1.5", "-0.25", "nan"] {
        let extra = format!("shadow-policy = \"weighted\"\nshadow-sample = {s}");
        refused(&extra, 10, &[share]);
    }
    let none = "there is no shadow-policy";
    refused("shadow-sample = 0.5", 9, &["app.shadow-sample", none]);
    let table = "\n[upstreams.app.shadow-policy-config]\nkey = \"x\"";
    refused(table, 10, &["app.shadow-policy-config", none]);
    let at = "upstreams.app.shadow-policy";
    let unknown = "\"wieghted\" is not a built-in policy";
    refused("shadow-policy = \"wieghted\"", 9, &[at, unknown]);
    let native = "the only native policy is native:round-robin";
    refused("shadow-policy = \"native:least\"", 9, &[at, native]);
    refused("shadow-policy = \"cand.wasm\"", 9, &[at, "cannot read"]);
    // The shadow's own config is checked by the shadow, and reported at
    // its `shadow-policy`.
    let sticky = "shadow-policy = \"sticky-session\"\n\n[upstreams.app.shadow-policy-config]\nsame-site = \"x\"";
    refused(sticky, 9, &[at, "policy-config.same-site"]);
    let admin = "[admin]\nlisten = \"127.0.0.1:9901\"\ndecisions = 100001\n\n".to_string();
    refused_in(
        &(admin + &checked("")),
        3,
        &["admin.decisions: at most 100000"],
    );
    // And what is right passes.
    for good in [
        "shadow-policy = \"weighted\"\nshadow-sample = 1",
        "shadow-policy = \"native:round-robin\"\nshadow-sample = 0.01",
    ] {
        let (ok, text, _) = check_with(&checked(good), |_| {});
        assert!(ok, "{good}:\n{text}");
    }
}
