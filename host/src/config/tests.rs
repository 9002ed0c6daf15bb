//! Unit tests of the config: the documented example, locations in errors,
//! defaults, and every refusal.

use super::*;
use std::path::Path;
use std::time::Duration;

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("test.toml"), src)
}

const ISSUE_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:18080"

[upstreams.app]
policy = "weighted"            # built-in name, or a path to a .wasm component
backends = [
  { name = "a", address = "127.0.0.1:19001", weight = 5 },
  { name = "b", address = "127.0.0.1:19002" },
  { name = "c", address = "127.0.0.1:19003" },
]
[upstreams.app.policy-config]  # optional, handed to the policy as is
cookie = "sy-backend"

[[routes]]
path-prefix = "/"
upstream = "app"
"#;

#[test]
fn the_documented_example_loads() {
    let c = parse(ISSUE_EXAMPLE).unwrap();
    assert_eq!(
        c.listeners,
        [ListenerConfig {
            addr: "127.0.0.1:18080".parse().unwrap(),
            tls: None
        }]
    );
    let app = &c.upstreams[0];
    assert_eq!(app.policy, PolicySource::Builtin("weighted".into()));
    assert_eq!(
        app.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [5, 1, 1]
    );
    assert_eq!(
        app.policy_config,
        [("cookie".to_string(), "sy-backend".to_string())]
    );
    assert_eq!(app.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.routes.len(), 1);
}

#[test]
fn syntax_errors_name_file_and_line() {
    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.app\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:3:"), "{err}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let src = ISSUE_EXAMPLE.replace(
        "policy = \"weighted\"",
        "policy = \"weighted\"\npolicyy = 1",
    );
    let err = parse(&src).unwrap_err().to_string();
    assert!(err.contains("test.toml:7:"), "{err}");
    assert!(err.contains("unknown field `policyy`"), "{err}");
}

#[test]
fn a_route_to_a_missing_upstream_is_refused() {
    let src = ISSUE_EXAMPLE.replace("upstream = \"app\"", "upstream = \"ap\"");
    let err = parse(&src).unwrap_err().to_string();
    assert!(err.contains("test.toml:17:"), "{err}");
    assert!(
        err.contains("no upstream named \"ap\" (defined: app)"),
        "{err}"
    );
}

#[test]
fn zero_weights_and_bad_addresses_are_refused() {
    let err = parse(&ISSUE_EXAMPLE.replace("weight = 5", "weight = 0"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstreams.app.backends[0].weight: must be at least 1"),
        "{err}"
    );
    let err = parse(&ISSUE_EXAMPLE.replace("127.0.0.1:19002", "127.0.0.1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstreams.app.backends[1].address"), "{err}");
}

#[test]
fn the_native_round_robin_is_named_and_nothing_else_native_is() {
    let src = ISSUE_EXAMPLE.replace("\"weighted\"", "\"native:round-robin\"");
    let c = parse(&src).unwrap();
    assert_eq!(
        c.upstreams[0].policy,
        PolicySource::Native("round-robin".into())
    );
    assert_eq!(c.upstreams[0].policy.to_string(), "native:round-robin");
    let err = parse(&ISSUE_EXAMPLE.replace("\"weighted\"", "\"native:weighted\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml:6:10:"), "{err}");
    assert!(
        err.contains("the only native policy is native:round-robin"),
        "{err}"
    );
}

#[test]
fn policy_paths_are_relative_to_the_config_file() {
    let src = ISSUE_EXAMPLE.replace("\"weighted\"", "\"plugins/my.wasm\"");
    let c = Config::parse(Path::new("/etc/switchyard/main.toml"), &src).unwrap();
    assert_eq!(
        c.upstreams[0].policy,
        PolicySource::File("/etc/switchyard/plugins/my.wasm".into())
    );
}

#[test]
fn policy_config_is_flattened_with_dotted_keys_and_toml_values() {
    let src = ISSUE_EXAMPLE.replace(
        "cookie = \"sy-backend\"",
        "cookie = \"sy\"\nmax-age = 60\nsecure = true\nlist = [\"a\", \"b\"]\n[upstreams.app.policy-config.canary]\nheader = \"x-canary\"",
    );
    let c = parse(&src).unwrap();
    let got: Vec<(&str, &str)> = c.upstreams[0]
        .policy_config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("canary.header", "x-canary"),
            ("cookie", "sy"),
            ("list", "[\"a\", \"b\"]"),
            ("max-age", "60"),
            ("secure", "true")
        ]
    );
}

