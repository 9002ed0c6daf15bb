//! The access log: one line per request, written by its own thread.
//!
//! The request path only fills an [`Entry`] and, when the response body is
//! finished, hands it over a bounded channel; formatting and writing happen
//! on the log thread, which flushes whenever it runs out of lines. If the
//! log cannot keep up, lines are dropped (and counted) rather than slowing
//! requests down.
//!
//! Formats:
//! - `common`: NCSA common log format plus upstream fields,
//!   `127.0.0.1 - - [26/Nov/2026:13:08:46 +0000] "GET /a HTTP/1.1" 200 5 backend=a upstream_time=0.001 time=0.002`
//! - `json`: `{"time":"2026-11-26T13:08:46Z","client":"127.0.0.1","method":"GET","host":"example.com",...}`

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::config::{AccessLogConfig, LogFormat};

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// What is known of a request when its response starts.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub time: SystemTime,
    /// When the request arrived, for the total time.
    pub started: Instant,
    /// The client's address.
    pub client: IpAddr,
    /// Request method.
    pub method: Method,
    /// The host the request named (`Host` or the URI's authority).
    pub host: Option<String>,
    /// Path and query as sent.
    pub target: String,
    /// Protocol version.
    pub version: Version,
    /// Response status.
    pub status: u16,
    /// The backend that answered, if any.
    pub backend: Option<Arc<str>>,
    /// Time from sending to the backend until its response headers.
    pub upstream_time: Option<Duration>,
}

/// An entry waiting for its response body to finish.
#[derive(Debug)]
pub struct Pending {
    entry: Entry,
    /// Body bytes sent so far.
    pub bytes: u64,
    log: AccessLog,
}

impl Pending {
    /// Sends the line; called when the body is finished or dropped.
    pub fn finish(self) {
        let Pending { entry, bytes, log } = self;
        let total = entry.started.elapsed();
        let line = Line {
            entry,
            bytes,
            total,
        };
        match log.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                log.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Line {
    entry: Entry,
    bytes: u64,
    total: Duration,
}

/// [`AccessLog`] is a handle on the log thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the destination (appending to a file) and starts the writer.
    pub fn open(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match &config.path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(open_append(p)?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let format = config.format;
        std::thread::Builder::new()
            .name("switchyard-access-log".into())
            .spawn(move || write_lines(rx, BufWriter::new(out), format))?;
        Ok(AccessLog {
            tx,
            dropped: Arc::default(),
        })
    }

    /// A pending line for `entry`, to be finished by the response body.
    pub fn start(&self, entry: Entry) -> Box<Pending> {
        Box::new(Pending {
            entry,
            bytes: 0,
            log: self.clone(),
        })
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_lines(rx: Receiver<Line>, mut out: BufWriter<Box<dyn Write + Send>>, format: LogFormat) {
    let mut text = String::with_capacity(256);
    let mut write = |line: &Line, out: &mut BufWriter<Box<dyn Write + Send>>| {
        text.clear();
        match format {
            LogFormat::Common => common(line, &mut text),
            LogFormat::Json => json(line, &mut text),
        }
        text.push('\n');
        out.write_all(text.as_bytes())
    };
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if write(&line, &mut out).is_err() {
            break;
        }
        // Write what else is queued, then flush once.
        while let Ok(next) = rx.try_recv() {
            if write(&next, &mut out).is_err() {
                return;
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn secs(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

/// `26/Nov/2026:13:08:46 +0000` (UTC).
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn common(l: &Line, out: &mut String) {
    use std::fmt::Write as _;
    let e = &l.entry;
    let target = e.target.replace('"', "%22");
    let _ = write!(
        out,
        "{} - - [{}] \"{} {} {}\" {} {} backend={} upstream_time={} time={}",
        e.client,
        clf_time(e.time),
        e.method,
        target,
        version(e.version),
        e.status,
        l.bytes,
        e.backend.as_deref().unwrap_or("-"),
        e.upstream_time.map_or_else(|| "-".into(), secs),
        secs(l.total),
    );
}

fn json(l: &Line, out: &mut String) {
    let e = &l.entry;
    let value = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "client": e.client.to_string(),
        "method": e.method.as_str(),
        "host": e.host,
        "target": e.target,
        "protocol": version(e.version),
        "status": e.status,
        "bytes": l.bytes,
        "backend": e.backend.as_deref(),
        "upstream_time": e.upstream_time.map(|d| d.as_secs_f64()),
        "time_total": l.total.as_secs_f64(),
    });
    out.push_str(&value.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            entry: Entry {
                time: UNIX_EPOCH + Duration::from_secs(1_795_698_526),
                started: Instant::now(),
                client: IpAddr::from([127, 0, 0, 1]),
                method: Method::GET,
                host: Some("example.com".into()),
                target: "/a?\"q\"".into(),
                version: Version::HTTP_11,
                status: 200,
                backend: Some("a".into()),
                upstream_time: Some(Duration::from_millis(1)),
            },
            bytes: 5,
            total: Duration::from_millis(2),
        }
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn common_lines_look_like_nginx_ones() {
        let mut out = String::new();
        common(&line(), &mut out);
        assert_eq!(
            out,
            "127.0.0.1 - - [26/Nov/2026:13:08:46 +0000] \"GET /a?%22q%22 HTTP/1.1\" 200 5 backend=a upstream_time=0.001000 time=0.002000"
        );
    }

    #[test]
    fn json_lines_are_json() {
        let mut out = String::new();
        json(&line(), &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["target"], "/a?\"q\"");
        assert_eq!(v["backend"], "a");
        assert_eq!(v["time"], "2026-11-26T13:08:46.000Z");
    }
}
