//! Backends from DNS, against a real dnsmasq: addresses added and removed
//! under load, SRV weights, a DNS server that goes away and comes back, a
//! name that resolves only later, and `check` refusing mistakes.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::dnsmasq::Dnsmasq;

/// `dns-refresh` in these tests (dnsmasq's TTL of 1 s makes lookups come
/// every second anyway).
const REFRESH: Duration = Duration::from_secs(2);

/// A port free on each of `ips` (the backends of one `dns` entry share it).
fn port_free_on(ips: &[&str]) -> u16 {
    'again: for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("local addr").port();
        for ip in &ips[1..] {
            if TcpListener::bind((*ip, port)).is_err() {
                continue 'again;
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}

fn backend_on(name: &str, ip: &str, port: u16) -> Backend {
    Backend::start_on(name, SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port))
}

/// A proxy with one upstream `app` of `entries` under `policy`, asking
/// `dns`, with the admin API.
fn proxy(dns: &Dnsmasq, policy: &str, entries: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\nresolver = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n[upstreams.app]\npolicy = \"{policy}\"\ndns-refresh = \"{}s\"\nbackends = [ {entries} ]\n\n[[routes]]\npath-prefix = \"/\"\nupstream = \"app\"\n",
        dns.addr(),
        REFRESH.as_secs()
    ))
}

/// The names of the upstream's backends in `/status`, with what found them.
fn status_backends(p: &Proxy) -> Vec<(String, String)> {
    p.status()["upstreams"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["dns"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| format!("{} at {:?}: {}", s.status, s.at, s.backend))
        .collect()
}

#[test]
fn addresses_added_and_removed_in_dns_change_the_backends_under_load() {
    let port = port_free_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let (a, b, c) = (
        backend_on("a", "127.0.0.2", port),
        backend_on("b", "127.0.0.3", port),
        backend_on("c", "127.0.0.4", port),
    );
    let dns = Dnsmasq::start("127.0.0.2 app.test\n127.0.0.3 app.test\n", &[]);
    let p = proxy(
        &dns,
        "round-robin",
        &format!("{{ name = \"app\", dns = \"app.test:{port}\" }}"),
    );
    let names = status_backends(&p);
    assert_eq!(
        names,
        [
            (
                format!("app/127.0.0.2:{port}"),
                format!("dns app.test:{port}")
            ),
            (
                format!("app/127.0.0.3:{port}"),
                format!("dns app.test:{port}")
            ),
        ]
    );
    let loaded_at = p.status()["upstreams"][0]["policy"]["loaded_at"].clone();
    let load = LatencyLoad::start_paced(&p.url("/"), 4, Duration::from_millis(2), no_headers);
    assert!(wait_for(Duration::from_secs(5), || b.requests() > 20));

    // Added: c answers within dns-refresh + 1 s of the hosts file change.
    let (a_conns, a_closed) = (a.connections(), a.closed());
    let changed = load.elapsed();
    dns.set_hosts("127.0.0.2 app.test\n127.0.0.3 app.test\n127.0.0.4 app.test\n");
    // Wait for the client to have c's answer, not just for c to have the
    // request: the sample is recorded when the response arrives.
    let first_on_c = || {
        load.snapshot()
            .iter()
            .filter(|s| s.backend == "c")
            .map(|s| s.at)
            .min()
    };
    assert!(
        wait_for(REFRESH + Duration::from_secs(3), || first_on_c().is_some()),
        "c answered {} request(s), the client saw none; {}",
        c.requests(),
        p.log()
    );
    let first_c = first_on_c().expect("a request c answered");
    let a_closed_when_c_joined = a.closed();
    let took_add = first_c.saturating_sub(changed);
    eprintln!("dns: address added -> first request on it after {took_add:?}");
    assert!(took_add <= REFRESH + Duration::from_secs(1), "{took_add:?}");
    // The policy kept its instances (membership call), a kept its pool.
    assert!(
        p.log()
            .contains("keeps its instances: 3 backends handed to its membership call"),
        "{}",
        p.log()
    );
    assert_eq!(p.status()["upstreams"][0]["policy"]["loaded_at"], loaded_at);

    // Removed: a gets nothing new within dns-refresh + 1 s, and nothing after.
    std::thread::sleep(Duration::from_millis(500));
    let removed = load.elapsed();
    dns.set_hosts("127.0.0.3 app.test\n127.0.0.4 app.test\n");
    std::thread::sleep(REFRESH + Duration::from_millis(1500));
    let a_after = a.requests();
    std::thread::sleep(Duration::from_secs(1));
    let samples = load.stop();
    assert_eq!(a.requests(), a_after, "a got requests after its removal");
    let last_a = samples
        .iter()
        .filter(|s| s.backend == "a")
        .map(|s| s.at + s.latency)
        .max()
        .expect("a answered before");
    let took_remove = last_a.saturating_sub(removed);
    eprintln!(
        "dns: address removed -> last request on it after {took_remove:?}; {} requests, {} failed; a opened {} connection(s) before the change and {} in all",
        samples.len(),
        failures(&samples).len(),
        a_conns,
        a.connections()
    );
    assert!(
        took_remove <= REFRESH + Duration::from_secs(1),
        "{took_remove:?}"
    );
    assert_eq!(failures(&samples), Vec::<String>::new());
    // a kept its pool while it stayed: none of its connections was closed
    // when c joined (a burst of load may still open one more).
    assert_eq!(a_closed_when_c_joined, a_closed, "a's pool was not kept");
    let names: Vec<String> = status_backends(&p).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            format!("app/127.0.0.3:{port}"),
            format!("app/127.0.0.4:{port}")
        ]
    );
    assert!(p.metric("switchyard_dns_resolutions_total{upstream=\"app\",result=\"ok\"}") >= 2.0);
}

