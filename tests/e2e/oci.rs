//! Policies in an OCI registry: `policy push` publishes one, a proxy pulls
//! it by tag or by digest and keeps serving it from its cache while the
//! registry is down; what is not a Wasm component artifact, not the pinned
//! component, or only reachable over plain HTTP without being listed in
//! `insecure-registries` is refused with a clear error.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::registry::{Registry, push, sha256};

/// One upstream `app` (a of weight 5, b, c) under `policy` (TOML, quoted
/// or a table); the policy is on line 7.
fn oci_config(policy: &str, insecure: &str, cache: &Path, backends: [&Backend; 3]) -> String {
    let [a, b, c] = backends;
    format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\ncache-dir = \"{}\"\ninsecure-registries = [{insecure}]\n\n[upstreams.app]\npolicy = {policy}\nbackends = [\n  {{ name = \"a\", address = \"{}\", weight = 5 }},\n  {},\n  {},\n]\n",
        cache.display(),
        a.addr,
        b.entry(),
        c.entry()
    )
}

fn with_admin(config: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{config}")
}

/// `switchyard check` must refuse `config` at line 7 with `reason`.
fn refused(config: &str, reason: &str) -> String {
    let (ok, text, path) = check_with(&config.replace("{port}", "0"), |_| {});
    assert!(!ok, "check accepted it:\n{text}");
    assert!(
        text.contains(&format!("{path}:7:10: upstreams.app.policy: ")),
        "{text}"
    );
    assert!(text.contains(reason), "no {reason:?} in:\n{text}");
    text
}

#[test]
fn a_pushed_policy_serves_and_still_serves_from_the_cache_with_the_registry_down() {
    let mut registry = Registry::start();
    let src = TempDir::new("oci-src");
    let policies = builtin_policies(src.path());
    let reference = registry.reference("policies/weighted:v1");
    let started = Instant::now();
    let pushed = push(&src.path().join("weighted.wasm"), &reference);
    eprintln!(
        "policy push of weighted ({} bytes): {:?}",
        policies["weighted"].len(),
        started.elapsed()
    );
    assert_eq!(pushed.component, sha256(&policies["weighted"]));
    assert!(
        pushed.text.contains(&format!(
            "{}@{}",
            registry.reference("policies/weighted"),
            pushed.manifest
        )),
        "{}",
        pushed.text
    );

    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let cache = TempDir::new("oci-cache");
    let insecure = format!("\"{}\"", registry.addr);
    let config = with_admin(&oci_config(
        &format!("\"{reference}\""),
        &insecure,
        cache.path(),
        [&a, &b, &c],
    ));
    let proxy = Proxy::start(&config);
    assert_eq!(split(&proxy, 70), weighted_split());
    let policy = &proxy.status()["upstreams"][0]["policy"];
    assert_eq!(policy["name"], reference.as_str());
    assert_eq!(policy["digest"], pushed.component.as_str());
    let log = proxy.log();
    let pulled = log
        .lines()
        .find(|l| l.contains(&format!("pulled {reference}")))
        .unwrap_or_else(|| panic!("no pull logged:\n{log}"));
    eprintln!("{}", &pulled[pulled.find("pulled").unwrap_or(0)..]);
    drop(proxy);

    // The registry goes away; the proxy restarts on its cache.
    registry.stop();
    let proxy = Proxy::start(&config);
    let log = proxy.log();
    assert!(
        log.contains(&format!("{reference}: cannot reach {}", registry.addr))
            && log.contains("loading the copy pulled at"),
        "{log}"
    );
    assert_eq!(split(&proxy, 70), weighted_split());
    assert_eq!(
        proxy.status()["upstreams"][0]["policy"]["digest"],
        pushed.component.as_str()
    );
    drop(proxy);

    // Without that cache, the same config is refused: there is nothing to
    // serve.
    let empty = TempDir::new("oci-empty-cache");
    let config = oci_config(
        &format!("\"{reference}\""),
        &insecure,
        empty.path(),
        [&a, &b, &c],
    );
    refused(&config, "and no copy of it is cached in");
}

