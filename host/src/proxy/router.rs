//! Which upstream a request goes to: the first route (most specific first,
//! see `config`) whose host and path prefix match.

use crate::config::{HostMatch, RouteConfig};

/// [`Router`] matches requests against the configured routes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    /// A router over routes already sorted most specific first.
    pub fn new(routes: Vec<RouteConfig>) -> Router {
        Router { routes }
    }

    /// The route for a request to `host` (no port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&RouteConfig> {
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host) && prefix_matches(&r.path_prefix, path))
    }
}

fn host_matches(rule: &HostMatch, host: Option<&str>) -> bool {
    match (rule, host) {
        (HostMatch::Any, _) => true,
        (_, None) => false,
        (HostMatch::Exact(want), Some(h)) => h.eq_ignore_ascii_case(want),
        (HostMatch::Suffix(suffix), Some(h)) => {
            h.len() > suffix.len()
                && h.is_char_boundary(h.len() - suffix.len())
                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; a prefix that ends
/// with `/` matches anything below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: HostMatch, prefix: &str, upstream: usize) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: prefix.into(),
            upstream,
            max_body_size: None,
        }
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/static/", "/static/x.css"));
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_suffix_ignoring_case() {
        assert!(host_matches(
            &HostMatch::Exact("a.example".into()),
            Some("A.Example")
        ));
        assert!(!host_matches(&HostMatch::Exact("a.example".into()), None));
        let wild = HostMatch::Suffix(".example.com".into());
        assert!(host_matches(&wild, Some("shop.example.com")));
        assert!(!host_matches(&wild, Some("example.com")));
        assert!(!host_matches(&wild, Some("badexample.com")));
    }

    #[test]
    fn the_first_matching_route_wins() {
        let r = Router::new(vec![
            route(HostMatch::Exact("admin.example".into()), "/", 2),
            route(HostMatch::Any, "/api", 1),
            route(HostMatch::Any, "/", 0),
        ]);
        let up = |host, path| r.find(host, path).map(|r| r.upstream);
        assert_eq!(up(Some("admin.example"), "/api/x"), Some(2));
        assert_eq!(up(Some("www.example"), "/api/x"), Some(1));
        assert_eq!(up(None, "/index.html"), Some(0));
        assert!(
            Router::new(vec![route(HostMatch::Any, "/api", 0)])
                .find(None, "/")
                .is_none()
        );
    }
}