#[test]
fn srv_weights_become_the_backends_weights() {
    let (a, b) = (
        Backend::start_on("a", "127.0.0.2:0".parse().unwrap()),
        Backend::start_on("b", "127.0.0.3:0".parse().unwrap()),
    );
    let dns = Dnsmasq::start(
        "127.0.0.2 host-a.test\n127.0.0.3 host-b.test\n",
        &[
            format!("_http._tcp.app.test,host-a.test,{},0,3", a.addr.port()),
            format!("_http._tcp.app.test,host-b.test,{},0,1", b.addr.port()),
        ],
    );
    let p = proxy(
        &dns,
        "weighted",
        "{ name = \"app\", srv = \"_http._tcp.app.test\" }",
    );
    let status = p.status();
    let weights: Vec<(String, u64)> = status["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            (format!("app/host-a.test:{}", a.addr.port()), 3),
            (format!("app/host-b.test:{}", b.addr.port()), 1)
        ]
    );
    let agent = client();
    let replies: Vec<String> = (0..800).map(|_| get(&agent, &p.url("/")).body).collect();
    let counts = tally(replies.iter().map(String::as_str));
    let share = counts.get("a").copied().unwrap_or(0) as f64 / 800.0;
    eprintln!(
        "dns: SRV weights 3 and 1 -> {counts:?} ({:.1}% on a)",
        share * 100.0
    );
    assert!((share - 0.75).abs() <= 0.03, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 800);
}

#[test]
fn a_dns_server_that_goes_away_leaves_the_backends_as_they_were() {
    let port = port_free_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let (_a, b, c) = (
        backend_on("a", "127.0.0.2", port),
        backend_on("b", "127.0.0.3", port),
        backend_on("c", "127.0.0.4", port),
    );
    let mut dns = Dnsmasq::start("127.0.0.2 app.test\n127.0.0.3 app.test\n", &[]);
    let p = proxy(
        &dns,
        "round-robin",
        &format!("{{ name = \"app\", dns = \"app.test:{port}\" }}"),
    );
    let load = LatencyLoad::start_paced(&p.url("/"), 4, Duration::from_millis(2), no_headers);
    dns.stop();
    assert!(
        wait_for(Duration::from_secs(20), || p
            .log()
            .contains(&format!("lookup of dns app.test:{port} failed"))),
        "{}",
        p.log()
    );
    // Both backends keep serving while DNS is down.
    let before = b.requests();
    std::thread::sleep(REFRESH);
    assert!(b.requests() > before, "b got nothing while DNS was down");
    assert_eq!(status_backends(&p).len(), 2);
    assert!(
        p.metric("switchyard_dns_resolutions_total{upstream=\"app\",result=\"failed\"}") >= 1.0
    );

    // Back, with a third address: updates resume.
    dns.set_hosts("127.0.0.2 app.test\n127.0.0.3 app.test\n127.0.0.4 app.test\n");
    dns.restart();
    let back = Instant::now();
    assert!(
        wait_for(REFRESH + Duration::from_secs(8), || c.requests() > 0),
        "{}",
        p.log()
    );
    eprintln!(
        "dns: server restarted -> new backend in traffic after {:?}",
        back.elapsed()
    );
    let samples = load.stop();
    assert_eq!(failures(&samples), Vec::<String>::new());
    eprintln!(
        "dns: server down and back: {} requests, 0 failed",
        samples.len()
    );
    assert!(p.log().contains("resolves again"), "{}", p.log());
}

