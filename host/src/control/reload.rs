//! Reloads, one at a time: the whole config (SIGHUP, `POST /reload`, the
//! config file changing) or one policy file (that file changing).
//!
//! A config reload parses and checks the file, builds a complete new
//! runtime (compiling, configuring and dry-running every policy) off the
//! request path, binds any new listener, and only then puts it in service;
//! any failure leaves the running config untouched. A policy file change
//! swaps the new policy into the groups that use it, each only after it has
//! passed the same checks. File events are debounced: the work starts once a
//! file has been quiet for [`DEBOUNCE`], so a file written in several steps
//! is read once it is complete.
//!
//! A group whose DNS entries found other backends (see [`super::dns`]) is
//! rebuilt here too, between reloads, so that the two never race.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admin::{self, AdminContext, AdminServer, ReloadRequest};
use super::app::App;
use super::dns::{self, Found};
use super::runtime::{self, Built};
use super::startup_pages;
use super::watch::{Changed, FileWatcher};
use crate::config::Config;
use crate::edge::{ListenerSpec, Listeners};
use crate::proxy::{Proxy, Runtime};
use crate::upstream::health;

/// How long a changed file must stay unchanged before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// [`Reloader`] owns everything a reload changes.
pub struct Reloader {
    app: Arc<App>,
    proxy: Arc<Proxy>,
    config_file: PathBuf,
    /// `--no-watch` on the command line wins over the config's `watch`.
    watch_allowed: bool,
    listeners: Listeners,
    admin: Option<AdminServer>,
    admin_tx: mpsc::UnboundedSender<ReloadRequest>,
    admin_rx: mpsc::UnboundedReceiver<ReloadRequest>,
    watcher: Option<FileWatcher>,
    changes: mpsc::UnboundedReceiver<Changed>,
    pending: HashMap<PathBuf, Instant>,
    checks: health::Checks,
    dns: dns::Refresh,
    found_tx: mpsc::UnboundedSender<Found>,
    found_rx: mpsc::UnboundedReceiver<Found>,
}

