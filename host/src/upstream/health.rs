//! Active health checks: a `GET` to each backend of an upstream every
//! `interval`; `fall` consecutive failures take a backend out, `rise`
//! consecutive successes bring it back (HAProxy's semantics). The verdict
//! combines with passive health (`max-fails`): a backend is offered to the
//! policy only if both allow it, except that a backend coming back by its
//! checks also clears its passive mark. Each flip is logged once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, Version};
use tokio::task::JoinHandle;

use super::body::RequestBody;
use super::pool::{self, Sender};
use super::{Backend, Upstream};
use crate::config::HealthCheckConfig;

/// The running checks of one runtime; dropping it stops them.
#[derive(Debug, Default)]
pub struct Checks(Vec<JoinHandle<()>>);

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the checks the groups ask for, and clears the verdict of
/// backends no check covers any more (a check removed by a reload must not
/// leave its backend out for good).
pub fn start(upstreams: &[Arc<Upstream>]) -> Checks {
    let checked: HashSet<SocketAddr> = upstreams
        .iter()
        .filter(|u| u.config.health_check.is_some())
        .flat_map(|u| u.backends.iter().map(|b| b.socket_addr))
        .collect();
    for u in upstreams {
        for b in &u.backends {
            if !checked.contains(&b.socket_addr) {
                b.stats.set_check_failing(false);
            }
        }
    }
    Checks(
        upstreams
            .iter()
            .filter_map(|u| {
                let config = u.config.health_check.clone()?;
                Some(tokio::spawn(run(u.clone(), config)))
            })
            .collect(),
    )
}

async fn run(upstream: Arc<Upstream>, config: HealthCheckConfig) {
    let mut streaks = vec![Streak::default(); upstream.backends.len()];
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes: Vec<_> = upstream
            .backends
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let (upstream, config) = (upstream.clone(), config.clone());
                tokio::spawn(async move { probe(&upstream, &upstream.backends[i], &config).await })
            })
            .collect();
        for (i, p) in probes.into_iter().enumerate() {
            let result = p
                .await
                .unwrap_or_else(|e| Err(format!("check task failed: {e}")));
            streaks[i].record(&upstream, &upstream.backends[i], &config, result);
        }
    }
}

/// Consecutive results of one backend's checks.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

impl Streak {
    fn record(
        &mut self,
        up: &Upstream,
        b: &Backend,
        c: &HealthCheckConfig,
        result: Result<(), String>,
    ) {
        let failing = b.stats.check_failing();
        match result {
            Ok(()) => {
                self.ok += 1;
                self.failed = 0;
                if failing && self.ok >= c.rise {
                    b.stats.set_check_failing(false);
                    b.stats.clear_failures();
                    tracing::info!(upstream = %up.name, backend = %b.name, "backend is up again (health check)");
                }
            }
            Err(why) => {
                self.failed += 1;
                self.ok = 0;
                if !failing && self.failed >= c.fall {
                    b.stats.set_check_failing(true);
                    tracing::warn!(upstream = %up.name, backend = %b.name, "backend is down (health check): {why}");
                }
            }
        }
    }
}

/// One check of one backend.
async fn probe(up: &Upstream, b: &Backend, c: &HealthCheckConfig) -> Result<(), String> {
    let once = async {
        let mut sender = if b.h2 {
            Sender::H2(
                b.pool
                    .h2(up.config.connect_timeout.min(c.timeout))
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            Sender::H1(
                // Checks stay outside the connection limit: they must
                // get through to a busy backend.
                pool::connect(
                    b.socket_addr,
                    up.config.connect_timeout.min(c.timeout),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?,
            )
        };
        let host = c.host.clone().unwrap_or_else(|| b.address.clone());
        let mut req = Request::new(RequestBody::empty());
        if b.h2 {
            *req.uri_mut() = format!("http://{host}{}", c.path)
                .parse()
                .map_err(|e| format!("bad health-check target: {e}"))?;
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = c
                .path
                .parse()
                .map_err(|e| format!("bad health-check path: {e}"))?;
            req.headers_mut().insert(
                HOST,
                HeaderValue::from_str(&host).map_err(|e| format!("bad health-check host: {e}"))?,
            );
        }
        req.headers_mut().insert(
            USER_AGENT,
            HeaderValue::from_static("switchyard-health-check"),
        );
        let resp = sender
            .send(req)
            .await
            .map_err(|e| format!("check request failed: {}", e.into_error()))?;
        let status = resp.status().as_u16();
        if (c.expect.0..=c.expect.1).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "check answered {status}, expected {}-{}",
                c.expect.0, c.expect.1
            ))
        }
    };
    match tokio::time::timeout(c.timeout, once).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", c.timeout)),
    }
}
