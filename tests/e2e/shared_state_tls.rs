//! Policy state shared through Redis over TLS (`rediss://` and `[state]
//! ca`): a `redis-server` serving TLS only, its certificate signed by a
//! private CA the test makes. Two proxies that trust that CA see each
//! other's key-value writes; a proxy that trusts another CA fails no
//! request, shows Redis down and says why; `switchyard check` refuses a
//! missing CA file at its line.

use std::time::Duration;

use crate::common::*;
use crate::shared_state::{Redis, config_with, crossing_times, free_port, sessions_policy, three};

/// A CA (its certificate, PEM) and a certificate for 127.0.0.1 it signed
/// (PEM, and its key).
pub(crate) struct Pki {
    pub(crate) ca: String,
    cert: String,
    key: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA certificate");
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "redis.test");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf certificate");
        Pki {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The `redis-server` arguments that serve TLS with `pki`'s certificate
/// (files written to `dir`; clients need no certificate), and what
/// `redis-cli` needs to reach it.
pub(crate) fn tls_args(pki: &Pki, dir: &TempDir) -> (Vec<String>, Vec<String>) {
    let ca = dir.write("ca.pem", &pki.ca);
    let cert = dir.write("redis.pem", &pki.cert);
    let key = dir.write("redis-key.pem", &pki.key);
    let path = |p: &std::path::Path| p.display().to_string();
    (
        vec![
            "--tls-cert-file".into(),
            path(&cert),
            "--tls-key-file".into(),
            path(&key),
            "--tls-ca-cert-file".into(),
            path(&ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        vec!["--tls".into(), "--cacert".into(), path(&ca)],
    )
}

/// A `redis-server` serving TLS only, with `pki`'s certificate.
fn tls_redis(pki: &Pki, dir: &TempDir) -> Redis {
    let (args, cli_args) = tls_args(pki, dir);
    Redis::start_with(free_port(), true, args, cli_args)
}

/// The config of a proxy whose `[state]` is `redis` trusting the CA in
/// its directory's `ca.pem`.
fn config(redis: &Redis, backends: &[&Backend]) -> String {
    let state = format!("redis = \"{}\"\nca = \"ca.pem\"", redis.url());
    config_with(&sessions_policy(), backends, Some(&state))
}

#[test]
fn two_proxies_share_state_over_tls_with_a_private_ca() {
    let pki = Pki::new("redis");
    let dir = TempDir::new("redis-tls");
    let redis = tls_redis(&pki, &dir);
    let (a, b, c) = three();
    let cfg = config(&redis, &[&a, &b, &c]);
    let with_ca = |d: &TempDir| {
        d.write("ca.pem", &pki.ca);
    };
    let (one, two) = (
        Proxy::start_with(&cfg, with_ca),
        Proxy::start_with(&cfg, with_ca),
    );
    let agent = client();
    let times = crossing_times(&agent, &one, &two, |_| "/");
    crate::figures!(
        "shared-state over TLS (rediss://, private CA): a key-value write seen by the other proxy after {:.0}–{:.0} ms (median {:.0} ms, 10 writes)",
        ms(times[0]),
        ms(times[9]),
        ms(times[5])
    );
    assert_eq!(
        redis
            .cli(&["HGET", "switchyard:{app}:kv", "session/s3"])
            .len(),
        1,
        "the session is not in the TLS redis"
    );
    for p in [&one, &two] {
        assert_eq!(p.metric("switchyard_state_redis_up"), 1.0);
    }
}

#[test]
fn a_proxy_that_trusts_another_ca_fails_no_request_and_reports_redis_down() {
    let pki = Pki::new("redis");
    let dir = TempDir::new("redis-tls");
    let redis = tls_redis(&pki, &dir);
    let (a, b, c) = three();
    let other = Pki::new("other");
    let cfg = config(&redis, &[&a, &b, &c]);
    let wrong_ca = Proxy::start_with(&cfg, |d| {
        d.write("ca.pem", &other.ca);
    });
    // Without `ca`: the system's roots, which do not have the test's CA.
    let system_roots = Proxy::start(&cfg.replace("ca = \"ca.pem\"\n", ""));
    let agent = client();
    for (proxy, trusting) in [
        (&wrong_ca, "another CA"),
        (&system_roots, "the system's roots (no ca)"),
    ] {
        let mut failed = 0;
        for i in 0..50 {
            let r = get_with(&agent, &proxy.url("/"), &[("x-session", &format!("s{i}"))]);
            if r.status != 200 {
                failed += 1;
            }
        }
        assert!(
            wait_for(Duration::from_secs(3), || proxy
                .metric("switchyard_state_redis_errors_total")
                >= 1.0),
            "no failed exchange counted:\n{}",
            proxy.log()
        );
        let log = proxy.log();
        let line = log
            .lines()
            .find(|l| l.contains("shared policy state served from this proxy's local values"))
            .unwrap_or_else(|| panic!("no warning:\n{log}"))
            .to_string();
        crate::figures!(
            "shared-state over TLS, a proxy trusting {trusting}: 50 requests, {failed} failed; it logs: {line}"
        );
        assert_eq!(failed, 0);
        assert_eq!(proxy.metric("switchyard_state_redis_up"), 0.0);
        assert!(
            line.contains(&format!("rediss://127.0.0.1:{}", redis.port))
                && line.contains("invalid peer certificate")
                && line.contains("[state] ca"),
            "{line}"
        );
        // The policy ran on local state: its writes stayed here.
        let r = get_with(
            &agent,
            &proxy.url("/"),
            &[("x-session", "s0"), ("x-peek", "1")],
        );
        assert_eq!(crate::shared_state::session_cookie(&r), "known");
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

#[test]
fn check_refuses_a_missing_or_unusable_ca_at_its_line() {
    let a = Backend::start("a");
    for (prepare, want) in [
        (None, "cannot read"),
        (Some("not a certificate\n"), "no CERTIFICATE block"),
    ] {
        let cfg = config_with(
            std::path::Path::new("round-robin"),
            &[&a],
            Some("redis = \"rediss://127.0.0.1:6380\"\nca = \"ca.pem\""),
        )
        .replace("{port}", "0")
        .replace("{admin}", "0");
        let (ok, text, path) = check_with(&cfg, |d| {
            if let Some(text) = prepare {
                d.write("ca.pem", text);
            }
        });
        assert!(!ok, "{text}");
        let line = cfg.lines().position(|l| l.starts_with("ca =")).unwrap_or(0) + 1;
        assert!(
            text.contains(&format!("{path}:{line}:6: state.ca: ")) && text.contains(want),
            "{text}"
        );
    }
}