#[test]
fn a_name_that_resolves_only_later_starts_the_group_empty() {
    let a = Backend::start_on("a", "127.0.0.2:0".parse().unwrap());
    let dns = Dnsmasq::start("", &[]);
    let p = proxy(
        &dns,
        "round-robin",
        &format!("{{ name = \"app\", dns = \"app.test:{}\" }}", a.addr.port()),
    );
    assert!(
        p.log().contains("no backend from it until it resolves"),
        "{}",
        p.log()
    );
    let agent = client();
    assert_eq!(get(&agent, &p.url("/")).status, 503);
    dns.set_hosts("127.0.0.2 app.test\n");
    assert!(
        wait_for(REFRESH + Duration::from_secs(8), || {
            get(&agent, &p.url("/")).body == "a"
        }),
        "{}",
        p.log()
    );
}

fn refused(config: &str, line: usize, reason: &str) {
    let (ok, text, path) = check_with(config, |_| {});
    assert!(!ok, "check accepted a broken config:\n{text}");
    assert!(
        text.contains(&format!("{path}:{line}:")),
        "no {path}:{line}: in:\n{text}"
    );
    assert!(text.contains(reason), "no {reason:?} in:\n{text}");
}

fn with_backend(entry: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.app]\npolicy = \"round-robin\"\n{extra}\nbackends = [\n  {entry},\n]\n"
    )
}

#[test]
fn check_refuses_dns_mistakes_and_warns_about_names_that_do_not_resolve() {
    let entry_line = 8;
    for (entry, reason) in [
        (
            "{ name = \"app\", address = \"127.0.0.1:1\", dns = \"app.test:80\" }",
            "address, dns and srv exclude each other",
        ),
        (
            "{ name = \"app\", dns = \"app.test\" }",
            "needs a port, as in \"app.test:80\"",
        ),
        (
            "{ name = \"app\", dns = \"127.0.0.1:80\" }",
            "is an IP address, not a name",
        ),
        (
            "{ name = \"app\", srv = \"app.test\" }",
            "is not an SRV name _SERVICE._PROTO.NAME",
        ),
        (
            "{ name = \"app\", srv = \"_http._tcp.app.test:80\" }",
            "an SRV name has none",
        ),
        (
            "{ name = \"app\", srv = \"_http._tcp.app.test\", weight = 2 }",
            "takes each backend's weight from its SRV record",
        ),
        ("{ name = \"app\" }", "give address = "),
    ] {
        refused(&with_backend(entry, ""), entry_line, reason);
    }
    refused(
        &with_backend(
            "{ name = \"a\", address = \"127.0.0.1:1\" }",
            "dns-refresh = \"5s\"",
        ),
        6,
        "this upstream has no dns or srv backend to refresh",
    );
    refused(
        &with_backend(
            "{ name = \"a\", dns = \"app.test:80\" }",
            "dns-refresh = \"100ms\"",
        ),
        6,
        "dns-refresh: at least 1s",
    );
    refused(
        &with_backend("{ name = \"a\", dns = \"app.test:80\" }", "").replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nresolver = \"dns.example\"",
        ),
        3,
        "server.resolver: \"dns.example\" is not a DNS server's IP address",
    );

    // A name that does not resolve is no mistake: the proxy would start.
    let dns = Dnsmasq::start("127.0.0.2 app.test\n", &[]);
    let config = with_backend(
        "{ name = \"app\", dns = \"app.test:80\" }, { name = \"later\", dns = \"later.test:80\" }",
        "",
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nresolver = \"{}\"", dns.addr()),
    );
    let (ok, text, _) = check_with(&config, |_| {});
    assert!(ok, "{text}");
    assert!(
        text.contains("1 backend(s) (1 found by 2 dns/srv entries)"),
        "{text}"
    );
    assert!(
        text.contains("lookup of dns later.test:80 failed (no A or AAAA records)"),
        "{text}"
    );
}
