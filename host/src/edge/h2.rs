//! The HTTP/2 server, on the `h2` crate directly (as Pingora does) rather
//! than through hyper, for what a proxy needs that hyper's server does not
//! give:
//!
//! - a stream reset in the same packet as its `HEADERS` (rapid reset) is
//!   dropped before any policy decision or backend connection;
//! - `Expect: 100-continue` gets its interim `100` when the body is first
//!   read (hyper only does this for HTTP/1.1);
//! - a stream the client holds at a zero window is reset after the
//!   upstream's `send-timeout`, releasing its backend connection;
//! - a connection with no open stream for `client-idle-timeout` is sent
//!   `GOAWAY` and closed.
//!
//! Flow control: request data is released as the backend reads it;
//! response data is sent as the client's window allows, at most one body
//! frame ahead.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE, EXPECT};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::signal::{EVICT, SHUTDOWN, Tracked};
use crate::config::ClientLimits;
use crate::proxy::Proxy;
use crate::proxy::body::ProxyBody;
use crate::proxy::client::ClientConn;
use crate::upstream::body::{H2Body, RequestBody};

/// Streams a client may open at once on one connection.
const MAX_STREAMS: u32 = 200;
/// Flow-control windows offered to clients (as hyper does).
const WINDOW: u32 = 1024 * 1024;
/// Started streams a client may reset on one connection before it is told
/// to go away (`ENHANCE_YOUR_CALM`): resetting requests the proxy has
/// already passed on makes backends work for nothing (rapid reset).
const MAX_RESETS: u32 = 2 * MAX_STREAMS;
/// Past this many such resets, new streams of the connection wait
/// [`SUSPECT_DELAY`] before they start, so resets sent just behind their
/// HEADERS arrive first and the streams are dropped unstarted.
const SUSPECT_RESETS: u32 = 8;
const SUSPECT_DELAY: Duration = Duration::from_millis(5);
/// PING interval on a connection with open streams, and the time a PONG
/// may take before the connection is given up as dead.
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(20);

/// What one HTTP/2 connection needs.
pub struct H2Conn {
    /// The proxy serving its requests.
    pub proxy: Arc<Proxy>,
    /// Limits from the config.
    pub limits: ClientLimits,
    /// The connection as its listener tracks it.
    pub tracked: Arc<Tracked>,
}

