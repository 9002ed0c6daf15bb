//! Tools for policy authors, behind `switchyard policy ...`:
//!
//! - `new --lang L NAME`: a working canary policy to start from, in Rust,
//!   Python, JavaScript, C or WAT, with a `build.sh` that makes `policy.wasm`;
//! - `componentize IN -o OUT`: a core module (or WAT text) into a policy
//!   component, with the `switchyard:policy` world embedded if the module
//!   does not carry it, and a WASI adapter if it imports WASI preview 1;
//! - `wit DIR`: the contract's WIT files;
//! - `bindings --lang c DIR`: C bindings for the contract.
//!
//! The WIT and the templates are compiled into the binary, so these work
//! anywhere, offline, and always match the proxy that will run the policy.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser as wp;

/// The contract, `switchyard:policy@0.2.0`, as shipped in `wit/`.
pub const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/types.wit")),
    ("request.wit", include_str!("../../wit/request.wit")),
    ("decision.wit", include_str!("../../wit/decision.wit")),
    ("host.wit", include_str!("../../wit/host.wit")),
    ("selector.wit", include_str!("../../wit/selector.wit")),
    ("observer.wit", include_str!("../../wit/observer.wit")),
    ("membership.wit", include_str!("../../wit/membership.wit")),
    ("world.wit", include_str!("../../wit/world.wit")),
];

/// The previous contract, `switchyard:policy@0.1.0` (`wit/0.1/`), which
/// the proxy still runs: `componentize` embeds it in a module that
/// exports its functions.
pub const WIT_V01: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../wit/0.1/types.wit")),
    ("host.wit", include_str!("../../wit/0.1/host.wit")),
    ("selector.wit", include_str!("../../wit/0.1/selector.wit")),
    ("world.wit", include_str!("../../wit/0.1/world.wit")),
];

/// Stands in a template's build.sh for the path of the switchyard that
/// writes the project.
const SELF_PLACEHOLDER: &str = "@SWITCHYARD@";

/// A template file: path in the new project, contents.
type File = (&'static str, &'static str);

const COMMON: &[File] = &[(
    ".gitignore",
    "/wit/\n/policy.wasm\n/target/\n/node_modules/\n/gen/\n*.o\ncore.wasm\n",
)];

