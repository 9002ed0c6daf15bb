//! Policy state shared through Redis (`shared-state = "redis"`), against a
//! real `redis-server` each test starts on a free loopback port: two
//! proxies see each other's key-value writes within a second, a shared
//! counter is handed out once across both, the unchanged Rust template
//! runs on either kind of state, and killing Redis under load fails no
//! request and resynchronises when it is back. The helpers here serve
//! `shared_state_tls` and `shared_state_cluster` too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::languages;

/// A free port on 127.0.0.1 (the kernel's pick).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` on 127.0.0.1 with no persistence, killed on drop.
pub(crate) struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// More `redis-server` arguments (TLS files, cluster mode).
    args: Vec<String>,
    /// What `redis-cli` needs besides the port to reach it (TLS).
    cli_args: Vec<String>,
    /// Serves TLS only, on `port`.
    tls: bool,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Redis::start_with(free_port(), false, Vec::new(), Vec::new())
    }

    /// A server on `port` with more `args`; `tls`: TLS only on that port
    /// (the args name the files), `cli_args` for `redis-cli` to reach it.
    pub(crate) fn start_with(
        port: u16,
        tls: bool,
        args: Vec<String>,
        cli_args: Vec<String>,
    ) -> Redis {
        let mut r = Redis {
            child: None,
            port,
            args,
            cli_args,
            tls,
        };
        r.restart();
        r
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port, empty, and waits until it answers.
    fn restart(&mut self) {
        let port = self.port.to_string();
        let ports = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run ./test.sh, which installs it")
            });
        self.child = Some(child);
        assert!(
            wait_for(Duration::from_secs(10), || self.cli(&["PING"]) == "PONG"),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli` with `args`; its output, trimmed.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_args)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tests/fixtures/v0.2/sessions` built (once per run): learns sessions
/// in the key-value store, round-robins over the shared counter `turn`.
pub(crate) fn sessions_policy() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::env::temp_dir().join(format!(
                "switchyard-e2e-sessions-{}.wasm",
                std::process::id()
            ));
            let built = tool("bash")
                .arg(repo().join("tests/fixtures/v0.2/sessions/build.sh"))
                .arg(&out)
                .env("SWITCHYARD", BIN)
                .output()
                .expect("bash");
            assert!(
                built.status.success(),
                "sessions/build.sh failed:\n{}",
                String::from_utf8_lossy(&built.stderr)
            );
            out
        })
        .clone()
}

/// One upstream `app` under `policy`; its state in `redis` if given.
fn config(policy: &Path, backends: &[&Backend], redis: Option<&Redis>, block: u64) -> String {
    let state = redis.map(|r| format!("redis = \"{}\"\ncounter-block = {block}", r.url()));
    config_with(policy, backends, state.as_deref())
}

/// One upstream `app` under `policy`; with `state` (the lines of a
/// `[state]` section), its state is shared through that Redis.
pub(crate) fn config_with(policy: &Path, backends: &[&Backend], state: Option<&str>) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    let (state, shared) = match state {
        Some(s) => (format!("[state]\n{s}\n"), "redis"),
        None => (String::new(), "local"),
    };
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"

{state}
[upstreams.app]
policy = "{}"
shared-state = "{shared}"
policy-timeout = "100ms"
backends = [{}]
"#,
        policy.display(),
        list.join(", ")
    )
}

/// The `sy-session` cookie's value: `known` or `new-N`.
pub(crate) fn session_cookie(r: &Reply) -> String {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.strip_prefix("sy-session="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string()
}

/// The counter value a `new-N` answer used.
pub(crate) fn turn(r: &Reply) -> u64 {
    let c = session_cookie(r);
    c.strip_prefix("new-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a new-N answer: {c:?}"))
}

pub(crate) fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    )
}

