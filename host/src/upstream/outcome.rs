//! How an attempt on a backend ended ([`Outcome`]), and why it failed if
//! it did ([`FailureKind`]): what `Upstream::report` takes.

use std::time::Duration;

use crate::policy::AttemptFailure;

/// Why an attempt on a backend did not end in a complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection: refused, unreachable, handshake failed.
    Connect,
    /// No connection within `connect-timeout`.
    ConnectTimeout,
    /// The connection broke before the response headers.
    Lost,
    /// No response headers within `response-timeout` of sending.
    ResponseTimeout,
    /// The backend stopped sending (or reading) for `read-timeout`.
    ReadTimeout,
    /// The response body broke off.
    BodyBroken,
    /// The backend broke the protocol (e.g. an unasked-for `101`).
    Protocol,
    /// The response head is over the proxy's own limits: the backend is
    /// not down, the proxy refused what it sent.
    TooLarge,
    /// Every connection slot of the backend was busy: the proxy's limit.
    Busy,
    /// The client went away or stopped reading: nothing about the backend.
    ClientGone,
}

impl FailureKind {
    /// Every kind, in a fixed order (for metrics).
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Connect,
        FailureKind::ConnectTimeout,
        FailureKind::Lost,
        FailureKind::ResponseTimeout,
        FailureKind::ReadTimeout,
        FailureKind::BodyBroken,
        FailureKind::Protocol,
        FailureKind::TooLarge,
        FailureKind::Busy,
        FailureKind::ClientGone,
    ];

    /// A short, stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::Lost => "lost",
            FailureKind::ResponseTimeout => "response_timeout",
            FailureKind::ReadTimeout => "read_timeout",
            FailureKind::BodyBroken => "body_broken",
            FailureKind::Protocol => "protocol",
            FailureKind::TooLarge => "too_large",
            FailureKind::Busy => "busy",
            FailureKind::ClientGone => "client_gone",
        }
    }

    /// Index in [`FailureKind::ALL`].
    pub fn index(self) -> usize {
        FailureKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(0)
    }

    /// How a policy is told it.
    pub fn for_policy(self) -> AttemptFailure {
        match self {
            FailureKind::Connect => AttemptFailure::ConnectFailed,
            FailureKind::ConnectTimeout => AttemptFailure::ConnectTimeout,
            FailureKind::Lost => AttemptFailure::ConnectionLost,
            FailureKind::ResponseTimeout => AttemptFailure::ResponseTimeout,
            FailureKind::ReadTimeout => AttemptFailure::ReadTimeout,
            FailureKind::BodyBroken => AttemptFailure::BodyBroken,
            FailureKind::Protocol => AttemptFailure::Protocol,
            FailureKind::TooLarge => AttemptFailure::TooLarge,
            FailureKind::Busy => AttemptFailure::Busy,
            FailureKind::ClientGone => AttemptFailure::ClientGone,
        }
    }

    /// Whether it says the backend is failing (passive health counts it).
    pub fn is_backend_failure(self) -> bool {
        !matches!(
            self,
            FailureKind::TooLarge | FailureKind::Busy | FailureKind::ClientGone
        )
    }
}

/// How one attempt on a backend ended, reported once to its group.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// A connection was made (or taken from the pool).
    pub connected: bool,
    /// The response status, when headers arrived.
    pub status: Option<http::StatusCode>,
    /// Time from sending to the response headers.
    pub headers_after: Option<Duration>,
    /// Time from sending to the end of the response body, when it ended.
    pub body_after: Option<Duration>,
    /// What went wrong, if anything.
    pub failure: Option<FailureKind>,
    /// 1 for the first attempt of a request, 2 for its first retry...
    pub attempt: u32,
    /// The response headers the policy watches, in its order (empty when
    /// it watches none).
    pub watched: Vec<Option<String>>,
    /// The decision's trace, when the group keeps them.
    pub trace: Option<std::sync::Arc<super::trace::Trace>>,
}