const RUST: &[File] = &[
    // The toolchain the README names (and the proxy is built with), with
    // the wasm target, so a user's rustup installs both.
    (
        "rust-toolchain.toml",
        include_str!("../../rust-toolchain.toml"),
    ),
    (
        "Cargo.toml",
        include_str!("../../plugins/examples/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../plugins/examples/rust/src/lib.rs"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/examples/rust/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/examples/rust/README.md"),
    ),
    (
        "sdk/Cargo.toml",
        include_str!("../../plugins/sdk/Cargo.toml"),
    ),
    (
        "sdk/src/lib.rs",
        include_str!("../../plugins/sdk/src/lib.rs"),
    ),
    (
        "sdk/src/config.rs",
        include_str!("../../plugins/sdk/src/config.rs"),
    ),
    (
        "sdk/src/sticky.rs",
        include_str!("../../plugins/sdk/src/sticky.rs"),
    ),
    (
        "sdk/src/weighted.rs",
        include_str!("../../plugins/sdk/src/weighted.rs"),
    ),
    (
        "sdk/src/hash.rs",
        include_str!("../../plugins/sdk/src/hash.rs"),
    ),
    (
        "sdk/src/choose.rs",
        include_str!("../../plugins/sdk/src/choose.rs"),
    ),
    (
        "sdk/src/maglev.rs",
        include_str!("../../plugins/sdk/src/maglev.rs"),
    ),
    (
        "sdk/src/steer.rs",
        include_str!("../../plugins/sdk/src/steer.rs"),
    ),
    (
        "sdk/src/sys.rs",
        include_str!("../../plugins/sdk/src/sys.rs"),
    ),
    (
        "sdk/src/testing.rs",
        include_str!("../../plugins/sdk/src/testing.rs"),
    ),
];

const PYTHON: &[File] = &[
    (
        "app.py",
        include_str!("../../plugins/examples/python/app.py"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/examples/python/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/examples/python/README.md"),
    ),
];

const JS: &[File] = &[
    (
        "policy.js",
        include_str!("../../plugins/examples/js/policy.js"),
    ),
    (
        "build.mjs",
        include_str!("../../plugins/examples/js/build.mjs"),
    ),
    (
        "package.json",
        include_str!("../../plugins/examples/js/package.json"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/examples/js/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/examples/js/README.md"),
    ),
];

const C: &[File] = &[
    (
        "policy.c",
        include_str!("../../plugins/examples/c/policy.c"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/examples/c/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/examples/c/README.md"),
    ),
];

const WAT: &[File] = &[
    (
        "policy.wat",
        include_str!("../../plugins/examples/wat/policy.wat"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/examples/wat/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/examples/wat/README.md"),
    ),
];

/// The languages `policy new` knows.
pub const LANGUAGES: &[&str] = &["rust", "python", "js", "c", "wat"];

/// Writes the WIT files into `dir`.
pub fn write_wit(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in WIT {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Scaffolds a new policy project `dir` in `lang`; returns the files made.
pub fn new_policy(lang: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = match lang {
        "rust" => RUST,
        "python" => PYTHON,
        "js" | "javascript" => JS,
        "c" => C,
        "wat" => WAT,
        other => bail!(
            "no template for {other:?} (languages: {})",
            LANGUAGES.join(", ")
        ),
    };
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the new policy needs a directory name")?;
    let crate_name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    // Where this switchyard is: the project's build.sh falls back on it
    // when none is on PATH.
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "switchyard".into());
    let mut made = Vec::new();
    for (path, text) in COMMON.iter().chain(files) {
        let text = match *path {
            // Standalone: its own workspace, the SDK next to it.
            "Cargo.toml" => text
                .replace(
                    "name = \"canary-policy\"",
                    &format!("name = \"{crate_name}\""),
                )
                .replace("path = \"../../sdk\"", "path = \"sdk\""),
            // The SDK's bindings find the WIT beside the project.
            "sdk/src/lib.rs" => text.replace("path: \"../../wit\"", "path: \"../wit\""),
            "sdk/Cargo.toml" => sdk_manifest(text),
            "build.sh" => text
                .replace("canary_policy", &crate_name.replace('-', "_"))
                .replace(SELF_PLACEHOLDER, &me),
            _ => text.to_string(),
        };
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
        made.push(target);
    }
    write_wit(&dir.join("wit"))?;
    Ok(made)
}

/// The SDK's manifest without the workspace inheritance it has in the repo.
fn sdk_manifest(text: &str) -> String {
    // `rust-version.workspace` first: it contains `version.workspace`.
    text.replace("rust-version.workspace = true", "rust-version = \"1.88\"")
        .replace("version.workspace = true", "version = \"0.1.0\"")
        .replace("edition.workspace = true", "edition = \"2024\"")
        .replace("license.workspace = true", "license = \"Apache-2.0\"")
        .replace(
            "wit-bindgen.workspace = true",
            "wit-bindgen = { version = \"0.63.0\", default-features = false, features = [\"macros\", \"realloc\"] }",
        )
}

/// The contract, parsed (with the wit-parser that wit-component and
/// wit-bindgen-c both use).
/// `world` of the contract in `wit`, parsed.
fn resolve(wit: &[(&str, &str)], world: &str) -> anyhow::Result<(wp::Resolve, wp::WorldId)> {
    let mut map = wp::SourceMap::new();
    for (name, text) in wit {
        map.push(Path::new(name), *text);
    }
    let group = map.parse().map_err(|(_, e)| anyhow::anyhow!("{e}"))?;
    let mut resolve = wp::Resolve::default();
    let pkg = resolve.push_group(group)?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    Ok((resolve, world))
}

/// The world a core module implements, judged by its exports: 0.1's if it
/// exports 0.1's selector; 0.2's `adaptive-policy` if it exports
/// `observer` or `membership`; else 0.2's `policy`.
fn world_of(module: &[u8]) -> anyhow::Result<(wp::Resolve, wp::WorldId)> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module).flatten() {
        if let wasmparser::Payload::ExportSection(exports) = payload {
            names.extend(exports.into_iter().flatten().map(|e| e.name.to_string()));
        }
    }
    let has = |needle: &str| names.iter().any(|n| n.contains(needle));
    if has("switchyard:policy/selector@0.1.0#") {
        resolve(WIT_V01, "policy")
    } else if has("switchyard:policy/observer@0.2.0#") || has("switchyard:policy/membership@0.2.0#")
    {
        resolve(WIT, "adaptive-policy")
    } else {
        resolve(WIT, "policy")
    }
}

/// Turns a core module (binary or WAT text) into a policy component.
pub fn componentize(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut module = wat::parse_bytes(input)
        .context("not a WebAssembly module (binary or text)")?
        .into_owned();
    if module.len() >= 8 && module[4..8] == [0x0d, 0x00, 0x01, 0x00] {
        bail!("this is already a component");
    }
    let has_world = wasmparser_custom_section(&module, "component-type");
    if !has_world {
        let (resolve, world) = world_of(&module)?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )?;
    }
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.validate(true).module(&module)?;
    if imports_wasi_preview1(&module) {
        encoder.adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?;
    }
    encoder.encode()
}

/// Whether a core module has a custom section whose name starts with
/// `prefix` (wit-bindgen names it `component-type:...`).
fn wasmparser_custom_section(module: &[u8], prefix: &str) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|payload| {
            matches!(payload, wasmparser::Payload::CustomSection(c) if c.name().starts_with(prefix))
        })
}

/// Whether a core module imports WASI preview 1 (and so needs the adapter).
fn imports_wasi_preview1(module: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|payload| match payload {
            wasmparser::Payload::ImportSection(imports) => imports
                .into_imports()
                .filter_map(Result::ok)
                .any(|i| i.module == "wasi_snapshot_preview1"),
            _ => false,
        })
}

