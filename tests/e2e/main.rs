//! End-to-end tests: the real `switchyard` binary, real backends on
//! 127.0.0.1, real config and plugin files, real HTTP clients.

mod common;

mod balancing;
mod check;
mod demo;
mod failures;
mod forwarding;
