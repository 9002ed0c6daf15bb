//! Backends failing under load: requests are retried elsewhere, active
//! health checks take a dead backend out and bring it back, backups stand
//! in only when every primary is down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

fn backend_healthy(proxy: &Proxy, name: &str) -> Option<bool> {
    let status = proxy.status();
    status["upstreams"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)?["healthy"]
        .as_bool()
}

#[test]
fn a_backend_killed_mid_run_costs_no_request_and_comes_back() {
    let (a, mut b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{}",
        one_upstream(
            "round-robin",
            &[&a, &b, &c],
            "[upstreams.app.health-check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 2",
        )
    );
    let proxy = Proxy::start(&config);

    let remaining = Arc::new(AtomicUsize::new(300));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (remaining, statuses, sent, url) = (
                remaining.clone(),
                statuses.clone(),
                sent.clone(),
                proxy.url("/"),
            );
            std::thread::spawn(move || {
                let agent = client();
                while remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let r = get(&agent, &url);
                    statuses.lock().unwrap().push((r.status, r.body));
                    sent.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    // Kill b once a third of the requests are done.
    assert!(wait_for(Duration::from_secs(20), || sent
        .load(Ordering::SeqCst)
        >= 100));
    b.stop();
    for t in clients {
        t.join().unwrap();
    }
    let statuses = statuses.lock().unwrap();
    assert_eq!(statuses.len(), 300);
    let failed: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // The dead backend is out...
    assert!(
        wait_for(Duration::from_secs(3), || backend_healthy(&proxy, "b")
            == Some(false)),
        "{}",
        proxy.status()
    );
    assert!(
        proxy.log().contains("backend is down (health check)"),
        "{}",
        proxy.log()
    );
    // ... and back once it restarts, found by the health check alone (no
    // request is sent to it meanwhile).
    b.restart();
    assert!(
        wait_for(Duration::from_secs(3), || backend_healthy(&proxy, "b")
            == Some(true)),
        "{}",
        proxy.status()
    );
    assert!(proxy.log().contains("backend is up again (health check)"));
    let agent = client();
    let bodies: Vec<String> = (0..6).map(|_| get(&agent, &proxy.url("/")).body).collect();
    assert!(bodies.contains(&"b".to_string()), "{bodies:?}");
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    let (mut a, backup) = (Backend::start("a"), Backend::start("backup"));
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\n[upstreams.app]\npolicy = \"round-robin\"\nbackends = [{}, {{ name = \"backup\", address = \"{}\", backup = true }}]\n",
        a.entry(),
        backup.addr
    );
    let proxy = Proxy::start(&config);
    let agent = client();
    for _ in 0..6 {
        assert_eq!(get(&agent, &proxy.url("/")).body, "a");
    }
    a.stop();
    for _ in 0..4 {
        let r = get(&agent, &proxy.url("/"));
        assert_eq!((r.status, r.body.as_str()), (200, "backup"));
    }
}

#[test]
fn a_request_lost_on_a_dying_connection_is_retried_only_if_idempotent() {
    let (mut a, mut b) = (Backend::start("a"), Backend::start("b"));
    // No passive marking: each attempt goes where round-robin sends it.
    let proxy = Proxy::start(&one_upstream("round-robin", &[&a, &b], "max-fails = 0"));

    // The first request goes to a; a dies while the request waits on it.
    // The GET was sent, got no byte back: it is sent again, to b.
    let url = proxy.url("/delay/1000");
    let pending = std::thread::spawn(move || get(&client(), &url));
    assert!(wait_for(Duration::from_secs(5), || !a.seen().is_empty()));
    a.stop();
    let r = pending.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "b"), "{}", proxy.log());

    // A POST that b receives, then loses, is not sent again.
    let url = proxy.url("/delay/1000");
    let seen_before = b.seen().len();
    let pending = std::thread::spawn(move || post(&client(), &url, b"x"));
    assert!(wait_for(Duration::from_secs(5), || b.seen().len() > seen_before));
    b.stop();
    let r = pending.join().unwrap();
    assert_eq!(r.status, 502, "{r:?}");
}