/// Session `s` learned through `writer`; how long until `reader` answers
/// it from the store (peeking, so it learns nothing itself), if within
/// `limit`, and whether both chose the same backend.
fn visible(
    agent: &ureq::Agent,
    writer: &Proxy,
    reader: &Proxy,
    s: &str,
    limit: Duration,
) -> Option<Duration> {
    visible_at(agent, writer, reader, "/", s, limit)
}

/// [`visible`] for requests to `path`.
pub(crate) fn visible_at(
    agent: &ureq::Agent,
    writer: &Proxy,
    reader: &Proxy,
    path: &str,
    s: &str,
    limit: Duration,
) -> Option<Duration> {
    let learned = get_with(agent, &writer.url(path), &[("x-session", s)]);
    assert!(
        session_cookie(&learned).starts_with("new-"),
        "{s}: {learned:?}"
    );
    let t0 = Instant::now();
    let mut seen = None;
    wait_for(limit, || {
        let r = get_with(
            agent,
            &reader.url(path),
            &[("x-session", s), ("x-peek", "1")],
        );
        let known = session_cookie(&r) == "known";
        if known {
            assert_eq!(r.body, learned.body, "{s}: another backend");
            seen = Some(t0.elapsed());
        }
        known
    });
    seen
}

/// Ten sessions learned through the two proxies in turn (session `i` at
/// `path(i)`): how long each took to be seen by the other, sorted. Fails
/// past 1 s.
pub(crate) fn crossing_times(
    agent: &ureq::Agent,
    one: &Proxy,
    two: &Proxy,
    path: impl Fn(usize) -> &'static str,
) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..10)
        .map(|i| {
            let (w, r) = if i % 2 == 0 { (one, two) } else { (two, one) };
            let path = path(i);
            visible_at(agent, w, r, path, &format!("s{i}"), Duration::from_secs(1))
                .unwrap_or_else(|| panic!("s{i} on {path} not seen within 1 s:\n{}", r.log()))
        })
        .collect();
    times.sort();
    times
}

#[test]
fn two_proxies_see_each_others_key_value_writes_within_a_second() {
    let redis = Redis::start();
    let (a, b, c) = three();
    let policy = sessions_policy();
    let cfg = config(&policy, &[&a, &b, &c], Some(&redis), 64);
    let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let agent = client();
    let times = crossing_times(&agent, &one, &two, |_| "/");
    crate::figures!(
        "shared-state: a key-value write seen by the other proxy after {:.0}–{:.0} ms (median {:.0} ms, 10 writes)",
        ms(times[0]),
        ms(times[9]),
        ms(times[5])
    );
    // The store holds the sessions, under the upstream's prefix.
    assert_eq!(
        redis
            .cli(&["HGET", "switchyard:{app}:kv", "session/s3"])
            .len(),
        1
    );

    // Local state: the other proxy never learns it.
    let cfg = config(&policy, &[&a, &b, &c], None, 64);
    let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let t = visible(&agent, &one, &two, "local", Duration::from_millis(1500));
    assert_eq!(t, None, "local state crossed processes");
}

#[test]
fn a_shared_counter_is_handed_out_once_across_proxies_and_spreads_evenly() {
    let redis = Redis::start();
    let (a, b, c) = three();
    let policy = sessions_policy();
    let block = 8;
    let run = |redis: Option<&Redis>| {
        let cfg = config(&policy, &[&a, &b, &c], redis, block);
        let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
        let agent = client();
        let replies: Vec<Reply> = (0..120)
            .map(|i| get(&agent, &if i % 2 == 0 { &one } else { &two }.url("/")))
            .collect();
        let mut turns: Vec<u64> = replies.iter().map(turn).collect();
        turns.sort_unstable();
        let n = turns.len();
        turns.dedup();
        (
            n - turns.len(),
            tally(replies.iter().map(|r| r.body.as_str())),
        )
    };
    let (repeated, split) = run(Some(&redis));
    crate::figures!(
        "shared-state: 120 requests alternating between two proxies, counter-block {block}: {split:?}, counter values repeated {repeated}"
    );
    assert_eq!(repeated, 0, "a value handed out twice: {split:?}");
    for (backend, n) in &split {
        // Even within one block per proxy.
        assert!(
            n.abs_diff(40) <= 2 * block as usize,
            "{backend}: {n} of 120"
        );
    }
    let (repeated, _) = run(None);
    assert_eq!(repeated, 60, "local counters: every value twice");
}

