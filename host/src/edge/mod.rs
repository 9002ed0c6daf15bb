//! The edge: listeners and client connections, up to the request path.
//!
//! [`Listeners`] accept connections (TLS with ALPN, or plain with HTTP/1.1
//! and h2c prior knowledge), each served by a task ([`conn`]), follow
//! config reloads (a listener whose address did not change keeps its
//! socket; its certificate and limits are updated in place), and drain
//! gracefully on shutdown.
//!
//! At `max-connections`, idle connections and those that have not sent a
//! complete request head go first, oldest first (nginx and HAProxy close
//! idle keep-alive connections the same way), so slow or idle clients
//! cannot keep new ones out; only when every connection is busy do new
//! clients wait in the kernel's queue.

pub mod conn;
mod h2;
mod io;
mod signal;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

use signal::{SHUTDOWN, Signal, Tracked};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::ClientLimits;
use crate::proxy::Proxy;
use crate::proxy::client::ClientConn;
use conn::Conn;

/// At most this many idle connections are asked to close at once when a
/// listener is full; as nginx's `ngx_drain_connections`, an eighth of the
/// idle ones, at least one.
const EVICT_BATCH: usize = 32;
/// How often a full listener that is still waiting for a slot looks again
/// for an idle connection to ask.
const EVICT_RETRY: Duration = Duration::from_millis(50);

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// One listener as a config wants it.
#[derive(Clone)]
pub struct ListenerSpec {
    /// The configured address.
    pub addr: SocketAddr,
    /// TLS, if this is an HTTPS listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// [`Registry`] is a listener's open connections, oldest first, so that at
/// the connection limit the idle ones can be asked to go.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<Vec<Weak<Tracked>>>,
}

impl Registry {
    fn add(&self, t: &Arc<Tracked>, limit: usize) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= limit.saturating_mul(2).max(64) {
            conns.retain(|w| w.strong_count() > 0);
        }
        conns.push(Arc::downgrade(t));
    }

    /// Makes room: sees that an eighth of the idle connections (at least
    /// one, at most [`EVICT_BATCH`]) are on their way out, asking the
    /// oldest idle ones not yet asked. Those asked before and still
    /// closing count, so a slow close does not cost a newer connection.
    /// How many were asked now.
    fn evict(&self) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        let (mut idle, mut leaving) = (0, 0);
        for t in conns.iter().filter_map(Weak::upgrade) {
            if t.signal.leaving() {
                leaving += 1;
            } else if t.client.active() == 0 {
                idle += 1;
            }
        }
        let want = ((idle + leaving) / 8).clamp(1, EVICT_BATCH);
        conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| t.client.active() == 0 && !t.signal.leaving())
            .take(want.saturating_sub(leaving))
            .filter(|t| t.signal.evict())
            .count()
    }

    /// Tells every connection the proxy is shutting down.
    fn shutdown(&self) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for t in conns.iter().filter_map(Weak::upgrade) {
            t.signal.raise(SHUTDOWN);
        }
    }
}

/// Connection tasks alive, for the drain at shutdown.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    zero: Notify,
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

struct Active {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    registry: Arc<Registry>,
}

/// A listener's identity across reloads: its address, and which of the
/// listeners with that address it is (port 0 may appear several times).
type Key = (SocketAddr, usize);

fn keyed(specs: &[ListenerSpec]) -> Vec<(Key, &ListenerSpec)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let nth = specs[..i].iter().filter(|s| s.addr == spec.addr).count();
            ((spec.addr, nth), spec)
        })
        .collect()
}

/// Listeners freshly bound for a config that is not in service yet.
pub struct Bound(Vec<(Key, TcpListener)>);

/// [`Listeners`] is the set of proxy listeners, keyed by their configured
/// address.
pub struct Listeners {
    proxy: Arc<Proxy>,
    limits: Arc<ArcSwap<ClientLimits>>,
    live: Arc<Live>,
    active: HashMap<Key, Active>,
    /// Listeners closed by a reload whose connections still run.
    retired: Vec<Arc<Registry>>,
}

impl Listeners {
    /// No listeners yet.
    pub fn new(proxy: Arc<Proxy>, limits: &ClientLimits) -> Listeners {
        Listeners {
            proxy,
            limits: Arc::new(ArcSwap::from_pointee(limits.clone())),
            live: Arc::default(),
            active: HashMap::new(),
            retired: Vec::new(),
        }
    }

    /// Binds the addresses of `specs` not listened on yet. Nothing changes
    /// for clients until [`Listeners::commit`]; on error nothing stays bound.
    pub async fn bind_missing(&self, specs: &[ListenerSpec]) -> anyhow::Result<Bound> {
        let mut bound = Vec::new();
        for (key, spec) in keyed(specs) {
            if !self.active.contains_key(&key) {
                bound.push((key, bind(spec.addr).await?));
            }
        }
        Ok(Bound(bound))
    }

