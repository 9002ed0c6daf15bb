//! The process's life: a graceful stop on SIGTERM, big bodies streamed in
//! little memory, an access log.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use sha2::Digest;

use crate::common::*;

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    let url = proxy.url("/delay/2000");
    let slow = std::thread::spawn(move || get(&client(), &url));
    assert!(wait_for(Duration::from_secs(5), || !a.seen().is_empty()));
    proxy.signal("TERM");
    // Listening stops at once...
    assert!(
        wait_for(Duration::from_secs(2), || TcpStream::connect((
            "127.0.0.1",
            proxy.port
        ))
        .is_err()),
        "still accepting after SIGTERM"
    );
    // ... the request in flight completes ...
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    // ... and the process exits cleanly.
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("did not exit");
    assert!(status.success(), "{status}");
}

#[test]
fn hundred_mib_bodies_stream_through_in_little_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    let agent = client();

    let mut want = sha2::Sha256::new();
    let mut reader = PatternReader { pos: 0, len: SIZE };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        want.update(&buf[..n]);
    }
    let want = hex(&want.finalize());

    // Upload: the backend hashes what it receives.
    let resp = agent
        .post(&proxy.url("/sha256"))
        .send(ureq::SendBody::from_reader(&mut PatternReader {
            pos: 0,
            len: SIZE,
        }))
        .unwrap();
    let mut got = String::new();
    resp.into_body()
        .as_reader()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, want, "upload corrupted");

    // Download: the client hashes what it receives.
    let resp = agent
        .get(&proxy.url(&format!("/bytes/{SIZE}")))
        .call()
        .unwrap();
    let mut body = resp.into_body();
    let mut reader = body.with_config().limit(SIZE + 1).reader();
    let mut hasher = sha2::Sha256::new();
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    assert_eq!(total, SIZE);
    assert_eq!(hex(&hasher.finalize()), want, "download corrupted");

    let peak = vm_kib(proxy.pid(), "VmHWM:");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn the_access_log_has_a_line_per_request() {
    let a = Backend::start("a");
    let config = format!(
        "{}\n[access-log]\npath = \"access.log\"\nformat = \"json\"\n",
        one_upstream("round-robin", &[&a], "")
    );
    let proxy = Proxy::start(&config);
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/one?x=1")).status, 200);
    assert_eq!(get(&agent, &proxy.url("/two")).status, 200);
    let path = proxy.dir.path().join("access.log");
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    }));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["target"], "/one?x=1");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["host"], "127.0.0.1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes"], 1);
    assert_eq!(lines[0]["backend"], "a");
    assert_eq!(lines[0]["client"], "127.0.0.1");
    assert!(lines[0]["upstream_time"].as_f64().unwrap() > 0.0);
    assert!(
        lines[0]["time_total"].as_f64().unwrap() >= lines[0]["upstream_time"].as_f64().unwrap()
    );
    assert_eq!(lines[1]["target"], "/two");
}

/// The "N MiB resident before" of the proxy's log line about giving back
/// its pages after `when`, once it is there.
fn given_back(proxy: &Proxy, when: &str) -> Option<f64> {
    let line = format!("gave back the binary's pages after {when}: ");
    proxy.log().lines().find_map(|l| {
        l.split(&line)
            .nth(1)?
            .split(", ")
            .nth(1)?
            .split(" MiB")
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn code_only_starting_used_is_given_back_once_serving() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a], ""));
    assert!(
        wait_for(Duration::from_secs(10), || given_back(&proxy, "start")
            .is_some()),
        "{}",
        proxy.log()
    );
    let before = given_back(&proxy, "start").unwrap();
    let agent = client();
    for _ in 0..100 {
        assert_eq!(get(&agent, &proxy.url("/")).body, "a");
    }
    // What serving faulted back in, with the shared libraries' pages, is
    // less than the binary's pages alone held after starting.
    let file = vm_kib(proxy.pid(), "RssFile:") as f64 / 1024.0;
    assert!(
        file < before,
        "file-backed resident memory {file:.1} MiB after 100 requests, the binary's {before:.1} MiB before it gave pages back"
    );
    eprintln!(
        "file-backed resident memory: binary {before:.1} MiB after start, all {file:.1} MiB serving"
    );

    // Turned off, nothing is given back.
    let kept = Proxy::start(
        &one_upstream("round-robin", &[&a], "")
            .replace("[server]\n", "[server]\nrelease-startup-pages = false\n"),
    );
    assert_eq!(get(&agent, &kept.url("/")).body, "a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(given_back(&kept, "start").is_none(), "{}", kept.log());
}
