//! Switchyard: a load-balancing reverse proxy whose backend choice is a
//! WebAssembly component.
//!
//! The crate reads in layers, each using only those below it (checked by
//! a test over the `use crate::` lines):
//!
//! | layer | owns |
//! | --- | --- |
//! | [`control`] | runtime build from config, reload, file watch, admin API, metrics, process limits |
//! | [`edge`] | listeners, TLS and ALPN, the HTTP/1.1 and HTTP/2 servers, connection limits and timeouts |
//! | [`proxy`] | the request path: check, route, rewrite, forward, retry, stream back, tunnels, access log |
//! | [`upstream`] | groups and backends, pools, health, the one `report` of every attempt's outcome |
//! | [`policy`] | the Wasm boundary: engine, instances, sandbox, bindings; nothing else imports wasmtime |
//! | [`config`] | the TOML file into checked types; imports nothing from the crate |
//!
//! A request travels up from `edge::conn` to `proxy::Proxy::handle`, which
//! asks `upstream::Upstream::choose` (and through it the policy), sends the
//! request on an `upstream::pool` connection and streams the answer back.

pub mod config;
pub mod control;
pub mod edge;
pub mod policy;
pub mod proxy;
pub mod upstream;
