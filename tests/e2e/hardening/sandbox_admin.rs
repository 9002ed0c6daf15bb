//! The sandbox, the admin API and the config (items 15-18): a policy
//! cannot stall requests through WASI, re-instantiation, host resources or
//! logs; the admin API answers only the local operator; nonsense limits are
//! refused with their line and column.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::*;
use crate::common::*;

/// A proxy over backends a and b with the policy file `policy.wasm`.
fn start_policy(wasm: &[u8], upstream_extra: &str) -> (Proxy, Backend, Backend) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let cfg = config(&[a.entry(), b.entry()], "", upstream_extra)
        .replace("policy = \"round-robin\"", "policy = \"policy.wasm\"");
    let wasm = wasm.to_vec();
    let proxy = Proxy::start_with(&cfg, move |d| {
        d.write("policy.wasm", &wasm);
    });
    (proxy, a, b)
}

// ----------------------------------------------------------------- item 15

/// WAT (core module, WASI preview 1): on every path but `/`, sleeps 5 s
/// in `poll_oneoff` (one relative monotonic-clock subscription).
fn blocking_wasi_wat() -> String {
    policy_module(
        r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#,
        "",
        "",
        "",
        &format!(
            "(i64.store (i32.const 1024) (i64.const 0))
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 5000000000))
    (i64.store (i32.const 1056) (i64.const 0))
    (i32.store16 (i32.const 1064) (i32.const 0))
    (drop (call $poll (i32.const 1024) (i32.const 1152) (i32.const 1) (i32.const 1216)))
    {ANSWER_0}"
        ),
    )
}

#[test]
fn item15_blocking_wasi_call_is_refused_and_served_by_the_fallback_at_once() {
    let dir = TempDir::new("wasi-block");
    componentize_cli(&dir, "policy.wasm", &blocking_wasi_wat());
    let wasm = std::fs::read(dir.path().join("policy.wasm")).unwrap();
    let (proxy, _a, _b) = start_policy(&wasm, "policy-max-failures = 1000");
    let agent = client();
    for i in 0..3 {
        let started = Instant::now();
        let r = get(&agent, &proxy.url(&format!("/block/{i}")));
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            took < Duration::from_millis(2500),
            "a request whose policy sleeps 5 s in poll_oneoff took {took:?} (policy-timeout 1ms)"
        );
    }
    assert!(
        policy_failures(&proxy) >= 3.0,
        "the blocked calls were not counted as policy failures:\n{}",
        proxy.metrics()
    );
}

#[test]
fn item15_check_dry_run_enforces_the_policy_timeout() {
    // Spins 50 ms (by the host's clock) in every select, `/` included.
    let spin = component(
        &policy_module(HOST_IMPORTS, "", SPIN_FUNC, "", ANSWER_0).replace(
            "(call $path (local.get $req) (i32.const 256))",
            "(call $spin_ms (i64.const 50)) (call $path (local.get $req) (i32.const 256))",
        ),
    );
    let cfg = "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.app]\npolicy = \"spin.wasm\"\nbackends = [{ name = \"a\", address = \"127.0.0.1:19001\" }]\n";
    let (ok, text) = check(cfg, |d| {
        d.write("spin.wasm", &spin);
    });
    assert!(
        !ok,
        "check accepted a policy that spins 50 ms per decision (policy-timeout 1ms):\n{text}"
    );
    assert!(has_location(&text, 5), "{text}");
    // Given the time, the same policy passes.
    let (ok, text) = check(&format!("{cfg}policy-timeout = \"1s\"\n"), |d| {
        d.write("spin.wasm", &spin);
    });
    assert!(ok, "{text}");
}

#[test]
fn item15_policy_failing_every_other_call_is_reported_unhealthy() {
    // On every path but `/`: an error result, then a good answer, in turn.
    let wasm = component(&policy_module(
        "",
        r#"(data (i32.const 512) "nope")"#,
        "(global $n (mut i32) (i32.const 0))",
        "",
        &format!(
            "(global.set $n (i32.add (global.get $n) (i32.const 1)))
    (if (i32.and (global.get $n) (i32.const 1))
      (then (return (block (result i32) {ANSWER_ERROR}))))
    {ANSWER_0}"
        ),
    ));
    let (proxy, _a, _b) = start_policy(&wasm, "");
    let agent = client();
    let mut reported = false;
    for i in 0..100 {
        assert_eq!(get(&agent, &proxy.url(&format!("/alt/{i}"))).status, 200);
        let status = proxy.status();
        if status["upstreams"][0]["policy"]["healthy"] == false {
            reported = true;
            break;
        }
    }
    assert!(
        reported,
        "a policy failing every other decision was never reported unhealthy in 100 requests: {}\n{}",
        proxy.status()["upstreams"][0]["policy"],
        proxy.metrics()
    );
}