#[test]
fn the_rust_template_runs_unchanged_on_local_and_redis_state() {
    let redis = Redis::start();
    let wasm = languages::build(&languages::template("rust"));
    let (s1, c1, s2) = (
        Backend::start("stable-1"),
        Backend::start("canary-1"),
        Backend::start("stable-2"),
    );
    for shared in [None, Some(&redis)] {
        let cfg = config(&wasm, &[&s1, &c1, &s2], shared, 64);
        let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
        languages::assert_canary_split(&one);
        languages::assert_canary_split(&two);
    }
    // Its two counters are in Redis: a block each proxy took, and one more
    // reserved ahead.
    for side in ["stable", "canary"] {
        let v: u64 = redis
            .cli(&["GET", &format!("switchyard:{{app}}:c:{side}")])
            .parse()
            .unwrap_or(0);
        assert!(v >= 2 * 64, "{side}: {v}");
    }
}

#[test]
fn killing_redis_under_load_fails_no_request_and_it_resynchronises() {
    let mut redis = Redis::start();
    let (a, b, c) = three();
    let policy = sessions_policy();
    let cfg = config(&policy, &[&a, &b, &c], Some(&redis), 64);
    let (one, two) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let agent = client();
    let loads = [Load::start(&one.url("/"), 3), Load::start(&two.url("/"), 3)];
    std::thread::sleep(Duration::from_millis(500));
    let before = turn(&get(&agent, &one.url("/"))).max(turn(&get(&agent, &two.url("/"))));
    let up = |p: &Proxy| p.metric("switchyard_state_redis_up");
    assert!(wait_for(Duration::from_secs(3), || up(&one) == 1.0
        && up(&two) == 1.0));

    redis.kill();
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || up(&one) == 0.0
            && up(&two) == 0.0),
        "redis_up stayed 1:\n{}",
        one.log()
    );
    // Sessions learned while Redis is away stay local until it is back.
    let during = get_with(&agent, &one.url("/"), &[("x-session", "while-down")]);
    std::thread::sleep(Duration::from_secs(1));
    let sent_down = loads.iter().map(Load::sent).sum::<usize>();
    let down_for = killed.elapsed();

    redis.restart();
    let restarted = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || up(&one) == 1.0
        && up(&two) == 1.0));
    let t = visible(&agent, &one, &two, "after", Duration::from_secs(5))
        .expect("a write after the restart never crossed");
    let resync = restarted.elapsed();
    let r = get_with(
        &agent,
        &two.url("/"),
        &[("x-session", "while-down"), ("x-peek", "1")],
    );
    assert_eq!(
        session_cookie(&r),
        "known",
        "the write made while down was lost"
    );
    assert_eq!(r.body, during.body);

    let mut failed = Vec::new();
    let mut sent = 0;
    for l in loads {
        let (n, f) = l.stop();
        sent += n;
        failed.extend(f);
    }
    let after = turn(&get(&agent, &one.url("/")));
    let in_redis: u64 = redis
        .cli(&["GET", "switchyard:{app}:c:turn"])
        .parse()
        .unwrap_or(0);
    crate::figures!(
        "shared-state: redis killed for {:.1} s under load (6 clients, {sent} requests, {sent_down} by the end of the outage), failed {}; \
         writes crossing again {:.0} ms after the restart (this one after {:.0} ms); counter {before} before, {after} after, {in_redis} in the restarted redis",
        down_for.as_secs_f64(),
        failed.len(),
        ms(resync),
        ms(t)
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(one.metric("switchyard_state_redis_errors_total") >= 1.0);
    for p in [&one, &two] {
        assert!(
            p.log()
                .contains("shared policy state served from this proxy's local values"),
            "{}",
            p.log()
        );
        assert!(p.log().contains("answers again"), "{}", p.log());
    }
    assert!(after > before, "counter went back: {before} then {after}");
    assert!(
        in_redis > before,
        "redis restarted the counter at {in_redis} (was past {before})"
    );
}

