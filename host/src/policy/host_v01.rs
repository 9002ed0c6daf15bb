//! The host functions of contract 0.1: the `request` resource, the
//! `counter` resource and the rest of `host`, over [`HostState`].

use wasmtime::component::Resource;

use super::bindings::{CounterRes, RequestRes, host, types};
use super::host_impl::{HostState, monotonic_ns};

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.req_method())
    }

    fn path(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.req_path())
    }

    fn query(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<Option<String>> {
        Ok(self.req_query())
    }

    fn host(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<Option<String>> {
        Ok(self.req_host())
    }

    fn scheme(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.req_scheme())
    }

    fn client_ip(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.req_client_ip())
    }

    fn header(
        &mut self,
        _: Resource<RequestRes>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.req_header(&name))
    }

    fn cookie(
        &mut self,
        _: Resource<RequestRes>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.req_cookie(&name))
    }

    fn drop(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<()> {
        // The request belongs to the proxy; a handle going away frees nothing.
        Ok(())
    }
}

impl host::Host for HostState {
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

impl host::HostCounter for HostState {
    fn new(&mut self, name: String) -> wasmtime::Result<Resource<CounterRes>> {
        let counter = self.open_counter(&name)?;
        match self.table.push(counter) {
            Ok(handle) => Ok(handle),
            Err(e) => {
                self.counters_open -= 1;
                Err(e.into())
            }
        }
    }

    fn fetch_add(&mut self, c: Resource<CounterRes>, delta: u64) -> wasmtime::Result<u64> {
        Ok(self.table.get(&c)?.fetch_add(delta))
    }

    fn get(&mut self, c: Resource<CounterRes>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&c)?.load())
    }

    fn set(&mut self, c: Resource<CounterRes>, value: u64) -> wasmtime::Result<()> {
        self.table.get(&c)?.store(value);
        Ok(())
    }

    fn drop(&mut self, c: Resource<CounterRes>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        self.counters_open = self.counters_open.saturating_sub(1);
        Ok(())
    }
}