/// The custom section a component states its limits in, read by the
/// proxy at load (`switchyard::policy::Requested`): `memory=BYTES` and
/// `timeout_us=MICROSECONDS` lines; the last such section counts.
pub const LIMITS_SECTION: &str = "switchyard-limits";

/// `component` with its limits stated: a `switchyard-limits` section
/// appended, which the proxy reads instead of any earlier one. `None`
/// states nothing for that limit.
pub fn set_limits(
    component: &[u8],
    memory: Option<u64>,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<Vec<u8>> {
    if component.len() < 8 || component[..4] != *b"\0asm" || component[4..8] == [1, 0, 0, 0] {
        bail!("not a WebAssembly component");
    }
    let mut text = String::new();
    if let Some(m) = memory {
        text.push_str(&format!("memory={m}\n"));
    }
    if let Some(t) = timeout {
        text.push_str(&format!("timeout_us={}\n", t.as_micros()));
    }
    let mut out = component.to_vec();
    use wasm_encoder::ComponentSection;
    wasm_encoder::CustomSection {
        name: LIMITS_SECTION.into(),
        data: text.into_bytes().into(),
    }
    .append_to_component(&mut out);
    Ok(out)
}

/// Writes C bindings (`policy.h`, `policy.c`, `policy_component_type.o`)
/// into `dir`.
pub fn c_bindings(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (mut resolve, world) = resolve(WIT, "policy")?;
    let mut files = wit_bindgen_core::Files::default();
    let opts = wit_bindgen_c::Opts::default();
    opts.build().generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(dir)?;
    let mut made = Vec::new();
    for (name, bytes) in files.iter() {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        made.push(path);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_wit_parses() {
        resolve(WIT, "policy").unwrap();
        resolve(WIT, "adaptive-policy").unwrap();
        resolve(WIT_V01, "policy").unwrap();
    }

    #[test]
    fn wat_without_metadata_becomes_a_component() {
        let wat = r#"(module
            (memory (export "memory") 1)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
            (func (export "switchyard:policy/selector@0.1.0#configure") (param i32 i32 i32 i32) (result i32) (i32.const 64))
            (func (export "switchyard:policy/selector@0.1.0#select") (param i32 i32 i32) (result i32) unreachable))"#;
        let component = componentize(wat.as_bytes()).unwrap();
        assert_eq!(&component[..8], b"\0asm\x0d\x00\x01\x00");
    }

    #[test]
    fn a_0_2_module_gets_the_0_2_world() {
        let wat = r#"(module
            (memory (export "memory") 1)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
            (func (export "switchyard:policy/selector@0.2.0#configure") (param i32 i32 i32 i32) (result i32) (i32.const 64))
            (func (export "switchyard:policy/selector@0.2.0#select") (param i32 i32 i32) (result i32) unreachable))"#;
        let component = componentize(wat.as_bytes()).unwrap();
        let text = String::from_utf8_lossy(&component);
        assert!(text.contains("switchyard:policy/selector@0.2.0"));
    }

    #[test]
    fn components_and_junk_are_refused() {
        assert!(componentize(b"\0asm\x0d\x00\x01\x00").is_err());
        assert!(componentize(b"not wasm").is_err());
    }

    #[test]
    fn c_bindings_are_generated() {
        let dir = std::env::temp_dir().join(format!("sy-cbind-{}", std::process::id()));
        let made = c_bindings(&dir).unwrap();
        let names: Vec<String> = made
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"policy.h".to_string()), "{names:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
