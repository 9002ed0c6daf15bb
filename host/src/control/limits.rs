//! The process's file-descriptor limit and the connections it must hold.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard one (most
//! systems start processes at 1,024). A proxied request can hold two
//! descriptors (the client's connection and a backend's), so a config whose
//! `max-connections` cannot fit under the limit is refused where it says
//! so; the default is lowered to fit instead, with a warning.

use crate::config::{Config, ConfigError};

/// Descriptors kept aside for listeners, the admin API, files, the policy
/// cache and health checks.
const RESERVE: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns the limit now
/// in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The open-file limit in force.
fn nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// The largest `max-connections` per listener that fits `limit`
/// descriptors with `config`'s listeners and idle backend pools.
fn fitting(config: &Config, limit: u64) -> u64 {
    let listeners = config.listeners.len().max(1) as u64;
    let pools: u64 = config
        .upstreams
        .iter()
        .map(|u| (u.keepalive * u.backends.len()) as u64)
        .sum();
    limit.saturating_sub(RESERVE + pools) / (2 * listeners)
}

/// Checks `max-connections` against the descriptor limit: refuses a
/// written value that cannot fit, lowers the default to fit.
pub fn fit_connections(config: &mut Config) -> Result<(), ConfigError> {
    let Some(limit) = nofile() else { return Ok(()) };
    let fits = fitting(config, limit);
    let want = config.limits.max_connections as u64;
    if want <= fits {
        return Ok(());
    }
    match &config.limits.max_connections_origin {
        Some(origin) => Err(origin.error(format!(
            "server.max-connections: {want} connections per listener need up to {} open files (client and backend side), but this process may open {limit} (RLIMIT_NOFILE); lower it to {fits} or raise the limit (ulimit -n, LimitNOFILE=)",
            want * 2 * config.listeners.len().max(1) as u64
        ))),
        None => {
            let lowered = fits.max(1) as usize;
            tracing::warn!(
                "max-connections lowered from its default {want} to {lowered} per listener to fit the open-file limit of {limit} (raise it with ulimit -n or LimitNOFILE=)"
            );
            config.limits.max_connections = lowered;
            Ok(())
        }
    }
}