impl Reloader {
    /// Starts the listeners, the admin API and the file watcher for the
    /// proxy's current runtime.
    pub async fn start(
        app: Arc<App>,
        proxy: Arc<Proxy>,
        listeners: Vec<ListenerSpec>,
        watch_allowed: bool,
    ) -> anyhow::Result<Reloader> {
        let runtime = proxy.runtime();
        let (admin_tx, admin_rx) = mpsc::unbounded_channel();
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (found_tx, found_rx) = mpsc::unbounded_channel();
        let watcher = match FileWatcher::new(changes_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch files for changes (SIGHUP and POST /reload still work): {e}"
                );
                None
            }
        };
        let mut reloader = Reloader {
            dns: dns::start(&app, &proxy, &found_tx),
            found_tx,
            found_rx,
            app,
            listeners: Listeners::new(proxy.clone(), &runtime.config.limits),
            proxy,
            config_file: runtime.config.file.clone(),
            watch_allowed,
            admin: None,
            admin_tx,
            admin_rx,
            watcher,
            changes,
            pending: HashMap::new(),
            checks: health::start(&runtime.upstreams),
        };
        // Watch first: a change made once the proxy answers must be seen.
        reloader.watch(&runtime);
        let bound = reloader.listeners.bind_missing(&listeners).await?;
        reloader
            .listeners
            .commit(bound, &listeners, &runtime.config.limits);
        if let Some(config) = &runtime.config.admin {
            reloader.admin = Some(admin::start(config, reloader.admin_context()).await?);
        }
        // Once, now: after a reload or a swap the request path would fault
        // its pages back in while it serves, so what a compile touched stays.
        if runtime.config.release_startup_pages {
            tokio::task::spawn_blocking(|| startup_pages::release_and_log("start"));
        }
        Ok(reloader)
    }

    fn admin_context(&self) -> AdminContext {
        AdminContext {
            proxy: self.proxy.clone(),
            app: self.app.clone(),
            reload: self.admin_tx.clone(),
        }
    }

    fn watch(&mut self, runtime: &Runtime) {
        let Some(w) = &mut self.watcher else { return };
        if self.watch_allowed && runtime.config.watch {
            let mut files = runtime::policy_files(runtime);
            files.push(&runtime.config.file);
            w.set(files);
        } else {
            w.set([]);
        }
    }

    /// Handles reload requests until `shutdown` resolves, then stops the
    /// listeners and drains connections for the config's grace period.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP: {e}");
                None
            }
        };
        tokio::pin!(shutdown);
        loop {
            let next_due = self.pending.values().min().copied();
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP received, reloading {}", self.config_file.display());
                    let _ = self.reload().await;
                }
                Some(reply) = self.admin_rx.recv() => {
                    tracing::info!("reload requested through the admin API");
                    let _ = reply.send(self.reload().await);
                }
                Some(found) = self.found_rx.recv() => self.apply_found(found).await,
                Some(Changed(path)) = self.changes.recv() => {
                    self.pending.insert(path, Instant::now() + DEBOUNCE);
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    self.settle().await;
                }
            }
        }
        let grace = self.proxy.runtime().config.shutdown_grace;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        drop(self.admin.take());
        self.listeners.shutdown(grace).await;
    }

    /// Acts on the files that have been quiet for the debounce time.
    async fn settle(&mut self) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &due {
            self.pending.remove(p);
        }
        if due.contains(&self.config_file) {
            tracing::info!("{} changed, reloading", self.config_file.display());
            // A full reload re-reads every policy file too.
            let _ = self.reload().await;
            return;
        }
        for path in due {
            self.swap_policy(path).await;
        }
    }

    async fn swap_policy(&mut self, path: PathBuf) {
        let runtime = self.proxy.runtime();
        let app = self.app.clone();
        let file = path.clone();
        let swaps = match tokio::task::spawn_blocking(move || {
            runtime::swap_policy_file(&runtime, &app, &file)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("policy swap for {} failed: {e}", path.display());
                return;
            }
        };
        for swap in swaps {
            match swap.result {
                Ok(digest) => {
                    tracing::info!(
                        upstream = %swap.upstream,
                        "policy {} swapped in (sha256:{digest})",
                        path.display()
                    );
                    self.app.note_swap(&swap.upstream, None);
                }
                Err(e) => {
                    let why = format!(
                        "policy file {} refused, the previous policy keeps serving: {e}",
                        path.display()
                    );
                    tracing::warn!(upstream = %swap.upstream, "{why}");
                    self.app.note_swap(&swap.upstream, Some(&why));
                }
            }
        }
    }

    /// Puts a group's new DNS backends in service, unless a reload came
    /// in between; a group that cannot be rebuilt keeps its backends (the
    /// next lookup tries again).
    async fn apply_found(&mut self, found: Found) {
        let (app, running) = (self.app.clone(), self.proxy.runtime());
        let upstream = found.upstream.clone();
        let applied = tokio::task::spawn_blocking(move || dns::apply(&app, &running, found)).await;
        match applied {
            Ok(Ok(Some(runtime))) => {
                let runtime = Arc::new(runtime);
                self.proxy.replace_arc(runtime.clone());
                self.checks = health::start(&runtime.upstreams);
                self.app.backends.prune();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(
                upstream = %upstream,
                "the backends DNS found are not put in service, the running ones stay: {e}"
            ),
            Err(e) => tracing::error!(upstream = %upstream, "DNS update task failed: {e}"),
        }
    }

    /// Reloads the config file; returns the new generation or why not.
    pub async fn reload(&mut self) -> Result<u64, String> {
        // This reads the file as it is now: a change event for it that is
        // still waiting out the debounce (the edit a SIGHUP follows) is
        // covered, and would only reload the same file a second time.
        self.pending.remove(&self.config_file);
        let result = self.try_reload().await;
        self.app.metrics.reload(result.is_ok());
        self.app.note_reload(&result);
        match &result {
            Ok(generation) => tracing::info!("configuration reloaded (generation {generation})"),
            Err(e) => tracing::warn!(
                "configuration {} refused, the running one stays in service:\n{e}",
                self.config_file.display()
            ),
        }
        result
    }

    async fn try_reload(&mut self) -> Result<u64, String> {
        let generation = self.proxy.runtime().generation + 1;
        let (app, file) = (self.app.clone(), self.config_file.clone());
        let running = self.proxy.runtime();
        let config = tokio::task::spawn_blocking(move || Config::load(&file))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let config = dns::discover(config, Some(&running), &self.app.metrics).await;
        let built = tokio::task::spawn_blocking(move || {
            runtime::build(config, &app, generation, Some(&running)).map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))??;

        let Built { runtime, listeners } = built;
        let bound = self
            .listeners
            .bind_missing(&listeners)
            .await
            .map_err(|e| e.to_string())?;
        let admin = match (&runtime.config.admin, &self.admin) {
            (Some(new), Some(old)) if new.addr == old.addr => {
                old.update(new);
                None
            }
            (Some(new), _) => Some(Some(
                admin::start(new, self.admin_context())
                    .await
                    .map_err(|e| e.to_string())?,
            )),
            (None, Some(_)) => Some(None),
            (None, None) => None,
        };

        let runtime = Arc::new(runtime);
        self.proxy.replace_arc(runtime.clone());
        self.listeners
            .commit(bound, &listeners, &runtime.config.limits);
        if let Some(admin) = admin {
            self.admin = admin;
        }
        self.watch(&runtime);
        self.checks = health::start(&runtime.upstreams);
        self.dns = dns::start(&self.app, &self.proxy, &self.found_tx);
        self.app.backends.prune();
        self.app.states.retain(|name| {
            runtime
                .upstreams
                .iter()
                .any(|u| u.name == name || runtime::shadow_state_name(&u.name) == name)
        });
        Ok(generation)
    }
}
