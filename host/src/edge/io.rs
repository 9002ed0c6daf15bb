//! [`ClientIo`]: a client connection's byte stream as the HTTP servers see
//! it. It replays the bytes read to tell HTTP/2 from HTTP/1.1, fails a
//! write that the client has not let through for the send timeout in force
//! (the client stopped reading), so a stalled client never holds a
//! response, and the backend connection behind it, forever; and reads as
//! closed once its [`Closer`] says so and no request is in progress, which
//! is how a connection's watchdog ends an idle HTTP/1.1 connection without
//! sitting in its read path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::proxy::client::ClientConn;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
pub enum Sniffed {
    /// The HTTP/2 preface.
    H2(Bytes),
    /// Anything else: HTTP/1.x.
    H1(Bytes),
}

/// Reads until the bytes either are the HTTP/2 preface or cannot be; the
/// bytes read are handed back to be replayed. `None` if the client closed
/// first.
pub async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<Sniffed>> {
    let mut buf = [0u8; PREFACE.len()];
    let mut n = 0;
    loop {
        let k = io.read(&mut buf[n..]).await?;
        if k == 0 {
            return Ok(None);
        }
        n += k;
        let seen = Bytes::copy_from_slice(&buf[..n]);
        if buf[..n] != PREFACE[..n] {
            return Ok(Some(Sniffed::H1(seen)));
        }
        if n == PREFACE.len() {
            return Ok(Some(Sniffed::H2(seen)));
        }
    }
}

/// Asks a [`ClientIo`] to read as closed once no request is in progress.
#[derive(Default)]
pub struct Closer {
    close: AtomicBool,
    reader: AtomicWaker,
}

impl Closer {
    /// From now on the connection reads as closed whenever it is idle; its
    /// reader is woken to find out.
    pub fn close(&self) {
        self.close.store(true, Ordering::Release);
        self.reader.wake();
    }
}

/// See the module docs.
pub struct ClientIo<I> {
    io: I,
    prefix: Bytes,
    client: Arc<ClientConn>,
    closer: Option<Arc<Closer>>,
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<I> ClientIo<I> {
    /// `io`, with `prefix` read back first.
    pub fn new(io: I, prefix: Bytes, client: Arc<ClientConn>) -> Self {
        ClientIo {
            io,
            prefix,
            client,
            closer: None,
            stall: None,
            armed: false,
        }
    }

    /// Reads as closed once `closer` says so and no request is in progress.
    pub fn closed_by(mut self, closer: Arc<Closer>) -> Self {
        self.closer = Some(closer);
        self
    }

    /// Called when a write could not go through: arms the stall timer, or
    /// says it ran out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let limit = self.client.send_timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready().then_some(limit)
    }

    fn went_through(&mut self) {
        self.armed = false;
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match p {
            Poll::Pending => match self.stalled(cx) {
                Some(limit) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing for {limit:?} (send-timeout)"),
                ))),
                None => Poll::Pending,
            },
            ready => {
                self.went_through();
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if let Some(c) = &self.closer
            && c.close.load(Ordering::Acquire)
            && self.client.active() == 0
        {
            // End of stream: hyper closes an idle connection cleanly.
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_pending()
            && let Some(c) = &self.closer
        {
            c.reader.register(cx.waker());
            // Asked to close just now: look again.
            if c.close.load(Ordering::Acquire) && self.client.active() == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, p)
    }
}
