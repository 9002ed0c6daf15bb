//! A real DNS server for the tests: Debian's `dnsmasq` on a free 127.0.0.1
//! port (UDP and TCP), answering for `*.test` from a hosts file the test
//! writes and from the SRV records it is started with, every answer with a
//! TTL of 1 s; killed on drop.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The server binary (`apt-get install dnsmasq-base`; `./test.sh`
/// installs it).
const DNSMASQ: &str = "dnsmasq";

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Option<Killed>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    srv: Vec<String>,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts a server answering from `hosts` (lines `IP NAME`) and the
    /// `srv` records (`--srv-host` values: `_svc._proto.NAME,TARGET,PORT,PRIORITY,WEIGHT`).
    pub fn start(hosts: &str, srv: &[String]) -> Dnsmasq {
        let found = Command::new(DNSMASQ)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{DNSMASQ} is not installed: run ./test.sh (or apt-get install dnsmasq-base)"
        );
        let mut server = Dnsmasq {
            child: None,
            port: free_udp_and_tcp_port(),
            srv: srv.to_vec(),
            dir: TempDir::new("dnsmasq"),
        };
        server.set_hosts(hosts);
        server.spawn();
        server
    }

    /// `127.0.0.1:PORT`, for `[server] resolver`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("dnsmasq log");
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--no-daemon",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--no-resolv",
            "--no-hosts",
            // Names under .test are answered here or not at all (NXDOMAIN
            // or no data, never REFUSED).
            "--local=/test/",
            "--local-ttl=1",
            "--log-queries",
            "--log-facility=-",
            "--pid-file=",
        ])
        .arg(format!("--port={}", self.port))
        .arg(format!("--addn-hosts={}", self.hosts_path().display()));
        for s in &self.srv {
            cmd.arg(format!("--srv-host={s}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the hosts file (atomically) and, if running, makes dnsmasq
    /// read it again (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        let tmp = self.dir.write("hosts.new", hosts);
        std::fs::rename(tmp, self.hosts_path()).expect("replace hosts file");
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.0.id()).expect("pid");
            // SAFETY: sends a signal to our own child.
            let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
            assert_eq!(sent, 0, "SIGHUP to dnsmasq");
        }
    }

    /// Stops it: its port then answers nothing.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port, with the hosts file as it is now.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// What it logged (every query, with `--log-queries`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (dnsmasq takes both).
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}
