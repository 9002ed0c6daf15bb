//! A connection as its listener tracks it ([`Tracked`]), and [`Signal`]:
//! what the listener tells it (make room, shut down), as bits its task
//! polls lock-free. A
//! `tokio::sync::Notify` takes a lock on every poll, which a connection
//! task that polls its signals each time it wakes would pay per request.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::Poll;

use std::sync::Arc;

use atomic_waker::AtomicWaker;

use crate::proxy::client::ClientConn;

/// The listener is at its connection limit: an idle connection should go.
pub const EVICT: u8 = 1;
/// The proxy is shutting down: finish what is in progress, then go.
pub const SHUTDOWN: u8 = 2;

/// See the module docs.
#[derive(Default)]
pub struct Signal {
    raised: AtomicU8,
    waker: AtomicWaker,
    /// Asked to make room and not yet gone (nor kept by work).
    leaving: AtomicBool,
}

impl Signal {
    /// Raises `bits` and wakes the connection's task.
    pub fn raise(&self, bits: u8) {
        self.raised.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Asks the connection to make room ([`EVICT`]) unless it was asked
    /// already and has not answered; whether it was asked now.
    pub fn evict(&self) -> bool {
        if self.leaving.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.raise(EVICT);
        true
    }

    /// Whether the connection was asked to make room and has not answered.
    pub fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The connection had work when asked to make room and stays: it can
    /// be asked again once idle.
    pub fn stay(&self) {
        self.leaving.store(false, Ordering::Release);
    }

    /// Resolves with the bits of `mask` raised since they were last taken,
    /// taking them.
    pub async fn wait(&self, mask: u8) -> u8 {
        poll_fn(|cx| {
            let got = self.raised.fetch_and(!mask, Ordering::AcqRel) & mask;
            if got != 0 {
                return Poll::Ready(got);
            }
            self.waker.register(cx.waker());
            let got = self.raised.fetch_and(!mask, Ordering::AcqRel) & mask;
            if got != 0 {
                Poll::Ready(got)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A connection as its listener tracks it.
pub struct Tracked {
    /// The request path's view of it.
    pub client: Arc<ClientConn>,
    /// What the listener tells it (make room, shut down).
    pub signal: Signal,
}