    /// Starts serving the newly bound listeners, updates the others
    /// (certificate, limits), and closes those not in `specs` (their open
    /// connections finish normally).
    pub fn commit(&mut self, bound: Bound, specs: &[ListenerSpec], limits: &ClientLimits) {
        self.limits.store(Arc::new(limits.clone()));
        let keyed = keyed(specs);
        let spec_of = |key: &Key| keyed.iter().find(|(k, _)| k == key).map(|(_, s)| *s);
        for (key, listener) in bound.0 {
            if spec_of(&key).is_none() {
                continue;
            }
            self.start(key, listener, limits.max_connections, spec_of(&key));
        }
        for (key, active) in &mut self.active {
            let Some(spec) = spec_of(key) else { continue };
            active
                .tls
                .store(spec.tls.clone().map(|c| Arc::new(TlsAcceptor::from(c))));
            resize(active, limits.max_connections);
        }
        let gone: Vec<Key> = self
            .active
            .keys()
            .filter(|k| spec_of(k).is_none())
            .copied()
            .collect();
        for key in gone {
            if let Some(a) = self.active.remove(&key) {
                let _ = a.stop.send(true);
                self.retired.push(a.registry);
                tracing::info!("no longer listening on {}", key.0);
            }
        }
    }

    fn start(
        &mut self,
        key: Key,
        listener: TcpListener,
        max_connections: usize,
        spec: Option<&ListenerSpec>,
    ) {
        let scheme = if spec.is_some_and(|s| s.tls.is_some()) {
            "https"
        } else {
            "http"
        };
        match listener.local_addr() {
            Ok(local) => tracing::info!("listening on {scheme}://{local}"),
            Err(e) => tracing::warn!("listener {}: {e}", key.0),
        }
        let (stop, stopped) = watch::channel(false);
        let tls = Arc::new(ArcSwapOption::empty());
        let permits = Arc::new(Semaphore::new(max_connections));
        let registry: Arc<Registry> = Arc::default();
        let accepting = Accepting {
            proxy: self.proxy.clone(),
            limits: self.limits.clone(),
            live: self.live.clone(),
            tls: tls.clone(),
            permits: permits.clone(),
            registry: registry.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, accepting, stopped));
        self.active.insert(
            key,
            Active {
                stop,
                task,
                tls,
                permits,
                max_connections,
                registry,
            },
        );
    }

    /// Stops accepting, asks every connection to finish (HTTP/1.1 after
    /// its request in progress, HTTP/2 with `GOAWAY`), and waits up to
    /// `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        for a in self.active.values() {
            let _ = a.stop.send(true);
        }
        let mut registries = self.retired;
        for (_, a) in self.active {
            let _ = a.task.await;
            registries.push(a.registry);
        }
        for r in &registries {
            r.shutdown();
        }
        let drained = async {
            loop {
                let zero = self.live.zero.notified();
                tokio::pin!(zero);
                zero.as_mut().enable();
                if self.live.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                zero.await;
            }
        };
        tokio::select! {
            _ = drained => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {grace:?} over, closing remaining connections"),
        }
    }
}

/// Follows a change of `max-connections` on a running listener.
fn resize(active: &mut Active, new: usize) {
    let old = active.max_connections;
    if new > old {
        active.permits.add_permits(new - old);
    } else if new < old {
        // Permits in use are taken back as connections close.
        let taken = active.permits.forget_permits(old - new);
        if taken < old - new {
            let p = active.permits.clone();
            let rest = (old - new - taken) as u32;
            tokio::spawn(async move {
                if let Ok(permits) = p.acquire_many(rest).await {
                    permits.forget();
                }
            });
        }
    }
    active.max_connections = new;
}

/// What an accept loop shares with its listener set.
struct Accepting {
    proxy: Arc<Proxy>,
    limits: Arc<ArcSwap<ClientLimits>>,
    live: Arc<Live>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    permits: Arc<Semaphore>,
    registry: Arc<Registry>,
}

async fn accept_loop(listener: TcpListener, a: Accepting, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match a.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: ask idle connections to make room for this one,
                // then wait for a slot (the kernel queues the next clients
                // meanwhile).
                let asked = a.registry.evict();
                tracing::debug!(
                    "at max-connections ({}): {asked} idle connection(s) asked to close",
                    a.limits.load().max_connections
                );
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        p = a.permits.clone().acquire_owned() => match p {
                            Ok(p) => break p,
                            Err(_) => return,
                        },
                        // No slot yet: the busy connections may have
                        // finished, or one asked took new work and stays.
                        _ = tokio::time::sleep(EVICT_RETRY) => {
                            a.registry.evict();
                        }
                    }
                }
            }
        };
        spawn_conn(&a, stream, peer, permit);
    }
}

fn spawn_conn(
    a: &Accepting,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let limits = a.limits.load_full();
    let tls = a.tls.load_full();
    let tracked = Arc::new(Tracked {
        client: ClientConn::new(peer, tls.is_some(), conn::initial_send_timeout()),
        signal: Signal::default(),
    });
    a.registry.add(&tracked, limits.max_connections);
    a.live.count.fetch_add(1, Ordering::AcqRel);
    let live = LiveGuard(a.live.clone());
    let conn = Conn {
        proxy: a.proxy.clone(),
        limits: (*limits).clone(),
        tracked,
        permit,
    };
    tokio::spawn(async move {
        let _live = live;
        conn.run(stream, tls).await;
    });
}
