//! The proxy's functions as the SDK calls them: the contract's imports in a
//! component, the test double ([`crate::testing`]) in a native build, so a
//! policy's `cargo test` runs without the proxy.

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::switchyard::policy::{decision, host, request};
    use crate::{BackendLoad, LogLevel, SetCookie};

    pub fn method() -> String {
        request::method()
    }
    pub fn path() -> String {
        request::path()
    }
    pub fn query() -> Option<String> {
        request::query()
    }
    pub fn host_name() -> Option<String> {
        request::host()
    }
    pub fn scheme() -> String {
        request::scheme()
    }
    pub fn client_ip() -> String {
        request::client_ip()
    }
    pub fn header(name: &str) -> Option<String> {
        request::header(name)
    }
    pub fn cookie(name: &str) -> Option<String> {
        request::cookie(name)
    }
    pub fn attempt() -> u32 {
        request::attempt()
    }
    pub fn set_cookie(c: &SetCookie) {
        decision::set_response_cookie(c)
    }
    pub fn fallbacks(list: &[u32]) {
        decision::fallbacks(list)
    }
    pub fn reason(text: &str) {
        decision::reason(text)
    }
    pub fn load(index: u32) -> BackendLoad {
        host::load(index)
    }
    pub fn loads() -> Vec<BackendLoad> {
        host::loads()
    }
    pub fn counter(name: &str) -> u32 {
        host::counter(name)
    }
    pub fn counter_add(c: u32, delta: u64) -> u64 {
        host::counter_add(c, delta)
    }
    pub fn counter_get(c: u32) -> u64 {
        host::counter_get(c)
    }
    pub fn counter_set(c: u32, value: u64) {
        host::counter_set(c, value)
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }
    pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
        host::kv_set(key, value)
    }
    pub fn kv_delete(key: &str) -> bool {
        host::kv_delete(key)
    }
    pub fn random_u64() -> u64 {
        host::random_u64()
    }
    pub fn now_ns() -> u64 {
        host::now_ns()
    }
    pub fn zone() -> Option<String> {
        host::zone()
    }
    pub fn watch_response_header(name: &str) {
        host::watch_response_header(name)
    }
    pub fn ignore_outcomes() {
        host::ignore_outcomes()
    }
    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::testing::with_host;
    use crate::{BackendLoad, LogLevel, SetCookie};

    pub fn method() -> String {
        with_host(|h| h.request.method.clone())
    }
    pub fn path() -> String {
        with_host(|h| h.request.path.clone())
    }
    pub fn query() -> Option<String> {
        with_host(|h| h.request.query.clone())
    }
    pub fn host_name() -> Option<String> {
        with_host(|h| h.request.host.clone())
    }
    pub fn scheme() -> String {
        with_host(|h| h.request.scheme.clone())
    }
    pub fn client_ip() -> String {
        with_host(|h| h.request.client_ip.clone())
    }
    pub fn header(name: &str) -> Option<String> {
        with_host(|h| h.request.header(name))
    }
    pub fn cookie(name: &str) -> Option<String> {
        with_host(|h| h.request.cookie(name))
    }
    pub fn attempt() -> u32 {
        with_host(|h| h.request.attempt)
    }
    pub fn set_cookie(c: &SetCookie) {
        with_host(|h| h.effects.cookie = Some(c.clone()))
    }
    pub fn fallbacks(list: &[u32]) {
        with_host(|h| h.effects.fallbacks = list.to_vec())
    }
    pub fn reason(text: &str) {
        with_host(|h| h.effects.reason = Some(text.to_string()))
    }
    pub fn load(index: u32) -> BackendLoad {
        with_host(|h| {
            h.loads.get(index as usize).copied().unwrap_or(BackendLoad {
                in_flight: 0,
                latency_ewma_us: 0,
            })
        })
    }
    pub fn loads() -> Vec<BackendLoad> {
        with_host(|h| h.loads.clone())
    }
    pub fn counter(name: &str) -> u32 {
        with_host(|h| h.counter(name))
    }
    pub fn counter_add(c: u32, delta: u64) -> u64 {
        with_host(|h| {
            let v = &mut h.counters[c as usize].1;
            let old = *v;
            *v = v.wrapping_add(delta);
            old
        })
    }
    pub fn counter_get(c: u32) -> u64 {
        with_host(|h| h.counters[c as usize].1)
    }
    pub fn counter_set(c: u32, value: u64) {
        with_host(|h| h.counters[c as usize].1 = value)
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.kv.get(key).cloned())
    }
    pub fn kv_set(key: &str, value: &[u8]) -> Result<(), String> {
        with_host(|h| {
            h.kv.insert(key.to_string(), value.to_vec());
            Ok(())
        })
    }
    pub fn kv_delete(key: &str) -> bool {
        with_host(|h| h.kv.remove(key).is_some())
    }
    pub fn random_u64() -> u64 {
        with_host(|h| h.random())
    }
    pub fn now_ns() -> u64 {
        with_host(|h| h.now_ns)
    }
    pub fn zone() -> Option<String> {
        with_host(|h| h.zone.clone())
    }
    pub fn watch_response_header(name: &str) {
        with_host(|h| h.watched.push(name.to_ascii_lowercase()))
    }
    pub fn ignore_outcomes() {
        with_host(|h| h.ignores_outcomes = true)
    }
    pub fn log(level: LogLevel, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
}

pub use imp::*;
