//! Builds the built-in policies in `plugins/` for `wasm32-unknown-unknown`
//! and turns each core module into a component (the `wit-component` crate,
//! no WASI), so the proxy can embed them with `include_bytes!`.
//!
//! The plugins are compiled by nested `cargo rustc` calls with its own target
//! directory (`<target>/plugins`): sharing the outer one would deadlock on
//! cargo's build lock, and one directory for all profiles means the plugins
//! are compiled once per checkout, not once per profile.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate name, built-in policy name)
const PLUGINS: &[(&str, &str)] = &[
    ("switchyard-policy-round-robin", "round-robin"),
    ("switchyard-policy-weighted", "weighted"),
    ("switchyard-policy-sticky-session", "sticky-session"),
    ("switchyard-policy-least-request", "least-request"),
    ("switchyard-policy-peak-ewma", "peak-ewma"),
    ("switchyard-policy-consistent-hash", "consistent-hash"),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .parent()
        .ok_or("host/ has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    for dir in ["plugins", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );

    let target_dir = plugin_target_dir(&out_dir);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (krate, _) in PLUGINS {
        // The plugin crates are plain libraries (so the workspace builds and
        // tests natively); only here are they linked as wasm cdylibs.
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args([
                "rustc",
                "--quiet",
                "--lib",
                "--crate-type",
                "cdylib",
                "-p",
                krate,
            ])
            .args(["--target", "wasm32-unknown-unknown", "--profile", "plugin"])
            .arg("--target-dir")
            .arg(&target_dir);
        // The outer build's settings are for the host, not for the plugins.
        for var in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            // `cargo clippy` runs build scripts with clippy as the compiler.
            "RUSTC_WORKSPACE_WRAPPER",
            "CLIPPY_ARGS",
            "CLIPPY_CONF_DIR",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo to build the plugins: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building the built-in policy {krate} failed ({status}); is the wasm32-unknown-unknown \
                 target installed? (rustup target add wasm32-unknown-unknown)"
            ));
        }
    }

    for (krate, name) in PLUGINS {
        let module_path = target_dir
            .join("wasm32-unknown-unknown/plugin")
            .join(format!("{}.wasm", krate.replace('-', "_")));
        let module =
            std::fs::read(&module_path).map_err(|e| format!("{}: {e}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&module)
            .and_then(|enc| enc.encode())
            .map_err(|e| format!("making {name} a component: {e:#}"))?;
        std::fs::write(out_dir.join(format!("{name}.wasm")), component)
            .map_err(|e| format!("writing {name}.wasm: {e}"))?;
    }
    Ok(())
}

/// `<target>/plugins`, where `<target>` is the outer build's target
/// directory: OUT_DIR is `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn plugin_target_dir(out_dir: &Path) -> PathBuf {
    let mut dir = out_dir;
    for _ in 0..4 {
        dir = dir.parent().unwrap_or(dir);
    }
    if dir.join("CACHEDIR.TAG").exists() || dir.file_name().is_some_and(|n| n == "target") {
        dir.join("plugins")
    } else {
        // Cross builds have one more level (<triple>).
        dir.parent().unwrap_or(dir).join("plugins")
    }
}