// ----------------------------------------------------------------- item 16

#[test]
fn item16_reinstantiation_after_a_trap_does_not_hold_up_requests() {
    // `configure` spins 1 s once any select has trapped (a shared counter
    // says so): the first instances load at once, every re-instantiation
    // after a trap is slow. `select` traps on every path but `/`.
    let wasm = component(&policy_module(
        HOST_IMPORTS,
        r#"(data (i32.const 600) "trapped")"#,
        &format!("(global $c (mut i32) (i32.const 0)) {SPIN_FUNC}"),
        "(global.set $c (call $counter_new (i32.const 600) (i32.const 7)))
    (if (i64.gt_u (call $counter_get (global.get $c)) (i64.const 0))
      (then (call $spin_ms (i64.const 1000))))",
        "(drop (call $fetch_add (global.get $c) (i64.const 1)))
    (unreachable)",
    ));
    let (proxy, _a, _b) = start_policy(&wasm, "policy-max-failures = 1000");
    let agent = client();
    let mut took = Vec::new();
    for i in 0..8 {
        let started = Instant::now();
        let r = get(&agent, &proxy.url(&format!("/trap/{i}")));
        took.push(started.elapsed());
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            *took.last().unwrap() < Duration::from_millis(700),
            "request {i} waited for a re-instantiation whose configure spins 1 s: {took:?}"
        );
    }
    assert!(
        proxy.metric("switchyard_policy_failures_total{upstream=\"app\",kind=\"trap\"}") >= 1.0,
        "{}",
        proxy.metrics()
    );
}