#[test]
fn shared_state_redis_without_a_state_section_is_a_config_error() {
    let a = Backend::start("a");
    let cfg = config(Path::new("round-robin"), &[&a], None, 64)
        .replace("\"local\"", "\"redis\"")
        .replace("{port}", "0")
        .replace("{admin}", "0");
    let (ok, text, path) = check_with(&cfg, |_| {});
    assert!(!ok, "{text}");
    let line = cfg
        .lines()
        .position(|l| l.starts_with("shared-state"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("{path}:{line}:")) && text.contains("upstreams.app.shared-state"),
        "{text}"
    );
}

/// The proxy's threads named like the Redis link's (`switchyard-state`,
/// cut to 15 bytes by the kernel).
fn state_threads(p: &Proxy) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", p.pid()))
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "switchyard-stat")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Clients connected to `redis` other than the `redis-cli` asking.
fn redis_clients(redis: &Redis) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .count()
        .saturating_sub(1)
}

#[test]
fn a_reload_to_another_redis_or_without_the_upstream_closes_the_old_link() {
    let (one, two) = (Redis::start(), Redis::start());
    let (a, b, c) = three();
    let policy = sessions_policy();
    let p = Proxy::start(&config(&policy, &[&a, &b, &c], Some(&one), 8));
    let agent = client();
    assert_eq!(get(&agent, &p.url("/")).status, 200);
    assert!(wait_for(Duration::from_secs(5), || redis_clients(&one) == 1));
    assert_eq!(state_threads(&p), 1);
    // Back and forth: each reload leaves one link, to the Redis named.
    for (now, before) in [(&two, &one), (&one, &two), (&two, &one)] {
        p.reload(&config(&policy, &[&a, &b, &c], Some(now), 8));
        assert_eq!(get(&agent, &p.url("/")).status, 200);
        let settled = wait_for(Duration::from_secs(5), || {
            redis_clients(before) == 0 && redis_clients(now) == 1 && state_threads(&p) == 1
        });
        assert!(
            settled,
            "after a reload to port {}: {} link thread(s); clients on the old Redis {}, on the new {}\n{}",
            now.port,
            state_threads(&p),
            redis_clients(before),
            redis_clients(now),
            p.log()
        );
    }
    assert_eq!(p.metric("switchyard_state_redis_up"), 1.0);
    // Back to local state: no link at all.
    p.reload(&config(&policy, &[&a, &b, &c], None, 8));
    assert!(
        wait_for(Duration::from_secs(5), || state_threads(&p) == 0
            && redis_clients(&two) == 0),
        "{}",
        p.log()
    );
    // On Redis again, then the upstream removed (another one, local, in
    // its place): its link goes with it.
    p.reload(&config(&policy, &[&a, &b, &c], Some(&one), 8));
    assert!(wait_for(Duration::from_secs(5), || redis_clients(&one) == 1));
    let renamed =
        config(&policy, &[&a, &b, &c], None, 8).replace("[upstreams.app]", "[upstreams.other]");
    p.reload(&renamed);
    assert_eq!(get(&agent, &p.url("/")).status, 200);
    assert!(
        wait_for(Duration::from_secs(5), || state_threads(&p) == 0
            && redis_clients(&one) == 0),
        "after the upstream was removed: {} link thread(s), {} client(s) on its Redis\n{}",
        state_threads(&p),
        redis_clients(&one),
        p.log()
    );
}
