//! Regression tests for the hardening issue: one test (or a few) per
//! numbered item, named `itemNN_what_the_user_sees`, each against the real
//! binary with real clients and backends on 127.0.0.1.
//!
//! - `connections`: connections must not be held forever (items 1-4);
//! - `messages`: messages must arrive as sent (items 5-12);
//! - `backends`: backends and retries (items 13-14);
//! - `sandbox_admin`: the sandbox, the admin API and the config (items 15-18).
//!
//! Python clients (h2, websockets) are in `tests/e2e/py/hardening.py`.

mod support;

mod backends;
mod connections;
mod messages;
mod sandbox_admin;
