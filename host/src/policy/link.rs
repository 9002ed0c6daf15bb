//! The connection [`super::fleet`] talks to Redis through: one server
//! (`redis`) through a [`ConnectionManager`], which reconnects by itself,
//! or a Redis Cluster (`redis-cluster`) through the crate's async cluster
//! client, which learns the slots from the nodes given, follows `MOVED`
//! and `ASK`, and reconnects. Both implement
//! [`redis::aio::ConnectionLike`], so the fleet's code is the same for
//! either; neither waits for Redis to be made.
//!
//! `rediss://` is TLS over rustls (ring, as the listeners use): the
//! server's certificate must name the host of the address and chain to the
//! system's roots, or, with `[state] ca`, to the certificates in that file
//! (instead of the system's). No client certificate is sent.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisResult, TlsCertificates};

use crate::config::{RedisTarget, StateConfig};

/// [`Link`] is the connection to one `[state]`'s Redis.
pub enum Link {
    /// One server (or a replicated primary).
    One(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Link {
    /// The connection `config` names, each command bounded by `timeout`
    /// (and so is a connect). Fails only on what the addresses or the
    /// certificates say, never because Redis does not answer.
    pub fn open(config: &StateConfig, timeout: Duration) -> RedisResult<Link> {
        if config.redis.tls() {
            // The redis crate builds its rustls configs with the process's
            // provider; the listeners use ring too.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certs = config.ca.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem.clone()),
        });
        match &config.redis {
            RedisTarget::Single(url) => {
                let client = match certs {
                    Some(certs) => Client::build_with_tls(url.as_str(), certs)?,
                    None => Client::open(url.as_str())?,
                };
                let options = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(timeout);
                Ok(Link::One(ConnectionManager::new_lazy_with_config(
                    client, options,
                )?))
            }
            RedisTarget::Cluster(urls) => {
                let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(millis);
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let options = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(options),
                ))
            }
        }
    }
}
