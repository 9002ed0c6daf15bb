//! [`Resolver`]: hickory's stub resolver, pointed at `[server] resolver`
//! or the system's servers, and what one `dns` or `srv` entry finds with
//! it ([`Answer`]). Every lookup asks the servers again (the group's
//! refresh is the cache), over UDP and, for a truncated answer, TCP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::{BackendConfig, DnsBackends, DnsQuery};

/// How long one query waits for a server's answer before it is asked
/// again (once) or the next server is.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an entry found nothing.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (e.g. `/etc/resolv.conf` unreadable).
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
    /// No usable answer: timeout, server failure, refused, network error.
    #[error("{0}")]
    Failed(String),
    /// The servers answered that the name has no such record.
    #[error("no {0} records")]
    Empty(&'static str),
}

impl LookupError {
    /// The `result` label of `switchyard_dns_resolutions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LookupError::Empty(_) => "empty",
            LookupError::Setup(_) | LookupError::Failed(_) => "failed",
        }
    }
}

/// What one entry found: its backends, sorted by name, and the shortest TTL
/// of the records that gave them.
#[derive(Debug)]
pub struct Answer {
    /// One per address.
    pub backends: Vec<BackendConfig>,
    /// The shortest TTL seen.
    pub ttl: Duration,
}

/// See the module docs.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `server` (over UDP and TCP), or the servers of
    /// `/etc/resolv.conf` (and `/etc/hosts` first, as the C library would)
    /// when `None`.
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, LookupError> {
        let setup = |e: NetError| LookupError::Setup(e.to_string());
        let (config, mut options) = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                let mut options = ResolverOpts::default();
                options.use_hosts_file = ResolveHosts::Never;
                (ResolverConfig::from_name_servers(vec![ns]), options)
            }
            None => hickory_resolver::system_conf::read_system_conf().map_err(setup)?,
        };
        options.timeout = QUERY_TIMEOUT;
        options.attempts = 1;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(setup)?;
        Ok(Resolver { inner })
    }

    /// Looks `entry` up afresh.
    pub async fn find(&self, entry: &DnsBackends) -> Result<Answer, LookupError> {
        self.inner.clear_cache();
        match &entry.query {
            DnsQuery::Host { host, port } => {
                let (ips, ttl) = self.addresses(host).await?;
                if ips.is_empty() {
                    return Err(LookupError::Empty("A or AAAA"));
                }
                let mut backends: Vec<BackendConfig> = ips
                    .into_iter()
                    .map(|ip| {
                        let addr = SocketAddr::new(ip, *port);
                        entry.backend(&addr.to_string(), addr, None, false)
                    })
                    .collect();
                backends.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Answer { backends, ttl })
            }
            DnsQuery::Srv(name) => self.srv(entry, name).await,
        }
    }

    /// The A and AAAA addresses of `host`, and their shortest TTL; empty
    /// when the name has neither. The lookup fails only when both queries
    /// do: a server that refuses or botches AAAA (some do) must not keep
    /// the IPv4 addresses out, and one family's addresses still serve.
    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), LookupError> {
        let (v4, v6) = tokio::join!(
            self.records(host, RecordType::A),
            self.records(host, RecordType::AAAA)
        );
        let answered = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
                tracing::debug!("{e}: using the other family's answer");
                [a, None]
            }
            (Ok(a), Ok(b)) => [a, b],
        };
        let (mut ips, mut ttl) = (Vec::new(), None::<u32>);
        for lookup in answered.into_iter().flatten() {
            for r in lookup.answers() {
                if let Some(ip) = r.data.ip_addr() {
                    ips.push(ip);
                    ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                }
            }
        }
        ips.sort();
        ips.dedup();
        Ok((ips, Duration::from_secs(u64::from(ttl.unwrap_or(0)))))
    }

    /// One query: `None` when the name has no such record.
    async fn records(&self, name: &str, kind: RecordType) -> Result<Option<Lookup>, LookupError> {
        match self.inner.lookup(name, kind).await {
            Ok(lookup) => Ok(Some(lookup)),
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(LookupError::Failed(format!("{kind} {name}: {e}"))),
        }
    }

    /// The SRV records of `name`, each target looked up: a backend per
    /// target address, weighted as its record says; records of a worse
    /// priority than the best one found are backups (RFC 2782: the lowest
    /// priority is used while it can be reached).
    async fn srv(&self, entry: &DnsBackends, name: &str) -> Result<Answer, LookupError> {
        let Some(lookup) = self.records(name, RecordType::SRV).await? else {
            return Err(LookupError::Empty("SRV"));
        };
        let mut ttl = u32::MAX;
        let mut records = Vec::new();
        for r in lookup.answers() {
            if let RData::SRV(srv) = &r.data {
                ttl = ttl.min(r.ttl);
                // A target of "." says the service is not offered there.
                if !srv.target.is_root() {
                    records.push(srv.clone());
                }
            }
        }
        let best = records.iter().map(|s| s.priority).min();
        let mut backends = Vec::new();
        for srv in &records {
            let target = srv.target.to_utf8();
            let target = target.trim_end_matches('.');
            let (ips, t) = self.addresses(target).await?;
            if !ips.is_empty() {
                ttl = ttl.min(u32::try_from(t.as_secs()).unwrap_or(u32::MAX));
            }
            for ip in &ips {
                let label = match ips.len() {
                    1 => format!("{target}:{}", srv.port),
                    _ => format!("{target}:{}@{ip}", srv.port),
                };
                let addr = SocketAddr::new(*ip, srv.port);
                let backup = Some(srv.priority) != best;
                backends.push(entry.backend(&label, addr, Some(srv.weight), backup));
            }
        }
        if backends.is_empty() {
            return Err(LookupError::Empty("SRV target address"));
        }
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        backends.dedup_by(|a, b| a.name == b.name);
        Ok(Answer {
            backends,
            ttl: Duration::from_secs(u64::from(ttl)),
        })
    }
}
