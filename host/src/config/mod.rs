//! The TOML configuration: what the file says, checked into strict types.
//!
//! Two layers, as in Sozu: [`file`] mirrors the file (serde, kebab-case
//! keys, unknown keys refused, spans kept), and the `to_*` conversions in
//! [`server`], [`upstream`] and [`routes`] turn it into the runtime
//! [`Config`] with defaults filled in, addresses resolved and
//! cross-references checked. Every problem is reported, each with its file,
//! line, column and key; this module imports nothing from the rest of the
//! crate.

mod check;
mod discovery;
mod dns;
mod file;
mod load;
pub mod oci;
mod policy;
mod routes;
mod server;
mod shadow;
mod state;
mod upstream;
pub mod values;

pub use check::{ConfigError, ConfigErrors, Origin};
pub use dns::{DEFAULT_DNS_REFRESH, DnsBackends, DnsQuery, DnsSource, MIN_DNS_REFRESH};
pub use file::LogFormat;
pub use load::Config;
pub use oci::OciReference;
pub use policy::PolicySource;
pub use routes::{HostMatch, RouteConfig};
pub use server::{
    AccessLogConfig, AdminConfig, ClientLimits, DEFAULT_CLIENT_BODY_TIMEOUT,
    DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TLS_HANDSHAKE_TIMEOUT, ListenerConfig,
    TlsFiles,
};
pub use state::{
    CaFile, DEFAULT_COUNTER_BLOCK, DEFAULT_STATE_REFRESH, RedisTarget, SharedStateMode, StateConfig,
};
pub use upstream::{
    BackendConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE, DEFAULT_MAX_CONNECTIONS_PER_BACKEND, DEFAULT_MAX_FAILS,
    DEFAULT_POLICY_MAX_FAILURES, DEFAULT_POLICY_MEMORY, DEFAULT_POLICY_MEMORY_MAX,
    DEFAULT_POLICY_TIMEOUT, DEFAULT_POLICY_TIMEOUT_MAX, DEFAULT_READ_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, DEFAULT_SEND_TIMEOUT,
    DEFAULT_TUNNEL_IDLE_TIMEOUT, HealthCheckConfig, SandboxConfig, ShadowConfig, UpstreamConfig,
};

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;