/// Serves HTTP/2 on `io` (whose preface has not been consumed).
pub async fn serve<I>(io: I, c: H2Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let H2Conn {
        proxy,
        limits,
        tracked,
    } = c;
    let client = tracked.client.clone();
    let idle = limits.client_idle_timeout;
    let Some(mut conn) = handshake(io, &limits, &client).await else {
        return;
    };
    let quiet = Arc::new(Quiet::default());
    let mut ping = conn.ping_pong();
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut pong_due: Option<Instant> = None;
    let mut going_away: Option<Instant> = None;
    // One timer for every deadline, moved only when the earliest changes:
    // this loop runs each time the connection wakes.
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    loop {
        if going_away.is_none() && quiet.resets.load(Ordering::Relaxed) > MAX_RESETS {
            tracing::warn!(client = %client.peer.addr, "HTTP/2 client reset more than {MAX_RESETS} started streams, going away");
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            going_away = Some(Instant::now() + Duration::from_secs(1));
        }
        let idle_due = (client.active() == 0 && going_away.is_none())
            .then(|| Instant::from_std(client.idle_since() + idle));
        let due = [idle_due, pong_due, going_away, Some(next_ping)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_ping);
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        tokio::select! {
            accepted = poll_fn(|cx| quiet.watch(conn.poll_accept(cx))) => match accepted {
                Some(Ok((req, respond))) => {
                    let since = quiet.now();
                    tokio::spawn(stream(proxy.clone(), client.clone(), req, respond, quiet.clone(), since));
                }
                Some(Err(e)) => {
                    tracing::debug!(client = %client.peer.addr, "HTTP/2 connection error: {e}");
                    break;
                }
                None => break,
            },
            raised = tracked.signal.wait(EVICT | SHUTDOWN), if going_away.is_none() => {
                if raised & SHUTDOWN != 0 {
                    conn.graceful_shutdown();
                    going_away = Some(Instant::now() + idle.max(Duration::from_secs(5)));
                } else if client.active() == 0 {
                    // Nothing in flight: one GOAWAY naming the last stream.
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    going_away = Some(Instant::now() + Duration::from_secs(1));
                } else {
                    tracked.signal.stay();
                }
            }
            pong = poll_fn(|cx| match ping.as_mut() {
                Some(p) if pong_due.is_some() => p.poll_pong(cx).map(|r| r.is_ok()),
                _ => Poll::Pending,
            }), if pong_due.is_some() => {
                pong_due = None;
                if !pong {
                    break;
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                let state = Timers { idle_due, pong_due, going_away, next_ping };
                match on_timer(&mut conn, &mut ping, &client, idle, state, now) {
                    Some(t) => (pong_due, going_away, next_ping) = (t.pong_due, t.going_away, t.next_ping),
                    None => break,
                }
            }
        }
    }
    // Flush a GOAWAY, but never wait on the client for long.
    let _ = tokio::time::timeout(Duration::from_secs(1), poll_fn(|cx| conn.poll_closed(cx))).await;
}

/// The HTTP/2 handshake with the builder's settings, within the idle
/// timeout.
async fn handshake<I>(
    io: I,
    limits: &ClientLimits,
    client: &ClientConn,
) -> Option<h2::server::Connection<I, Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024));
    match tokio::time::timeout(limits.client_idle_timeout, builder.handshake(io)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(client = %client.peer.addr, "HTTP/2 handshake failed: {e}");
            None
        }
        Err(_) => None,
    }
}

/// A connection's deadlines.
#[derive(Clone, Copy)]
struct Timers {
    idle_due: Option<Instant>,
    pong_due: Option<Instant>,
    going_away: Option<Instant>,
    next_ping: Instant,
}

/// Acts on the deadlines that have passed at `now`: closes a connection
/// that did not go away in time or does not answer PINGs (`None`), sends
/// GOAWAY to an idle one, a PING to a busy one.
fn on_timer<I, B>(
    conn: &mut h2::server::Connection<I, B>,
    ping: &mut Option<h2::PingPong>,
    client: &ClientConn,
    idle: Duration,
    mut t: Timers,
    now: Instant,
) -> Option<Timers>
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: bytes::Buf,
{
    if t.going_away.is_some_and(|d| now >= d) || t.pong_due.is_some_and(|d| now >= d) {
        // GOAWAY not honoured in time, or a dead peer.
        return None;
    }
    if t.idle_due.is_some_and(|d| now >= d) && client.active() == 0 {
        tracing::debug!(client = %client.peer.addr, "HTTP/2 connection idle for {idle:?}, going away");
        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
        t.going_away = Some(now + idle.min(Duration::from_secs(10)));
    }
    if now >= t.next_ping {
        t.next_ping = now + PING_EVERY;
        if client.active() > 0
            && t.pong_due.is_none()
            && let Some(p) = ping.as_mut()
            && p.send_ping(h2::Ping::opaque()).is_ok()
        {
            t.pong_due = Some(now + PONG_WITHIN);
        }
    }
    Some(t)
}

/// [`Quiet`] counts the times the connection task has read everything the
/// client had sent (its `accept` returned pending), so that a new stream
/// can wait until the bytes that arrived with it have all been read.
#[derive(Default)]
struct Quiet {
    count: AtomicU64,
    /// Streams waiting in [`Quiet::after`]; only then is `changed` notified
    /// (a notify takes a lock, and this counts on every wake).
    waiting: AtomicUsize,
    changed: Notify,
    /// Streams the client reset after they had started.
    resets: AtomicU32,
}

