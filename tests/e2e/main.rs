//! End-to-end tests: the real `switchyard` binary, real backends on
//! 127.0.0.1, real config and plugin files, real HTTP clients.

mod common;
mod dnsmasq;
mod fixtures;
mod registry;

mod adaptive;
mod admin;
mod balancing;
mod check;
mod contract;
mod demo;
mod dns;
mod failures;
mod flask;
mod forwarding;
mod hardening;
mod hot_swap;
mod languages;
mod lifecycle;
mod limits;
mod oci;
mod pinned;
mod pooling;
mod protocols;
mod reload;
mod resilience;
mod sandbox;
mod shadow;
mod shared_state;
mod shared_state_cluster;
mod shared_state_tls;
mod simulate;
