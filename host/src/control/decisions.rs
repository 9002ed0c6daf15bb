//! `GET /decisions?upstream=NAME&limit=N`: an upstream's most recent
//! decisions, newest first, from the ring `[admin] decisions = N` keeps
//! (see `upstream::trace`).

use http::StatusCode;
use serde_json::{Value, json};

use crate::proxy::Runtime;

/// Decisions shown when the request does not say how many.
const DEFAULT_LIMIT: usize = 100;

/// The answer to `GET /decisions` with `query`: a status and a JSON body.
pub fn decisions(runtime: &Runtime, query: Option<&str>) -> (StatusCode, Value) {
    let mut upstream = None;
    let mut limit = DEFAULT_LIMIT;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("upstream", v)) => upstream = Some(v),
            Some(("limit", v)) => match v.parse::<usize>() {
                Ok(n) => limit = n,
                Err(_) => return bad(format!("limit={v}: give a whole number")),
            },
            _ => {}
        }
    }
    let names = || {
        runtime
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match upstream {
        Some(name) => runtime.upstreams.iter().find(|u| u.name == name),
        None if runtime.upstreams.len() == 1 => runtime.upstreams.first(),
        None => return bad(format!("name one with ?upstream= ({})", names())),
    };
    let Some(up) = found else {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no upstream {:?} (upstreams: {})", upstream.unwrap_or_default(), names()) }),
        );
    };
    let Some(ring) = up.traces() else {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": "decisions are not kept: set [admin] decisions = N (decisions kept per upstream)" }),
        );
    };
    let shown: Vec<Value> = ring.recent(limit).iter().map(|t| t.to_json()).collect();
    (
        StatusCode::OK,
        json!({
            "upstream": up.name,
            "kept": ring.capacity(),
            "decisions": shown,
        }),
    )
}

fn bad(message: String) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!({ "error": message }))
}