impl Quiet {
    fn now(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Passes an `accept` poll through, counting a pending one.
    fn watch<T>(&self, p: Poll<T>) -> Poll<T> {
        if p.is_pending() {
            self.count.fetch_add(1, Ordering::AcqRel);
            if self.waiting.load(Ordering::Acquire) > 0 {
                self.changed.notify_waiters();
            }
        }
        p
    }

    /// Resolves once the connection has gone quiet after `since`.
    async fn after(&self, since: u64) {
        if self.now() != since {
            return;
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.now() != since {
                return;
            }
            changed.await;
        }
    }
}

/// One request stream, from its headers to the end of its response.
async fn stream(
    proxy: Arc<Proxy>,
    client: Arc<ClientConn>,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    quiet: Arc<Quiet>,
    since: u64,
) {
    // A stream reset right after its HEADERS (rapid reset) is known to be
    // reset once the connection task has read everything that had arrived:
    // it then costs no decision and no backend connection.
    quiet.after(since).await;
    if quiet.resets.load(Ordering::Relaxed) > SUSPECT_RESETS {
        // A connection that keeps resetting what it starts: give its
        // resets a moment to arrive before a backend does the work.
        tokio::time::sleep(SUSPECT_DELAY).await;
    }
    if poll_fn(|cx| Poll::Ready(respond.poll_reset(cx).is_ready())).await {
        return;
    }
    let (parts, recv) = req.into_parts();
    let expects = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && !recv.is_end_stream();
    let first_read = expects.then(|| Arc::new(Notify::new()));
    let hook = first_read
        .clone()
        .map(|n| Box::new(move || n.notify_one()) as crate::upstream::body::OnFirstRead);
    let body = RequestBody::h2(H2Body {
        recv,
        on_first_read: hook,
    });
    let handling = proxy.handle(Request::from_parts(parts, body), client);
    tokio::pin!(handling);
    let mut continued = !expects;
    let resp = loop {
        tokio::select! {
            Ok(resp) = &mut handling => break resp,
            _ = poll_fn(|cx| respond.poll_reset(cx)) => {
                quiet.resets.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ = async { if let Some(n) = &first_read { n.notified().await } }, if !continued => {
                continued = true;
                let mut interim = Response::new(());
                *interim.status_mut() = StatusCode::CONTINUE;
                let _ = respond.send_informational(interim);
            }
        }
    };
    send(respond, resp).await;
}

/// Sends the response head and pipes the body, as the client's window
/// allows, resetting the stream if the client lets nothing through for
/// the body's send timeout.
async fn send(mut respond: h2::server::SendResponse<Bytes>, resp: Response<ProxyBody>) {
    let (mut head, mut body) = resp.into_parts();
    head.headers.entry(DATE).or_insert_with(http_date);
    if body.is_end_stream() {
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        return;
    }
    if let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(CONTENT_LENGTH)
    {
        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    let Ok(mut tx) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    let send_timeout = body.send_timeout().unwrap_or(Duration::from_secs(60));
    loop {
        // Room for at least one byte before the next frame is pulled.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            let room = tokio::time::timeout(send_timeout, async {
                loop {
                    match poll_fn(|cx| tx.poll_capacity(cx)).await {
                        Some(Ok(0)) => continue,
                        Some(Ok(_)) => return true,
                        Some(Err(_)) | None => return false,
                    }
                }
            })
            .await;
            match room {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    tracing::debug!(
                        "HTTP/2 client let nothing through for {send_timeout:?}, stream reset"
                    );
                    tx.send_reset(h2::Reason::CANCEL);
                    return;
                }
            }
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = poll_fn(|cx| tx.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if tx.send_data(data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = tx.send_trailers(trailers);
                    } else {
                        let _ = tx.send_data(Bytes::new(), true);
                    }
                    return;
                }
            },
            Some(Err(e)) => {
                tracing::debug!("response body failed, stream reset: {e}");
                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        }
    }
}

/// The `Date` header, made once a second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            let text = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&text) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}
