//! [`Runtime`]: what the request path serves from, built from one config
//! (by `control::runtime`) and replaced whole by a reload.

use std::sync::Arc;

use super::access_log::AccessLog;
use super::router::Router;
use crate::config::Config;
use crate::upstream::Upstream;

/// [`Runtime`] is everything the request path needs from one config.
pub struct Runtime {
    /// The checked config it was built from.
    pub config: Config,
    /// Upstream groups, in the config's order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Request → upstream index.
    pub router: Router,
    /// 1 for the config loaded at start, +1 for each reload.
    pub generation: u64,
    /// Where request lines go, if the access log is on.
    pub access_log: Option<AccessLog>,
}
