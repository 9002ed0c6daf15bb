//! `policy = { path = "...", sha256 = "..." }`: a policy file whose digest
//! is not the pinned one is refused by `switchyard check`, at start, and at
//! every hot swap, while the policy already serving keeps serving.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::registry::sha256;

fn pinned_config(pin: &str, backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.entry()).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n\n[server]\nlisten = \"127.0.0.1:{{port}}\"\n\n[upstreams.app]\npolicy = {{ path = \"policy.wasm\", sha256 = \"{}\" }}\nbackends = [\n  {}\n]\n",
        pin.trim_start_matches("sha256:"),
        list.join(",\n  ")
    )
}

/// The three backends, `a` of weight 5.
fn backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    )
}

fn rename_over(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn check_and_run_refuse_a_file_that_is_not_the_pinned_one() {
    let src = TempDir::new("pin-src");
    let policies = builtin_policies(src.path());
    let (a, b, c) = backends();
    let pin = sha256(&policies["round-robin"]);
    let config = pinned_config(&pin, &[&a, &b, &c])
        .replace("{admin}", "0")
        .replace("{port}", "0");

    // The pinned file passes...
    let (ok, text, _) = check_with(&config, |d| {
        d.write("policy.wasm", &policies["round-robin"]);
    });
    assert!(ok, "{text}");

    // ... another one is refused, with file, line and both digests.
    let (ok, text, path) = check_with(&config, |d| {
        d.write("policy.wasm", &policies["weighted"]);
    });
    assert!(
        !ok,
        "check accepted a file that is not the pinned one:\n{text}"
    );
    let policy_file = Path::new(&path).with_file_name("policy.wasm");
    let want = format!(
        "{path}:8:10: upstreams.app.policy: {} has {}, but the config pins {pin}; refused",
        policy_file.display(),
        sha256(&policies["weighted"])
    );
    assert!(text.contains(&want), "no {want:?} in:\n{text}");

    // `run` refuses it the same way, before listening.
    let dir = TempDir::new("pin-run");
    dir.write("policy.wasm", &policies["weighted"]);
    let path = dir.write("switchyard.toml", config.replace("{port}", "0"));
    let out = sy().args(["run", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}:8:10:", path.display())) && err.contains("but the config pins"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn a_hot_swap_to_a_file_that_is_not_the_pinned_one_is_refused_under_load() {
    let (a, b, c) = backends();
    let src = TempDir::new("pin-swap-src");
    let policies = builtin_policies(src.path());
    let weighted = &policies["weighted"];
    let config = pinned_config(&sha256(weighted), &[&a, &b, &c]).replace(
        "{ name = \"a\", address",
        "{ name = \"a\", weight = 5, address",
    );
    assert!(config.contains("weight = 5"), "{config}");
    let proxy = Proxy::start_with(&config, |d| {
        d.write("policy.wasm", weighted);
    });
    assert_eq!(split(&proxy, 70), weighted_split());
    let file = proxy.dir.path().join("policy.wasm");

    // A file watch event: the new file is refused, the old policy serves,
    // no request fails, and the log and /status say why.
    let load = Load::start(&proxy.url("/"), 4);
    rename_over(&file, &policies["round-robin"]);
    let refused = |p: &Proxy| {
        p.status()["upstreams"][0]["policy"]["refused"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        wait_for(Duration::from_secs(5), || !refused(&proxy).is_empty()),
        "/status says nothing:\n{}",
        proxy.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (total, failures) = load.stop();
    assert!(total > 0);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let reason = refused(&proxy);
    let pins = format!("but the config pins {}", sha256(weighted));
    assert!(
        reason.contains(file.to_str().unwrap())
            && reason.contains(&pins)
            && reason.contains("the previous policy keeps serving"),
        "{reason}"
    );
    assert!(proxy.log().contains(&pins), "{}", proxy.log());
    assert_eq!(
        proxy.status()["upstreams"][0]["policy"]["digest"],
        sha256(weighted)
    );
    assert_eq!(split(&proxy, 70), weighted_split());

    // A reload (admin API; SIGHUP does the same) is refused too: the
    // generation stays, and /status says why.
    let reply = post(&client(), &proxy.admin_url("/reload"), b"");
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains(&pins), "{}", reply.body);
    let status = proxy.status();
    assert_eq!(status["generation"], 1);
    let why = status["reload_refused"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains(&pins), "{status}");
    assert_eq!(split(&proxy, 70), weighted_split());

    // The pinned file back: swapped in, and the refusal is gone.
    rename_over(&file, weighted);
    assert!(
        wait_for(Duration::from_secs(5), || refused(&proxy).is_empty()),
        "{}",
        proxy.log()
    );
    assert_eq!(split(&proxy, 70), weighted_split());
}
