//! The `switchyard` command line: run, check, demo, policies, policy.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::{Config, OciReference, PolicySource};
use switchyard::control::app::App;
use switchyard::control::{dns, limits, oci, runtime, serve, simulate};
use switchyard::policy::{PolicyEngine, builtin};
use switchyard_tools::{authoring, demo};

/// A load-balancing reverse proxy whose backend choice is a WebAssembly
/// component.
#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `switchyard=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// The TOML configuration.
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: one per CPU core).
        #[arg(long, env = "SWITCHYARD_WORKERS")]
        workers: Option<usize>,
        /// Do not reload when the config or a policy file changes (SIGHUP
        /// and POST /reload still do).
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a configuration file and load its policies, like `nginx -t`.
    Check {
        /// The TOML configuration.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three demo backends and the proxy in front of them.
    Demo {
        /// Built-in policy name or path to a .wasm component.
        #[arg(long, default_value = "round-robin")]
        policy: String,
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// List the built-in policies, or write them out as plugin files.
    Policies {
        /// Write each built-in policy to DIR/NAME.wasm.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Run an upstream's policy, and others to compare, against simulated
    /// backends on a virtual clock.
    Simulate {
        /// The TOML configuration.
        #[arg(short, long)]
        config: PathBuf,
        /// The scenario: traffic, backends, events (see the README).
        #[arg(short, long)]
        scenario: PathBuf,
        /// The upstream (default: the config's only one).
        #[arg(long)]
        upstream: Option<String>,
        /// Another policy to compare: a built-in name or a .wasm path (run
        /// without the upstream's policy-config). May be repeated.
        #[arg(long = "policy", value_name = "NAME|PATH")]
        policies: Vec<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write each backend's share over time as an SVG chart.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Replay the requests of a JSON access log instead of the
        /// scenario's synthetic traffic.
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
    },
    /// Tools for writing policies.
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Start a policy project: a canary policy with a build.sh.
    New {
        /// rust, python, js, c or wat.
        #[arg(long)]
        lang: String,
        /// The directory to create.
        dir: PathBuf,
    },
    /// Make a policy component from a core module or WebAssembly text.
    Componentize {
        /// A .wasm core module or a .wat file.
        input: PathBuf,
        /// The component to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// State the limits a policy component needs (used when the config
    /// sets none, up to policy-memory-max / policy-timeout-max).
    Limits {
        /// The component, changed in place unless --output is given.
        file: PathBuf,
        /// Linear memory, e.g. 64MiB.
        #[arg(long)]
        memory: Option<String>,
        /// Time per call, e.g. 5ms.
        #[arg(long)]
        timeout: Option<String>,
        /// Where to write the component (default: FILE itself).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Publish a policy component to an OCI registry (the CNCF Wasm
    /// artifact layout); prints its digests.
    Push {
        /// The component (.wasm); it must load as a policy.
        file: PathBuf,
        /// Where: oci://REGISTRY/REPO:TAG.
        reference: String,
        /// Speak plain HTTP to the registry (a local or test registry).
        #[arg(long)]
        insecure: bool,
    },
    /// Write the policy contract's WIT files into DIR.
    Wit {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Write bindings for the policy contract into DIR.
    Bindings {
        /// Only c so far (Rust has the SDK, Python and JavaScript generate
        /// their own).
        #[arg(long)]
        lang: String,
        /// Where to write them.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = limits::raise_nofile() {
        tracing::warn!("cannot read or raise the open-file limit: {e}");
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Worker threads: as asked, else one per CPU core.
fn worker_count(workers: Option<usize>) -> usize {
    workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn tokio_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(workers);
    b.enable_all()
        .thread_name("switchyard-worker")
        .build()
        .context("cannot start the async runtime")
}

/// `run`: the config loaded (DNS names looked up), then served.
fn run(
    config: &std::path::Path,
    workers: Option<usize>,
    no_watch: bool,
) -> anyhow::Result<ExitCode> {
    let workers = worker_count(workers);
    let app = App::new(workers)?;
    tokio_runtime(workers)?.block_on(async {
        let built = serve::load(&app, config).await?;
        serve::serve(Arc::new(app), built, !no_watch).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            workers,
            no_watch,
        } => run(&config, workers, no_watch),
        Command::Check { config } => check(&config),
        Command::Simulate {
            config,
            scenario,
            upstream,
            policies,
            json,
            svg,
            access_log,
        } => {
            let started = std::time::Instant::now();
            let report = simulate::run(&simulate::Options {
                config,
                scenario,
                upstream,
                policies,
                access_log,
            })?;
            if let Some(file) = svg {
                std::fs::write(&file, report.svg())
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            print!("{}", if json { report.json() } else { report.text() });
            tracing::info!(
                "simulated {} policies in {:.2} s",
                report.runs.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { policy, listen } => {
            let looks_like_file =
                policy.contains('/') || policy.contains('\\') || policy.ends_with(".wasm");
            if looks_like_file && !std::path::Path::new(&policy).is_file() {
                anyhow::bail!("demo --policy {policy}: no such file");
            }
            if !looks_like_file && !policy.starts_with("native:") && builtin::get(&policy).is_none()
            {
                anyhow::bail!(
                    "demo --policy {policy}: not a built-in policy (built-in: {}) nor a path to a .wasm file",
                    builtin::NAMES.join(", ")
                );
            }
            let workers = worker_count(None);
            let app = App::new(workers)?;
            tokio_runtime(workers)?.block_on(async move {
                let mut backends = Vec::new();
                for (name, weight) in demo::BACKENDS {
                    let addr = demo::start_backend(name, weight).await?;
                    backends.push((name.to_string(), addr, weight));
                }
                let text = demo::config_text(listen, &policy, &backends);
                let config = Config::parse(&demo::config_path(), &text)?;
                let built = runtime::first(&app, config)
                    .map_err(|e| anyhow::anyhow!("demo --policy {policy}: {e}"))?;
                for (name, addr, weight) in &backends {
                    tracing::info!("demo backend {name} (weight {weight}) on http://{addr}");
                }
                tracing::info!("demo: try `curl http://{listen}/` a few times (policy: {policy})");
                serve::serve(Arc::new(app), built, false).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policies { export } => {
            match export {
                None => {
                    for b in builtin::ALL {
                        println!("{:<16} {}", b.name, b.summary);
                    }
                }
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    for b in builtin::ALL {
                        let path = dir.join(format!("{}.wasm", b.name));
                        std::fs::write(&path, b.wasm)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        println!("{}", path.display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { action } => policy(action),
    }
}

fn policy(action: PolicyCommand) -> anyhow::Result<ExitCode> {
    match action {
        PolicyCommand::New { lang, dir } => {
            let made = authoring::new_policy(&lang, &dir)?;
            for f in made {
                println!("{}", f.display());
            }
            println!("next: cd {} && ./build.sh", dir.display());
        }
        PolicyCommand::Componentize { input, output } => {
            let bytes = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let component = authoring::componentize(&bytes).with_context(|| {
                format!("{} cannot be made a policy component", input.display())
            })?;
            std::fs::write(&output, &component)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}: {} bytes", output.display(), component.len());
        }
        PolicyCommand::Limits {
            file,
            memory,
            timeout,
            output,
        } => {
            let memory = memory
                .map(|m| {
                    m.parse::<bytesize::ByteSize>()
                        .map(|b| b.as_u64())
                        .map_err(|e| anyhow::anyhow!("--memory {m:?}: {e}"))
                })
                .transpose()?;
            let timeout = timeout
                .map(|t| {
                    humantime::parse_duration(&t)
                        .map_err(|e| anyhow::anyhow!("--timeout {t:?}: {e}"))
                })
                .transpose()?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // What is not given stays as the component stated it.
            let before = switchyard::policy::Requested::of(&bytes);
            let memory = memory.or(before.memory);
            let timeout = timeout.or(before.timeout);
            let out = authoring::set_limits(&bytes, memory, timeout)
                .with_context(|| format!("{}", file.display()))?;
            let target = output.unwrap_or(file);
            std::fs::write(&target, &out)
                .with_context(|| format!("cannot write {}", target.display()))?;
            let mut stated = Vec::new();
            if let Some(m) = memory {
                stated.push(format!("memory {}", bytesize::ByteSize(m).display().iec()));
            }
            if let Some(t) = timeout {
                stated.push(format!("timeout {t:?}"));
            }
            println!("{}: states {}", target.display(), stated.join(", "));
        }
        PolicyCommand::Push {
            file,
            reference,
            insecure,
        } => push(&file, &reference, insecure)?,
        PolicyCommand::Wit { dir } => authoring::write_wit(&dir)?,
        PolicyCommand::Bindings { lang, dir } => {
            if lang != "c" {
                anyhow::bail!("bindings for {lang:?}: only c is generated here");
            }
            authoring::c_bindings(&dir)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy push`: only a component that loads as a policy is published.
fn push(file: &std::path::Path, reference: &str, insecure: bool) -> anyhow::Result<()> {
    let mut target =
        OciReference::parse(reference).map_err(|e| anyhow::anyhow!("{reference}: {e}"))?;
    target.plain_http = insecure;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    PolicyEngine::new()
        .map_err(|e| anyhow::anyhow!("cannot start the Wasm engine: {e}"))?
        .compile_bytes(PolicySource::File(file.to_path_buf()), &bytes, None)?;
    let pushed = oci::push(&bytes, &target).with_context(|| format!("cannot push {target}"))?;
    let by_digest = OciReference {
        tag: None,
        digest: Some(pushed.manifest.clone()),
        ..target.clone()
    };
    println!("pushed {target}");
    println!("manifest  {} ({by_digest})", pushed.manifest);
    println!(
        "component {} ({} bytes; pin it with sha256 = \"{}\")",
        pushed.component,
        bytes.len(),
        pushed.component.trim_start_matches("sha256:")
    );
    Ok(())
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: configuration is invalid", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let app = App::new(1)?;
    // Names are looked up as `run` would; one that does not resolve is
    // warned about, not refused (the proxy would start and keep trying).
    let config = tokio_runtime(1)?.block_on(dns::discover(config, None, &app.metrics));
    match runtime::build(config, &app, 1, None) {
        Ok(built) => {
            for up in &built.runtime.upstreams {
                let status = up.policy().status();
                let exports = if status.exports.is_empty() {
                    String::new()
                } else {
                    format!(", exports {}", status.exports.join(" and "))
                };
                let from_dns = up.config.backends.iter().filter(|b| b.dns.is_some());
                let from_dns = match (up.config.dns.len(), from_dns.count()) {
                    (0, _) => String::new(),
                    (entries, n) => format!(
                        " ({n} found by {entries} dns/srv entr{})",
                        if entries == 1 { "y" } else { "ies" }
                    ),
                };
                println!(
                    "upstream {}: policy {} (contract {}{exports}), {} backend(s){from_dns}",
                    up.name,
                    up.policy().name(),
                    status.contract,
                    up.backends.len()
                );
                if status.memory.0 > 0 {
                    println!(
                        "  limits: memory {} ({}), timeout {:?} ({})",
                        bytesize::ByteSize(status.memory.0).display().iec(),
                        status.memory.1.describe(),
                        status.timeout.0,
                        status.timeout.1.describe()
                    );
                }
            }
            println!("{}: configuration is valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("{}: configuration is invalid", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