#[test]
fn a_digest_reference_is_pulled_and_what_is_not_the_policy_is_refused() {
    let registry = Registry::start();
    let src = TempDir::new("oci-digest-src");
    let policies = builtin_policies(src.path());
    let pushed = push(
        &src.path().join("weighted.wasm"),
        &registry.reference("policies/weighted:v1"),
    );
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let insecure = format!("\"{}\"", registry.addr);
    let cache = TempDir::new("oci-digest-cache");
    let config = |policy: &str| oci_config(policy, &insecure, cache.path(), [&a, &b, &c]);

    // By digest: pulled, and it serves.
    let by_digest = registry.reference(&format!("policies/weighted@{}", pushed.manifest));
    let proxy = Proxy::start(&config(&format!("\"{by_digest}\"")));
    assert_eq!(split(&proxy, 70), weighted_split());
    drop(proxy);
    // Pinned to its component as well.
    let (ok, text, _) = check_with(
        &config(&format!(
            "{{ oci = \"{by_digest}\", sha256 = \"{}\" }}",
            pushed.component
        ))
        .replace("{port}", "0"),
        |_| {},
    );
    assert!(ok, "{text}");

    // A digest the registry does not have.
    let unknown = registry.reference(&format!(
        "policies/weighted@{}",
        sha256(b"no such manifest")
    ));
    refused(
        &config(&format!("\"{unknown}\"")),
        &format!("cannot pull {unknown}: the registry refused: "),
    );
    // A tag that is not there.
    let missing = registry.reference("policies/weighted:v9");
    refused(
        &config(&format!("\"{missing}\"")),
        &format!("cannot pull {missing}: the registry refused: "),
    );
    // The right artifact, but not the pinned component.
    let tag = registry.reference("policies/weighted:v1");
    refused(
        &config(&format!(
            "{{ oci = \"{tag}\", sha256 = \"{}\" }}",
            sha256(&policies["round-robin"])
        )),
        &format!(
            "{tag} has {}, but the config pins {}; refused",
            pushed.component,
            sha256(&policies["round-robin"])
        ),
    );
    // A container image, not a Wasm artifact.
    registry.push_raw(
        "policies/image:v1",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        b"not a policy",
    );
    let image = registry.reference("policies/image:v1");
    refused(
        &config(&format!("\"{image}\"")),
        &format!(
            "cannot pull {image}: it is not a Wasm component artifact (config media type \"application/vnd.oci.image.config.v1+json\", not \"application/vnd.wasm.config.v0+json\")"
        ),
    );
    // The Wasm layout around bytes that are no component.
    registry.push_raw(
        "policies/junk:v1",
        "application/vnd.wasm.config.v0+json",
        "application/wasm",
        b"junk",
    );
    let junk = registry.reference("policies/junk:v1");
    refused(
        &config(&format!("\"{junk}\"")),
        &format!("{junk} is not a WebAssembly component"),
    );
}

#[test]
fn a_registry_not_listed_as_insecure_is_spoken_to_over_https_only() {
    // A listener that records the first bytes of each connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut firsts: Vec<Vec<u8>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 8];
                        let n = s.read(&mut buf).unwrap_or(0);
                        firsts.push(buf[..n].to_vec());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            firsts
        })
    };
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let cache = TempDir::new("oci-https-cache");
    let reference = format!("oci://127.0.0.1:{port}/policies/weighted:v1");
    // Another registry is listed; this one is not.
    let config = oci_config(
        &format!("\"{reference}\""),
        "\"127.0.0.1:1\"",
        cache.path(),
        [&a, &b, &c],
    );
    refused(
        &config,
        &format!("cannot pull {reference}: cannot reach 127.0.0.1:{port} over https: "),
    );
    let text = refused(
        &config,
        "(a registry that speaks plain HTTP must be listed in [server] insecure-registries)",
    );
    stop.store(true, Ordering::Relaxed);
    let firsts = watcher.join().unwrap();
    assert!(
        !firsts.is_empty(),
        "the registry was not contacted:\n{text}"
    );
    for first in &firsts {
        // 0x16: a TLS handshake record, never "GET /v2/...".
        assert_eq!(first.first(), Some(&0x16), "not TLS: {first:?}");
    }
}
