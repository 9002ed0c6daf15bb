//! The host functions of contract 0.2: plain functions over
//! [`HostState`]. The request and the decision's effects are the `select`
//! in progress; counters are indices into the instance's own list.

use super::api::{CookieSpec, SameSite};
use super::bindings::v02::switchyard::policy::{decision, host, request, types};
use super::counter::Counter;
use super::host_impl::{HostState, MAX_FALLBACKS, MAX_REASON, MAX_WATCHED, monotonic_ns};

impl types::Host for HostState {}

impl request::Host for HostState {
    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.req_method())
    }

    fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.req_path())
    }

    fn query(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.req_query())
    }

    fn host(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.req_host())
    }

    fn scheme(&mut self) -> wasmtime::Result<String> {
        Ok(self.req_scheme())
    }

    fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.req_client_ip())
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.req_header(&name))
    }

    fn cookie(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.req_cookie(&name))
    }

    fn attempt(&mut self) -> wasmtime::Result<u32> {
        Ok(self.request.get().attempt)
    }
}

/// The host's cookie from the contract's.
pub fn cookie_spec(c: types::SetCookie) -> CookieSpec {
    CookieSpec {
        name: c.name,
        value: c.value,
        path: c.path,
        domain: c.domain,
        max_age: c.max_age,
        http_only: c.http_only,
        secure: c.secure,
        same_site: c.same_site.map(|s| match s {
            types::SameSite::Strict => SameSite::Strict,
            types::SameSite::Lax => SameSite::Lax,
            types::SameSite::None => SameSite::None,
        }),
    }
}

impl decision::Host for HostState {
    fn set_response_cookie(&mut self, cookie: types::SetCookie) -> wasmtime::Result<()> {
        if self.v02.in_select {
            self.v02.effects.cookie = Some(Box::new(cookie_spec(cookie)));
        }
        Ok(())
    }

    fn fallbacks(&mut self, backends: Vec<u32>) -> wasmtime::Result<()> {
        if self.v02.in_select {
            self.v02.effects.fallbacks = backends.into_iter().take(MAX_FALLBACKS).collect();
        }
        Ok(())
    }

    fn reason(&mut self, mut text: String) -> wasmtime::Result<()> {
        if self.v02.in_select {
            if text.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            self.v02.effects.reason = Some(text);
        }
        Ok(())
    }
}

impl HostState {
    fn counter_at(&self, handle: u32) -> wasmtime::Result<&Counter> {
        match self.v02.counters.get(handle as usize) {
            Some((_, c)) => Ok(c),
            None => wasmtime::bail!("counter handle {handle} was not opened by this instance"),
        }
    }
}

impl host::Host for HostState {
    fn load(&mut self, index: u32) -> wasmtime::Result<types::BackendLoad> {
        let (in_flight, latency_ewma_us) = self
            .v02
            .loads
            .get(index as usize)
            .copied()
            .unwrap_or_default();
        Ok(types::BackendLoad {
            in_flight,
            latency_ewma_us,
        })
    }

    fn loads(&mut self) -> wasmtime::Result<Vec<types::BackendLoad>> {
        Ok(self
            .v02
            .loads
            .iter()
            .map(|&(in_flight, latency_ewma_us)| types::BackendLoad {
                in_flight,
                latency_ewma_us,
            })
            .collect())
    }

    fn counter(&mut self, name: String) -> wasmtime::Result<u32> {
        if let Some(i) = self.v02.counters.iter().position(|(n, _)| **n == *name) {
            return Ok(i as u32);
        }
        let counter = self.open_counter(&name)?;
        self.v02.counters.push((name.into(), counter));
        Ok(self.v02.counters.len() as u32 - 1)
    }

    fn counter_add(&mut self, counter: u32, delta: u64) -> wasmtime::Result<u64> {
        Ok(self.counter_at(counter)?.fetch_add(delta))
    }

    fn counter_get(&mut self, counter: u32) -> wasmtime::Result<u64> {
        Ok(self.counter_at(counter)?.load())
    }

    fn counter_set(&mut self, counter: u32, value: u64) -> wasmtime::Result<()> {
        self.counter_at(counter)?.store(value);
        Ok(())
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.shared.kv_get(&key))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.shared.kv_set(key, value))
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.shared.kv_delete(&key))
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(fastrand::u64(..))
    }

    fn now_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(monotonic_ns())
    }

    fn zone(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.v02.zone.as_deref().map(str::to_string))
    }

    fn watch_response_header(&mut self, name: String) -> wasmtime::Result<()> {
        let name = name.to_ascii_lowercase();
        let watch = &mut self.v02.watch;
        if self.v02.configuring
            && watch.len() < MAX_WATCHED
            && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && !watch.contains(&name)
        {
            watch.push(name);
        }
        Ok(())
    }

    fn ignore_outcomes(&mut self) -> wasmtime::Result<()> {
        if self.v02.configuring {
            self.v02.ignores_outcomes = true;
        }
        Ok(())
    }

    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            host::LogLevel::Debug => tracing::Level::DEBUG,
            host::LogLevel::Info => tracing::Level::INFO,
            host::LogLevel::Warn => tracing::Level::WARN,
            host::LogLevel::Error => tracing::Level::ERROR,
        };
        self.log_line(level, &message);
        Ok(())
    }
}