#[test]
fn listen_takes_a_string_or_a_list() {
    let src = ISSUE_EXAMPLE.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = [\"127.0.0.1:1\", \"[::1]:2\"]",
    );
    assert_eq!(parse(&src).unwrap().listeners.len(), 2);
    let err = parse(&ISSUE_EXAMPLE.replace("127.0.0.1:18080", "localhost"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.listen"), "{err}");
}

#[test]
fn routes_are_ordered_most_specific_first() {
    let src = r#"
[server]
listen = "127.0.0.1:1"
[upstreams.a]
policy = "round-robin"
backends = [{ name = "x", address = "127.0.0.1:2" }]
[upstreams.b]
policy = "round-robin"
backends = [{ name = "x", address = "127.0.0.1:3" }]
[[routes]]
upstream = "a"
[[routes]]
path-prefix = "/api"
upstream = "b"
[[routes]]
host = "*.example.com"
upstream = "b"
[[routes]]
host = "Shop.Example.com"
upstream = "a"
"#;
    let c = parse(src).unwrap();
    let hosts: Vec<_> = c
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path_prefix.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            (HostMatch::Exact("shop.example.com".into()), "/"),
            (HostMatch::Suffix(".example.com".into()), "/"),
            (HostMatch::Any, "/api"),
            (HostMatch::Any, "/"),
        ]
    );
}

#[test]
fn one_upstream_needs_no_routes_but_two_do() {
    let one = ISSUE_EXAMPLE.split("[[routes]]").next().unwrap();
    assert_eq!(parse(one).unwrap().routes.len(), 1);
    let two = format!(
        "{one}\n[upstreams.other]\npolicy = \"round-robin\"\nbackends = [{{ name = \"x\", address = \"127.0.0.1:2\" }}]\n"
    );
    assert!(parse(&two).unwrap_err().to_string().contains("routes:"));
}

#[test]
fn listen_entries_may_be_tls_tables() {
    let src = ISSUE_EXAMPLE.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = [ \"127.0.0.1:8080\", { address = \"127.0.0.1:8443\", tls = { cert = \"cert.pem\", key = \"key.pem\" } } ]",
    );
    let c = Config::parse(Path::new("/etc/sy/main.toml"), &src).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].tls, None);
    let tls = c.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/sy/cert.pem"));
    assert_eq!(tls.key, Path::new("/etc/sy/key.pem"));
    let bad = ISSUE_EXAMPLE.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = [{ address = \"127.0.0.1:8443\", tsl = {} }]",
    );
    let err = parse(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown field `tsl`"), "{err}");
}

#[test]
fn health_checks_backups_and_limits_parse() {
    let src = ISSUE_EXAMPLE
        .replace(
            "{ name = \"c\", address = \"127.0.0.1:19003\" }",
            "{ name = \"c\", address = \"127.0.0.1:19003\", backup = true, h2 = true }",
        )
        .replace(
            "[upstreams.app.policy-config]",
            "retries = 1\nretry-timeout = \"2s\"\n[upstreams.app.health-check]\npath = \"/healthz\"\ninterval = \"1s\"\nexpect-status = \"2xx\"\nrise = 2\nfall = 3\n[upstreams.app.policy-config]",
        )
        .replace("path-prefix = \"/\"", "path-prefix = \"/\"\nmax-body-size = \"1MiB\"");
    let c = parse(&src).unwrap();
    let up = &c.upstreams[0];
    assert!(up.backends[2].backup && up.backends[2].h2);
    assert_eq!((up.retries, up.retry_timeout), (1, Duration::from_secs(2)));
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_str(), hc.expect, hc.rise, hc.fall),
        ("/healthz", (200, 299), 2, 3)
    );
    assert_eq!(c.routes[0].max_body_size, Some(1024 * 1024));
}

#[test]
fn bad_durations_are_refused_with_the_key() {
    let src = ISSUE_EXAMPLE.replace(
        "policy = \"weighted\"",
        "policy = \"weighted\"\nconnect-timeout = \"soon\"",
    );
    let err = parse(&src).unwrap_err().to_string();
    assert!(err.contains("upstreams.app.connect-timeout"), "{err}");
}

