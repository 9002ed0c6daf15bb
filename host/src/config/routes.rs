//! `[[routes]]`: which requests go to which upstream, checked and sorted
//! most specific first.

use toml::Spanned;

use super::check::Checker;
use super::file::FileRoute;
use super::upstream::UpstreamConfig;
use super::values::size;

/// How a route matches a request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// `*.example.com`: any subdomain of this suffix (stored as `.example.com`).
    Suffix(String),
}

/// A route: which requests go to which upstream.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host condition.
    pub host: HostMatch,
    /// Path prefix; matches whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`), or any continuation if it ends with `/`.
    pub path_prefix: String,
    /// Index into [`super::Config::upstreams`].
    pub upstream: usize,
    /// Largest request body accepted (413 beyond it).
    pub max_body_size: Option<u64>,
}

/// The routes of the file, most specific first. `names` are every upstream
/// the file defines (also those with errors), `upstreams` those that
/// checked out.
pub(super) fn to_routes(
    c: &mut Checker<'_>,
    raw: &[Spanned<FileRoute>],
    names: &[&str],
    upstreams: &[UpstreamConfig],
) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(route) = r
            .get_ref()
            .to_route(c, &format!("routes[{i}]"), names, upstreams)
        {
            routes.push(route);
        }
    }
    if raw.is_empty() && names.len() == 1 {
        if !upstreams.is_empty() {
            routes.push(RouteConfig {
                host: HostMatch::Any,
                path_prefix: "/".into(),
                upstream: 0,
                max_body_size: None,
            });
        }
    } else if raw.is_empty() && !names.is_empty() {
        c.push(c.loc().whole(
            "routes: with more than one upstream, add [[routes]] entries saying which requests go where",
        ));
    }
    // Most specific first: exact hosts, then wildcard hosts (longer suffix
    // first), then any host; within each, longer prefixes first. The sort is
    // stable, so equal routes keep their file order.
    routes.sort_by_key(|r| {
        let host_rank = match &r.host {
            HostMatch::Exact(_) => (0, 0),
            HostMatch::Suffix(s) => (1, usize::MAX - s.len()),
            HostMatch::Any => (2, 0),
        };
        (host_rank, usize::MAX - r.path_prefix.len())
    });
    routes
}

impl FileRoute {
    fn to_route(
        &self,
        c: &mut Checker<'_>,
        key: &str,
        names: &[&str],
        upstreams: &[UpstreamConfig],
    ) -> Option<RouteConfig> {
        let target = self.upstream.get_ref();
        let upstream = upstreams.iter().position(|u| &u.name == target);
        if upstream.is_none() && !names.contains(&target.as_str()) {
            c.push(c.loc().error(
                &self.upstream,
                format!(
                    "{key}.upstream: no upstream named {target:?} (defined: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        let host = match &self.host {
            None => Some(HostMatch::Any),
            Some(h) => {
                let m = parse_host(h.get_ref());
                if m.is_none() {
                    c.push(c.loc().error(
                        h,
                        format!(
                            "{key}.host: {:?} is not a host name such as \"example.com\" or \"*.example.com\"",
                            h.get_ref()
                        ),
                    ));
                }
                m
            }
        };
        let path_prefix = match &self.path_prefix {
            None => Some("/".to_string()),
            Some(p) if p.get_ref().starts_with('/') => Some(p.get_ref().clone()),
            Some(p) => {
                c.push(c.loc().error(
                    p,
                    format!("{key}.path-prefix: {:?} must start with \"/\"", p.get_ref()),
                ));
                None
            }
        };
        let max_body_size = match &self.max_body_size {
            None => None,
            Some(v) => {
                let r = size(c.loc(), &format!("{key}.max-body-size"), v).map(Some);
                c.or(r, None)
            }
        };
        Some(RouteConfig {
            host: host?,
            path_prefix: path_prefix?,
            upstream: upstream?,
            max_body_size,
        })
    }
}

fn parse_host(h: &str) -> Option<HostMatch> {
    let h = h.trim().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(rest) = h.strip_prefix("*.") {
        valid(rest).then(|| HostMatch::Suffix(format!(".{rest}")))
    } else if h == "*" {
        Some(HostMatch::Any)
    } else {
        valid(&h).then_some(HostMatch::Exact(h))
    }
}
