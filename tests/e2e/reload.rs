//! Reloading the whole config: on SIGHUP, on `POST /reload`, and when the
//! file changes; a broken config is refused whole and the running one stays.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

fn config(a: &Backend, b: &Backend, c: &Backend, weights: [u32; 3], extra: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{{admin}}"

[server]
listen = "127.0.0.1:{{port}}"
{extra}

[upstreams.app]
policy = "weighted"
backends = [
  {{ name = "a", address = "{}", weight = {} }},
  {{ name = "b", address = "{}", weight = {} }},
  {{ name = "c", address = "{}", weight = {} }},
]
"#,
        a.addr, weights[0], b.addr, weights[1], c.addr, weights[2]
    )
}

fn exact(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn generation(proxy: &Proxy) -> u64 {
    proxy.status()["generation"].as_u64().unwrap()
}

#[test]
fn sighup_applies_new_weights_without_failing_a_request() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    // watch = false: only the signal may trigger the reload.
    let proxy = Proxy::start(&config(&a, &b, &c, [1, 1, 1], "watch = false"));
    assert_eq!(split(&proxy, 30), exact(&[("a", 10), ("b", 10), ("c", 10)]));

    let load = Load::start(&proxy.url("/"), 4);
    std::fs::write(
        &proxy.config,
        config(&a, &b, &c, [5, 1, 1], "watch = false")
            .replace("{port}", "0")
            .replace("{admin}", "0"),
    )
    .unwrap();
    proxy.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(5), || generation(&proxy) == 2),
        "{}",
        proxy.log()
    );
    // The signal reloaded it, not the file change (watch = false): one
    // reload, after the signal, none on the file's account.
    let log = proxy.log();
    let hup = log.find("SIGHUP received").expect("SIGHUP logged");
    let reloaded = log
        .find("configuration reloaded (generation 2)")
        .expect("reload logged");
    assert!(hup < reloaded, "{log}");
    assert!(!log.contains("changed, reloading"), "{log}");
    // Requests keep flowing under the new config.
    let after = load.sent();
    assert!(
        wait_for(Duration::from_secs(5), || load.sent() > after + 20),
        "no request served after the reload"
    );
    let (total, failures) = load.stop();
    assert!(
        total > 0 && failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(split(&proxy, 70), exact(&[("a", 50), ("b", 10), ("c", 10)]));

    // A broken edit is refused whole; the old config keeps serving.
    std::fs::write(&proxy.config, "[server]\nlisten = [\"127.0.0.1:0\"\n").unwrap();
    proxy.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(5), || proxy
            .log()
            .contains("refused, the running one stays")),
        "{}",
        proxy.log()
    );
    assert_eq!(generation(&proxy), 2);
    assert_eq!(split(&proxy, 70), exact(&[("a", 50), ("b", 10), ("c", 10)]));
    assert_eq!(
        proxy.metric("switchyard_config_reloads_total{result=\"failed\"}"),
        1.0
    );
}

#[test]
fn editing_the_config_file_reloads_it_and_keeps_unchanged_listeners() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = Proxy::start(&config(&a, &b, &c, [1, 1, 1], ""));
    // A keep-alive connection opened before the reload...
    let agent = client();
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);

    // ... a second listener appears, the weights change.
    let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second_port = second.local_addr().unwrap().port();
    drop(second);
    let text = config(&a, &b, &c, [5, 1, 1], "")
        .replace(
            "listen = \"127.0.0.1:{port}\"",
            &format!("listen = [\"127.0.0.1:0\", \"127.0.0.1:{second_port}\"]"),
        )
        .replace("{admin}", "0");
    std::fs::write(&proxy.config, text).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || generation(&proxy) == 2),
        "{}",
        proxy.log()
    );

    // The first listener kept its socket (same port, same connection works).
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);
    assert_eq!(
        proxy.log_count("listening on http://127.0.0.1:"),
        2,
        "{}",
        proxy.log()
    );
    let r = get(&client(), &format!("http://127.0.0.1:{second_port}/"));
    assert_eq!(r.status, 200);
}

#[test]
fn post_reload_reports_the_outcome() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = Proxy::start(&config(&a, &b, &c, [1, 1, 1], "watch = false"));
    let agent = client();
    let r = reduce_post(&agent, &proxy.admin_url("/reload"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"generation\": 2"), "{}", r.body);

    std::fs::write(
        &proxy.config,
        config(&a, &b, &c, [1, 1, 1], "watch = false")
            .replace("\"weighted\"", "\"wieghted\"")
            .replace("{port}", "0")
            .replace("{admin}", "0"),
    )
    .unwrap();
    let r = reduce_post(&agent, &proxy.admin_url("/reload"));
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("is not a built-in policy"), "{}", r.body);
    assert_eq!(generation(&proxy), 2);
    assert_eq!(get(&agent, &proxy.url("/")).status, 200);
}

fn reduce_post(agent: &ureq::Agent, url: &str) -> Reply {
    post(agent, url, b"")
}