#[test]
fn new_timeouts_have_nginx_like_defaults_and_parse() {
    let c = parse(ISSUE_EXAMPLE).unwrap();
    let up = &c.upstreams[0];
    assert_eq!(up.read_timeout, DEFAULT_READ_TIMEOUT);
    assert_eq!(up.send_timeout, DEFAULT_SEND_TIMEOUT);
    assert_eq!(up.tunnel_idle_timeout, Duration::from_secs(3600));
    assert_eq!(
        up.max_connections_per_backend,
        DEFAULT_MAX_CONNECTIONS_PER_BACKEND
    );
    assert_eq!(c.limits.client_body_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.upgrades, ["websocket"]);
    let src = ISSUE_EXAMPLE
        .replace(
            "policy = \"weighted\" ",
            "read-timeout = \"2s\"\nsend-timeout = \"3s\"\ntunnel-idle-timeout = \"4s\"\nmax-connections-per-backend = 7\npolicy = \"weighted\" ",
        )
        .replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"127.0.0.1:18080\"\nclient-body-timeout = \"5s\"\ntls-handshake-timeout = \"6s\"\nupgrades = [\"WebSocket\", \"my-proto\"]",
        );
    let c = parse(&src).unwrap();
    let up = &c.upstreams[0];
    assert_eq!(
        (up.read_timeout, up.send_timeout, up.tunnel_idle_timeout),
        (
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_secs(4)
        )
    );
    assert_eq!(up.max_connections_per_backend, 7);
    assert_eq!(c.limits.client_body_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(6));
    assert_eq!(c.upgrades, ["websocket", "my-proto"]);
}

#[test]
fn zero_timeouts_and_zero_counts_are_refused_where_they_are_written() {
    for (key, value) in [
        ("response-timeout", "\"0s\""),
        ("connect-timeout", "\"0s\""),
        ("retry-timeout", "\"0ms\""),
        ("read-timeout", "\"0s\""),
        ("send-timeout", "\"0s\""),
        ("tunnel-idle-timeout", "\"0s\""),
        ("policy-max-failures", "0"),
        ("max-connections-per-backend", "0"),
    ] {
        let src = ISSUE_EXAMPLE.replace(
            "policy = \"weighted\" ",
            &format!("{key} = {value}\npolicy = \"weighted\" "),
        );
        let err = parse(&src).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:6:"), "{key}: {err}");
        assert!(err.contains(&format!("upstreams.app.{key}")), "{err}");
    }
    let err = parse(&ISSUE_EXAMPLE.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\nclient-idle-timeout = \"0s\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("test.toml:4:23: server.client-idle-timeout: must be above 0"),
        "{err}"
    );
}

#[test]
fn health_check_hosts_must_be_authorities() {
    let with_host = |h: &str| {
        ISSUE_EXAMPLE.replace(
            "[upstreams.app.policy-config]",
            &format!("[upstreams.app.health-check]\nhost = \"{h}\"\n[upstreams.app.policy-config]"),
        )
    };
    assert_eq!(
        parse(&with_host("app.internal:8080")).unwrap().upstreams[0]
            .health_check
            .as_ref()
            .unwrap()
            .host
            .as_deref(),
        Some("app.internal:8080")
    );
    for bad in ["a/b", "x y", "user@app", "app:"] {
        let err = parse(&with_host(bad)).unwrap_err().to_string();
        assert!(err.contains("upstreams.app.health-check.host"), "{err}");
        assert!(err.contains("test.toml:13:8:"), "{err}");
    }
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let src = ISSUE_EXAMPLE
        .replace("weight = 5", "weight = 0")
        .replace("127.0.0.1:19002", "127.0.0.1")
        .replace("upstream = \"app\"", "upstream = \"ap\"");
    let err = parse(&src).unwrap_err();
    let lines: Vec<String> = err.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].contains("backends[0].weight"), "{lines:#?}");
    assert!(lines[1].contains("backends[1].address"), "{lines:#?}");
    assert!(lines[2].contains("no upstream named \"ap\""), "{lines:#?}");
}

#[test]
fn the_access_log_path_is_located() {
    let src = format!("{ISSUE_EXAMPLE}\n[access-log]\npath = \"logs/access.log\"\n");
    let c = Config::parse(Path::new("/etc/sy/main.toml"), &src).unwrap();
    let log = c.access_log.unwrap();
    assert_eq!(
        log.path.as_deref(),
        Some(Path::new("/etc/sy/logs/access.log"))
    );
    assert_eq!((log.origin.line, log.origin.column), (20, 8));
}

