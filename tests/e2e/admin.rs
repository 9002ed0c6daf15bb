//! The admin API: `/status` tells what runs, `/metrics` counts it, and it is
//! not the proxy's listener.

use crate::common::*;

#[test]
fn status_shows_the_config_policies_and_backends() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n{}",
        one_upstream("round-robin", &[&a, &b], "")
    );
    let proxy = Proxy::start(&config);
    let agent = client();
    for _ in 0..4 {
        assert_eq!(get(&agent, &proxy.url("/")).status, 200);
    }
    let s = proxy.status();
    assert_eq!(s["generation"], 1);
    let up = &s["upstreams"][0];
    assert_eq!(up["name"], "app");
    assert_eq!(up["policy"]["name"], "round-robin");
    assert_eq!(up["policy"]["healthy"], true);
    assert!(
        up["policy"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(up["policy"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    let limits = &up["policy"]["limits"];
    assert_eq!(limits["memory_bytes"], 4 << 20, "{s}");
    assert_eq!(limits["memory_from"], "the default");
    assert_eq!(limits["timeout_us"], 1000);
    assert_eq!(up["backends"][0]["name"], "a");
    assert_eq!(up["backends"][0]["address"], a.addr.to_string());
    assert_eq!(up["backends"][0]["healthy"], true);
    assert_eq!(up["backends"][0]["in_flight"], 0);

    let m = proxy.metrics();
    assert!(
        m.contains("switchyard_requests_total{upstream=\"app\",backend=\"a\",code=\"2xx\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_policy_decisions_total{upstream=\"app\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_policy_decision_seconds_count{upstream=\"app\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_backend_up{upstream=\"app\",backend=\"b\"} 1"),
        "{m}"
    );

    // The admin API is not on the proxy's port, nor the other way round.
    assert_eq!(get(&agent, &proxy.url("/status")).body, "a");
    assert_eq!(get(&agent, &proxy.admin_url("/nope")).status, 404);
    assert_eq!(get(&agent, &proxy.admin_url("/reload")).status, 405);
}

#[test]
fn a_non_loopback_admin_address_is_refused_unless_allowed() {
    let a = Backend::start("a");
    let dir = TempDir::new("admin-remote");
    let base = one_upstream("round-robin", &[&a], "").replace("{port}", "0");
    let path = dir.write(
        "refused.toml",
        format!("[admin]\nlisten = \"0.0.0.0:9901\"\n\n{base}"),
    );
    let out = check_config(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused.toml:2:") && err.contains("not a loopback address"),
        "{err}"
    );

    let path = dir.write(
        "allowed.toml",
        format!("[admin]\nlisten = \"0.0.0.0:9901\"\nallow-remote = true\n\n{base}"),
    );
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