#[test]
fn item16_a_guest_leaking_counter_handles_traps_instead_of_growing_the_proxy() {
    // Opens 1000 counter handles per decision and never drops them: 80,000
    // over the test, split over the proxy's instances (one per worker
    // thread). Below wasmtime's own limit of handles per store (about
    // 100,000, some 8 MiB of proxy memory per instance), so only a bound
    // of the proxy's own, well under 40,000 handles per instance, makes it
    // trap.
    let wasm = component(&policy_module(
        HOST_IMPORTS,
        r#"(data (i32.const 600) "leak")"#,
        "",
        "",
        &format!(
            "(local $i i32)
    (loop $l
      (drop (call $counter_new (i32.const 600) (i32.const 4)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    {ANSWER_0}"
        ),
    ));
    let (proxy, _a, _b) = start_policy(
        &wasm,
        "policy-timeout = \"2s\"\npolicy-max-failures = 100000",
    );
    let agent = client();
    for _ in 0..3 {
        get(&agent, &proxy.url("/"));
    }
    let before = rss_kib(proxy.pid());
    let mut peak = before;
    for i in 0..80 {
        assert_eq!(get(&agent, &proxy.url(&format!("/leak/{i}"))).status, 200);
        peak = peak.max(rss_kib(proxy.pid()));
    }
    let traps = proxy.metric("switchyard_policy_failures_total{upstream=\"app\",kind=\"trap\"}");
    assert!(
        traps >= 1.0,
        "80,000 counter handles opened and kept without a trap (RSS {before} -> {peak} KiB)"
    );
    assert!(
        peak - before <= 32 * 1024,
        "RSS rose by {} KiB while the guest leaked handles",
        peak - before
    );
}

#[test]
fn item16_guest_log_lines_are_rate_limited() {
    // Logs 1000 lines per decision.
    let wasm = component(&policy_module(
        HOST_IMPORTS,
        r#"(data (i32.const 600) "hardening-guest-log-line")"#,
        "",
        "",
        &format!(
            "(local $i i32)
    (loop $l
      (call $log (i32.const 1) (i32.const 600) (i32.const 24))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    {ANSWER_0}"
        ),
    ));
    let (proxy, _a, _b) = start_policy(
        &wasm,
        "policy-timeout = \"2s\"\npolicy-max-failures = 100000",
    );
    let agent = client();
    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(get(&agent, &proxy.url(&format!("/log/{i}"))).status, 200);
    }
    let secs = started.elapsed().as_secs_f64().max(1.0);
    let lines = proxy.log_count("hardening-guest-log-line");
    assert!(
        lines <= 2000,
        "the guest's 20,000 log lines in {secs:.1} s put {lines} lines in the proxy log"
    );
}

// ----------------------------------------------------------------- item 17

#[test]
fn item17_admin_refuses_a_foreign_host_or_origin() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[a.entry()], "", ""));
    let admin = proxy.admin_port.unwrap();
    let agent = client();
    let status = proxy.admin_url("/status");
    let reload = proxy.admin_url("/reload");
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    for host in ["evil.example", &format!("evil.example:{admin}")] {
        let r = get_with(&agent, &status, &[("host", host)]);
        assert_eq!(r.status, 403, "GET /status with Host {host}: {}", r.status);
    }
    // A web page posting to the admin API.
    let r = agent
        .post(&reload)
        .header("origin", "http://evil.example")
        .send(&b""[..])
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "POST /reload from http://evil.example"
    );
    assert_eq!(
        proxy.status()["generation"],
        1,
        "the page reloaded the config"
    );
    // The operator's own ways in still work.
    for host in [
        "localhost".to_string(),
        format!("localhost:{admin}"),
        format!("127.0.0.1:{admin}"),
        format!("[::1]:{admin}"),
    ] {
        let r = get_with(&agent, &status, &[("host", &host)]);
        assert_eq!(r.status, 200, "Host {host}");
    }
    let r = agent
        .post(&reload)
        .header("origin", &format!("http://127.0.0.1:{admin}"))
        .send(&b""[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn item17_admin_token_file_requires_the_bearer_token() {
    let a = Backend::start("a");
    let cfg = config(&[a.entry()], "", "").replace(
        "listen = \"127.0.0.1:{admin}\"",
        "listen = \"127.0.0.1:{admin}\"\ntoken-file = \"admin.token\"",
    );
    let proxy = Proxy::start_with(&cfg, |d| {
        d.write("admin.token", "s3cret-token\n");
    });
    let agent = client();
    for path in ["/status", "/metrics"] {
        let url = proxy.admin_url(path);
        assert_eq!(get(&agent, &url).status, 401, "{path} without a token");
        assert_eq!(
            get_with(&agent, &url, &[("authorization", "Bearer wrong")]).status,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            get_with(&agent, &url, &[("authorization", "Bearer s3cret-token")]).status,
            200,
            "{path} with the token"
        );
    }
    let reload = proxy.admin_url("/reload");
    assert_eq!(
        agent
            .post(&reload)
            .send(&b""[..])
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let r = agent
        .post(&reload)
        .header("authorization", "Bearer s3cret-token")
        .send(&b""[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// `switchyard ARGS` with RLIMIT_NOFILE set to (soft, hard) before exec.
fn with_nofile(args: &[&std::ffi::OsStr], soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = sy();
    c.args(args);
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Starts `switchyard run` on `config` in `dir` under the fd limits; waits
/// until it listens. The proxy's log is `dir/proxy.log`.
fn run_with_nofile(dir: &TempDir, config: &str, soft: u64, hard: u64) -> Killed {
    let path = dir.write("switchyard.toml", config);
    let log = dir.path().join("proxy.log");
    let child = with_nofile(
        &["run".as_ref(), "--config".as_ref(), path.as_os_str()],
        soft,
        hard,
    )
    .env("SWITCHYARD_LOG", "info,switchyard=debug")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .expect("start switchyard");
    let mut child = Killed(child);
    let ok = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("admin API on http://127.0.0.1:"))
            || child.0.try_wait().ok().flatten().is_some()
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok && child.0.try_wait().ok().flatten().is_none(),
        "switchyard did not start under RLIMIT_NOFILE {soft}:{hard}:\n{text}"
    );
    child
}

fn admin_port_in(log: &str) -> u16 {
    let rest = log.split("admin API on http://127.0.0.1:").nth(1).unwrap();
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The soft and hard "Max open files" of `pid`.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

#[test]
fn item17_soft_fd_limit_is_raised_and_max_connections_over_the_hard_limit_refused() {
    let a = Backend::start("a");
    let hard = hard_nofile().min(4096);
    let dir = TempDir::new("nofile");
    let cfg = config(&[a.entry()], "", "")
        .replace("{port}", "0")
        .replace("{admin}", "0");
    let proxy = run_with_nofile(&dir, &cfg, 256, hard);
    let (soft_now, hard_now) = nofile_of(proxy.0.id());
    assert_eq!(
        (soft_now.as_str(), hard_now.as_str()),
        (hard.to_string().as_str(), hard.to_string().as_str()),
        "started with RLIMIT_NOFILE 256:{hard}, the soft limit was not raised"
    );
    drop(proxy);

    // A max-connections the hard limit cannot hold, set explicitly.
    let over = cfg.replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!(
            "listen = \"127.0.0.1:0\"\nmax-connections = {}\n",
            hard * 10
        ),
    );
    let path = dir.write("over.toml", &over);
    let out = with_nofile(
        &["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        256,
        hard,
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let line = over
        .lines()
        .position(|l| l.starts_with("max-connections"))
        .unwrap()
        + 1;
    assert!(
        !out.status.success(),
        "check accepted max-connections = {} with a hard fd limit of {hard}",
        hard * 10
    );
    assert!(text.contains(&format!("over.toml:{line}:")), "{text}");
}

#[test]
fn item17_admin_accept_loop_does_not_spin_when_out_of_file_descriptors() {
    let a = Backend::start("a");
    let dir = TempDir::new("emfile");
    let cfg = config(&[a.entry()], "", "")
        .replace("{port}", "0")
        .replace("{admin}", "0");
    // A hard limit of 64 the proxy cannot raise.
    let proxy = run_with_nofile(&dir, &cfg, 64, 64);
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    let admin = admin_port_in(&log);
    // More idle connections than the proxy has descriptors left.
    let held: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", admin)).ok())
        .collect();
    assert!(held.len() >= 80, "only {} connections", held.len());
    // The proxy takes them until its descriptors run out...
    let pid = proxy.0.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(10), || fds() >= 60),
        "the proxy holds only {} descriptors",
        fds()
    );
    // ... and then, with clients still queued, must wait, not spin: its
    // CPU time over a one-second window.
    let before = cpu_ms(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ms(pid) - before;
    assert!(
        used <= 300,
        "the proxy used {used} ms of CPU in {:?} while out of descriptors with clients waiting",
        window.elapsed()
    );
    drop(held);
}

// ----------------------------------------------------------------- item 18

/// A config with `server_extra` under `[server]` and `upstream_extra` under
/// `[upstreams.app]`.
fn check_config_text(server_extra: &str, upstream_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:18080\"\n{server_extra}\n\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{{ name = \"a\", address = \"127.0.0.1:19001\" }}]\n{upstream_extra}\n"
    )
}

/// Line (1-based) of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn item18_zero_timeouts_zero_policy_failures_and_bad_health_check_hosts_are_refused() {
    let mut problems = Vec::new();
    // (where, the bad line, a good line for the same key)
    let cases: Vec<(&str, String, String)> = vec![
        (
            "server",
            "tls-handshake-timeout = \"0s\"".into(),
            "tls-handshake-timeout = \"5s\"".into(),
        ),
        (
            "server",
            "client-body-timeout = \"0s\"".into(),
            "client-body-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "response-timeout = \"0s\"".into(),
            "response-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "connect-timeout = \"0ms\"".into(),
            "connect-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "retry-timeout = \"0s\"".into(),
            "retry-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "read-timeout = \"0s\"".into(),
            "read-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "send-timeout = \"0s\"".into(),
            "send-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "tunnel-idle-timeout = \"0s\"".into(),
            "tunnel-idle-timeout = \"5s\"".into(),
        ),
        (
            "upstream",
            "policy-max-failures = 0".into(),
            "policy-max-failures = 1".into(),
        ),
    ];
    for (place, bad, good) in &cases {
        let key = bad.split(' ').next().unwrap();
        let text_of = |line: &str| match *place {
            "server" => check_config_text(line, ""),
            _ => check_config_text("", line),
        };
        let bad_cfg = text_of(bad);
        let (ok, text) = check(&bad_cfg, |_| {});
        let line = line_of(&bad_cfg, key);
        if ok {
            problems.push(format!("{bad}: accepted"));
        } else if !has_location(&text, line)
            || !text.contains(key)
            || text.contains("unknown field")
        {
            problems.push(format!(
                "{bad}: refused without switchyard.toml:{line}:COL: naming {key}: {text}"
            ));
        }
        let (ok, text) = check(&text_of(good), |_| {});
        if !ok {
            problems.push(format!("{good}: refused: {text}"));
        }
    }
    for host in ["bad/host", "a b", "user@host", "host:port:x"] {
        let cfg = check_config_text(
            "",
            &format!("[upstreams.app.health-check]\npath = \"/health\"\nhost = \"{host}\""),
        );
        let (ok, text) = check(&cfg, |_| {});
        let line = line_of(&cfg, "host =");
        let table = line_of(&cfg, "[upstreams.app.health-check]");
        if ok {
            problems.push(format!("health-check.host = {host:?}: accepted"));
        } else if !(has_location(&text, line) || has_location(&text, table))
            || !text.contains("host")
        {
            problems.push(format!(
                "health-check.host = {host:?}: refused without a location: {text}"
            ));
        }
    }
    for host in ["app.internal", "app.internal:8080", "127.0.0.1:9000"] {
        let cfg = check_config_text(
            "",
            &format!("[upstreams.app.health-check]\npath = \"/health\"\nhost = \"{host}\""),
        );
        let (ok, text) = check(&cfg, |_| {});
        if !ok {
            problems.push(format!("health-check.host = {host:?}: refused: {text}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