#[test]
fn admin_token_files_are_relative_to_the_config() {
    let src = format!(
        "{ISSUE_EXAMPLE}\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken-file = \"admin.token\"\n"
    );
    let c = Config::parse(Path::new("/etc/sy/main.toml"), &src).unwrap();
    let admin = c.admin.unwrap();
    assert_eq!(admin.addr, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(
        admin.token_file.as_deref(),
        Some(Path::new("/etc/sy/admin.token"))
    );
}

const PIN: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn a_pinned_file_or_reference_is_a_table_with_its_sha256() {
    let src = ISSUE_EXAMPLE.replace(
        "\"weighted\"",
        &format!(
            "{{ path = \"plugins/my.wasm\", sha256 = \"sha256:{}\" }}",
            PIN.to_uppercase()
        ),
    );
    let c = Config::parse(Path::new("/etc/switchyard/main.toml"), &src).unwrap();
    let app = &c.upstreams[0];
    assert_eq!(
        app.policy,
        PolicySource::File("/etc/switchyard/plugins/my.wasm".into())
    );
    assert_eq!(app.policy_sha256.as_deref(), Some(PIN), "lower-cased");

    let src = ISSUE_EXAMPLE.replace(
        "\"weighted\"",
        &format!("{{ oci = \"oci://127.0.0.1:5000/p/w:v1\", sha256 = \"{PIN}\" }}"),
    );
    let app = &parse(&src).unwrap().upstreams[0];
    let PolicySource::Oci(r) = &app.policy else {
        panic!("{:?}", app.policy)
    };
    assert_eq!(r.to_string(), "oci://127.0.0.1:5000/p/w:v1");
    assert_eq!(app.policy_sha256.as_deref(), Some(PIN));
    // The string form has no pin.
    let src = ISSUE_EXAMPLE.replace("\"weighted\"", "\"oci://127.0.0.1:5000/p/w:v1\"");
    let app = &parse(&src).unwrap().upstreams[0];
    assert!(matches!(app.policy, PolicySource::Oci(_)));
    assert_eq!(app.policy_sha256, None);
}

#[test]
fn a_bad_pin_or_policy_table_is_refused_where_it_is_written() {
    for (policy, says) in [
        (
            "{ path = \"my.wasm\", sha256 = \"abc\" }".to_string(),
            "upstreams.app.policy.sha256: \"abc\" is not a SHA-256",
        ),
        (
            format!("{{ path = \"my.wasm\", oci = \"oci://r.example/p/w\", sha256 = \"{PIN}\" }}"),
            "either `path` or `oci`, not both",
        ),
        (
            format!("{{ sha256 = \"{PIN}\" }}"),
            "upstreams.app.policy: give `path",
        ),
        (
            "{ path = \"oci://r.example/p/w:v1\" }".to_string(),
            "goes in `oci = ...`",
        ),
        (
            "{ oci = \"oci://r.example/P/w:v1\" }".to_string(),
            "upstreams.app.policy.oci: \"P/w\" is not a repository",
        ),
        (
            "\"oci://r.example/p/w@sha256:abc\"".to_string(),
            "upstreams.app.policy: \"sha256:abc\" is not a digest",
        ),
    ] {
        let err = parse(&ISSUE_EXAMPLE.replace("\"weighted\"", &policy))
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml:6:10:"), "{policy}: {err}");
        assert!(err.contains(says), "{policy}: {err}");
    }
    let err = parse(&ISSUE_EXAMPLE.replace("\"weighted\"", "{ file = \"my.wasm\" }"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.toml:6:") && err.contains("unknown field `file`"),
        "{err}"
    );
}

#[test]
fn only_listed_registries_are_spoken_to_over_plain_http() {
    let src = ISSUE_EXAMPLE
        .replace(
            "listen = \"127.0.0.1:18080\"",
            "listen = \"127.0.0.1:18080\"\ninsecure-registries = [\"127.0.0.1:5000\"]",
        )
        .replace("\"weighted\"", "\"oci://127.0.0.1:5000/p/w:v1\"")
        .replace(
            "[[routes]]",
            "[upstreams.other]\npolicy = \"oci://127.0.0.1:5001/p/w:v1\"\nbackends = [{ name = \"a\", address = \"127.0.0.1:19001\" }]\n\n[[routes]]",
        );
    let c = parse(&src).unwrap();
    let plain: Vec<bool> = c
        .upstreams
        .iter()
        .map(|u| matches!(&u.policy, PolicySource::Oci(r) if r.plain_http))
        .collect();
    assert_eq!(plain, [true, false]);

    let src = ISSUE_EXAMPLE.replace(
        "listen = \"127.0.0.1:18080\"",
        "listen = \"127.0.0.1:18080\"\ninsecure-registries = [\"http://127.0.0.1:5000/\"]",
    );
    let err = parse(&src).unwrap_err().to_string();
    assert!(
        err.contains("test.toml:4:") && err.contains("server.insecure-registries"),
        "{err}"
    );
}

#[test]
fn startup_pages_are_given_back_unless_turned_off() {
    assert!(parse(ISSUE_EXAMPLE).unwrap().release_startup_pages);
    let off = ISSUE_EXAMPLE.replace("[server]\n", "[server]\nrelease-startup-pages = false\n");
    assert!(!parse(&off).unwrap().release_startup_pages);
    let wrong = ISSUE_EXAMPLE.replace("[server]\n", "[server]\nrelease-startup-pages = \"no\"\n");
    let err = parse(&wrong).unwrap_err().to_string();
    assert!(
        err.starts_with("test.toml:3:") && err.contains("expected a boolean"),
        "{err}"
    );
}
