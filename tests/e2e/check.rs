//! `switchyard check`: a good config passes; each kind of broken config is
//! refused with the file, the line and the reason, like `nginx -t`.

use crate::common::*;

const GOOD: &str = r#"[server]
listen = "127.0.0.1:18080"

[upstreams.app]
policy = "weighted"
backends = [
  { name = "a", address = "127.0.0.1:19001", weight = 5 },
  { name = "b", address = "127.0.0.1:19002" },
  { name = "c", address = "127.0.0.1:19003" },
]
[upstreams.app.policy-config]
cookie = "sy-backend"

[[routes]]
path-prefix = "/"
upstream = "app"
"#;

fn refused(config: &str, prepare: impl FnOnce(&TempDir), line: usize, reason: &str) {
    let (ok, text, path) = check_with(config, prepare);
    assert!(!ok, "check accepted a broken config:\n{text}");
    assert!(
        text.contains(&format!("{path}:{line}:")),
        "no {path}:{line}: in:\n{text}"
    );
    assert!(text.contains(reason), "no {reason:?} in:\n{text}");
}

#[test]
fn a_good_config_passes() {
    let (ok, text, _) = check_with(GOOD, |_| {});
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
    // Policies without keys accept the table but say what they ignore.
    assert!(
        text.contains("policy-config.cookie is not used by weighted"),
        "{text}"
    );
    let (ok, text, _) = check_with(&GOOD.replace("\"weighted\"", "\"sticky-session\""), |_| {});
    assert!(ok, "{text}");
}

#[test]
fn toml_syntax_errors_are_refused() {
    refused(
        &GOOD.replace("[[routes]]", "[[routes]"),
        |_| {},
        14,
        "unclosed array table",
    );
}

#[test]
fn unknown_keys_are_refused() {
    refused(
        &GOOD.replace("upstream = \"app\"", "upstream = \"app\"\nweigth = 3"),
        |_| {},
        17,
        "unknown field `weigth`",
    );
}

#[test]
fn a_route_to_a_missing_upstream_is_refused() {
    refused(
        &GOOD.replace("upstream = \"app\"", "upstream = \"api\""),
        |_| {},
        16,
        "no upstream named \"api\"",
    );
}

#[test]
fn an_unknown_policy_name_is_refused() {
    refused(
        &GOOD.replace("\"weighted\"", "\"wieghted\""),
        |_| {},
        5,
        "\"wieghted\" is not a built-in policy",
    );
}

#[test]
fn a_missing_policy_file_is_refused() {
    refused(
        &GOOD.replace("\"weighted\"", "\"missing.wasm\""),
        |_| {},
        5,
        "cannot read",
    );
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let config = GOOD.replace("\"weighted\"", "\"junk.wasm\"");
    refused(
        &config,
        |d| {
            d.write("junk.wasm", b"this is not webassembly at all");
        },
        5,
        "is not a WebAssembly component",
    );
    // Random bytes after a valid header.
    refused(
        &config,
        |d| {
            let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
            bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
            d.write("junk.wasm", bytes);
        },
        5,
        "is not a valid WebAssembly component",
    );
}

#[test]
fn a_core_module_is_refused_with_a_hint() {
    refused(
        &GOOD.replace("\"weighted\"", "\"core.wasm\""),
        |d| {
            d.write("core.wasm", b"\0asm\x01\x00\x00\x00");
        },
        5,
        "core WebAssembly module, not a component",
    );
}

#[test]
fn a_component_that_does_not_implement_the_world_is_refused() {
    // The smallest valid component: it exports nothing.
    refused(
        &GOOD.replace("\"weighted\"", "\"empty.wasm\""),
        |d| {
            d.write("empty.wasm", b"\0asm\x0d\x00\x01\x00");
        },
        5,
        "does not implement a switchyard:policy world (0.2.0, or 0.1.0)",
    );
}

#[test]
fn a_policy_that_loops_in_its_first_call_is_refused_for_that_call() {
    // The dry run's first call has the 2 s first-load deadline, its second
    // `policy-timeout`. With the two equal, a first call that runs past its
    // deadline is still reported as the first call, not the second.
    let config = GOOD
        .replace("\"weighted\"", "\"loops.wasm\"\npolicy-timeout = \"2s\"")
        .replace(
            "[upstreams.app.policy-config]\ncookie = \"sy-backend\"\n",
            "",
        );
    let (ok, text, path) = check_with(&config, |d| {
        d.write("loops.wasm", crate::fixtures::always_loops());
    });
    assert!(!ok, "check accepted a policy that loops:\n{text}");
    assert!(
        text.contains(&format!("{path}:5:")),
        "no {path}:5: in:\n{text}"
    );
    assert!(text.contains("ran past its deadline"), "{text}");
    assert!(!text.contains("second call"), "{text}");
}

#[test]
fn a_policy_that_refuses_its_config_is_refused_with_its_message() {
    let config = GOOD.replace("\"weighted\"", "\"sticky-session\"").replace(
        "cookie = \"sy-backend\"",
        "cookie = \"sy-backend\"\nsame-site = \"sometimes\"",
    );
    refused(
        &config,
        |_| {},
        5,
        "policy-config.same-site: expected \"strict\", \"lax\" or \"none\"",
    );
    refused(
        &config.replace("cookie = \"sy-backend\"", "cokie = \"sy-backend\""),
        |_| {},
        5,
        "policy-config.cokie: unknown key",
    );
}

#[test]
fn run_refuses_a_broken_config_the_same_way() {
    let dir = TempDir::new("run-broken");
    let path = dir.write(
        "switchyard.toml",
        GOOD.replace("upstream = \"app\"", "upstream = \"api\""),
    );
    let out = sy().args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:16:", path.display())), "{err}");
}
