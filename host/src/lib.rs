//! Switchyard: a load-balancing reverse proxy whose backend choice is a
//! WebAssembly component.
//!
//! How a request travels (each step is one module):
//!
//! 1. [`server`] accepts the connection and speaks HTTP/1.1 or h2c with
//!    hyper.
//! 2. [`proxy`] routes it ([`router`]) to an upstream group, rewrites its
//!    headers ([`headers`]) and asks the group for a backend.
//! 3. [`upstream`] builds the backends' live states (health, in-flight,
//!    latency) and calls the group's [`policy`]: a Wasm component, one
//!    instance per worker thread, checked and backed by a native fallback.
//! 4. [`pool`] supplies a keep-alive connection to that backend; [`body`]
//!    streams both bodies and returns the connection when the response ends.
//!
//! [`config`] reads the TOML file, [`runtime`] turns it into upstreams with
//! loaded policies, [`reload`] replaces it (or one policy) while traffic
//! flows, driven by signals, [`watch`] and [`admin`]; [`metrics`] counts;
//! [`app`] starts and stops the whole, [`demo`] is the self-contained
//! tutorial.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authoring;
pub mod body;
pub mod config;
pub mod demo;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watch;
