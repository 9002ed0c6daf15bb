//! Pingora as a peer in Switchyard's benchmark: a round-robin reverse proxy
//! built the way Pingora's `load_balancer` example builds one, configured
//! like the other proxies in `bench/configs/`.
//!
//! ```text
//! pingora-lb-bench --listen 127.0.0.1:8080 [--listen 127.0.0.1:8081] [--h2c]
//!                  [--threads N] --backend 127.0.0.1:9001 --backend ...
//! ```
//!
//! - `LoadBalancer<RoundRobin>` over static backends, no health checks, no
//!   TLS, no access log (Pingora logs through the `log` crate and no logger
//!   is installed).
//! - HTTP/1.1 to the backends, idle connections kept in Pingora's upstream
//!   pool (256, like nginx's `keepalive 256`).
//! - `X-Forwarded-For` (appended to, like nginx's
//!   `$proxy_add_x_forwarded_for`), `X-Forwarded-Proto: http` and
//!   `X-Forwarded-Host` set; `Host` passes through.
//! - `--h2c` accepts HTTP/2 prior knowledge on every listener. Pingora's
//!   server options belong to a service, not to a listener, and a second
//!   service would bring a second runtime with its own threads; so one
//!   service serves both ports and peeks at the first bytes of each new
//!   connection for the HTTP/2 preface.
//! - One service runtime with `--threads` worker threads (Pingora's default,
//!   work-stealing, runtime), plus Pingora's main thread, which waits for
//!   signals. SIGTERM and SIGINT stop it at once: no grace period, since the
//!   benchmark harness kills what is still running after 5 s.

use std::net::SocketAddr;
use std::process::exit;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::http::RequestHeader;
use pingora::lb::{LoadBalancer, selection::RoundRobin};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::configuration::ServerConf;

struct Args {
    listen: Vec<String>,
    backends: Vec<SocketAddr>,
    threads: usize,
    h2c: bool,
}

const USAGE: &str = "usage: pingora-lb-bench --listen ADDR [--listen ADDR] [--h2c] \
                     [--threads N] --backend ADDR [--backend ADDR ...]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: vec![],
        backends: vec![],
        threads: 1,
        h2c: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen.push(value()?),
            "--backend" => {
                let v = value()?;
                args.backends
                    .push(v.parse().map_err(|e| format!("--backend {v}: {e}"))?);
            }
            "--threads" => {
                let v = value()?;
                args.threads = v.parse().map_err(|e| format!("--threads {v}: {e}"))?;
            }
            "--h2c" => args.h2c = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0);
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.listen.is_empty() || args.backends.is_empty() || args.threads == 0 {
        return Err("at least one --listen, one --backend and one thread are needed".into());
    }
    Ok(args)
}

/// The proxy logic: pick the next backend, set the forwarding headers.
struct RoundRobinProxy {
    backends: LoadBalancer<RoundRobin>,
}

#[async_trait]
impl ProxyHttp for RoundRobinProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        // The key only matters to hashing selections; round robin ignores
        // it. One try is enough: without health checks every backend is ready.
        let backend = self
            .backends
            .select(b"", 1)
            .ok_or_else(|| Error::explain(HTTPStatus(502), "no backend"))?;
        let addr = *backend
            .addr
            .as_inet()
            .expect("backends are parsed as IP addresses");
        // Plain HTTP/1.1 (no TLS, so no SNI); Pingora pools the connection
        // for reuse once the response has been read.
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = client.ip().to_string();
            let forwarded_for = match upstream.headers.get("x-forwarded-for") {
                Some(prior) => format!("{}, {ip}", String::from_utf8_lossy(prior.as_bytes())),
                None => ip,
            };
            upstream.insert_header("X-Forwarded-For", forwarded_for)?;
        }
        upstream.insert_header("X-Forwarded-Proto", "http")?;
        // HTTP/1.1 names the host in `Host`, HTTP/2 in `:authority`.
        let req = session.req_header();
        let host = match req.headers.get("host") {
            Some(host) => Some(host.clone()),
            None => req.uri.authority().and_then(|a| a.as_str().parse().ok()),
        };
        if let Some(host) = host {
            upstream.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("pingora-lb-bench: {e}\n{USAGE}");
        exit(2);
    });

    let conf = ServerConf {
        threads: args.threads,
        upstream_keepalive_pool_size: 256,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // A static list: `try_from_iter` runs the (instant) discovery once, and
    // with no health check every backend stays selectable.
    let backends = LoadBalancer::try_from_iter(&args.backends).unwrap_or_else(|e| {
        eprintln!("pingora-lb-bench: backends: {e}");
        exit(2);
    });
    let mut service = http_proxy_service(&server.configuration, RoundRobinProxy { backends });
    if args.h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        service
            .app_logic_mut()
            .expect("a new service has its logic")
            .server_options = Some(options);
    }
    for addr in &args.listen {
        service.add_tcp(addr);
    }
    server.add_service(service);
    server.run_forever();
}
