//! The house rules of `host/src`, checked on the source itself:
//!
//! - layers: a module uses only modules of its own layer or of layers
//!   below it (control > edge > proxy > upstream > policy > config), and
//!   `config` nothing from the crate;
//! - no import cycle inside a layer: the modules of a folder, its `mod.rs`
//!   included, form an acyclic graph of uses (so a submodule does not reach
//!   back into its `mod.rs`, which declares and uses it);
//! - size: no source file over 600 lines, no function over 100.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 6] = ["config", "policy", "upstream", "proxy", "edge", "control"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, relative to it.
fn files() -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p.strip_prefix(base).expect("under src").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &src(), &mut out);
    out
}

/// The code of a file without comments, string contents or its tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(src().join(path)).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `folder/name` (or `folder` for its `mod.rs`) of a file.
fn module(path: &Path) -> (String, String) {
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [folder, name] if name == "mod" => (folder.clone(), "mod".into()),
        [folder, name] => (folder.clone(), name.clone()),
        [name] => (name.clone(), "mod".into()),
        _ => (parts[0].clone(), parts[1..].join("/")),
    }
}

/// The paths `crate::a::b...` and `super::x...` a piece of code names,
/// with `use` groups (`crate::a::{b, c::d}`) expanded one level.
fn paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let head: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segs: Vec<String> = head
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if rest[head.len()..].starts_with('{') {
            let group: String = rest[head.len() + 1..]
                .chars()
                .take_while(|c| *c != '}')
                .collect();
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() && first != "self" {
                    let mut p = segs.clone();
                    p.push(first.to_string());
                    out.push(p);
                }
            }
            continue;
        }
        if !segs.is_empty() {
            segs.truncate(2);
            out.push(segs);
        }
    }
    out
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let mut wrong = Vec::new();
    for f in files() {
        let (folder, _) = module(&f);
        let Some(mine) = rank(&folder) else { continue };
        for p in paths(&code(&f), "crate::") {
            let Some(theirs) = rank(&p[0]) else { continue };
            if theirs > mine || (folder == "config" && p[0] != "config") {
                wrong.push(format!("{}: crate::{}", f.display(), p.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses of a higher layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycle_inside_a_layer() {
    // folder -> (module -> modules of the same folder it uses)
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files() {
        let (folder, name) = module(&f);
        if rank(&folder).is_some() && name != "mod" {
            children.entry(folder).or_default().insert(name);
        }
    }
    for f in files() {
        let (folder, name) = module(&f);
        if rank(&folder).is_none() {
            continue;
        }
        let kids = children.get(&folder).cloned().unwrap_or_default();
        let text = code(&f);
        let mut uses = BTreeSet::new();
        let mut named = |first: &str| {
            if kids.contains(first) {
                uses.insert(first.to_string());
            } else if name != "mod" {
                // An item defined in the folder's mod.rs.
                uses.insert("mod".to_string());
            }
        };
        for p in paths(&text, "crate::") {
            if p[0] == folder && p.len() > 1 {
                named(&p[1]);
            }
        }
        if name != "mod" {
            for p in paths(&text, "super::") {
                named(&p[0]);
            }
        } else {
            for k in &kids {
                if text.contains(&format!("{k}::")) {
                    uses.insert(k.clone());
                }
            }
        }
        uses.remove(&name);
        graphs.entry(folder).or_default().insert(name, uses);
    }
    let mut cycles = Vec::new();
    for (folder, graph) in &graphs {
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, u8>,
            stack: &mut Vec<String>,
            out: &mut Vec<String>,
        ) {
            state.insert(n.to_string(), 1);
            stack.push(n.to_string());
            for m in g.get(n).into_iter().flatten() {
                match state.get(m.as_str()) {
                    Some(1) => {
                        let from = stack.iter().position(|s| s == m).unwrap_or(0);
                        out.push(format!("{} -> {m}", stack[from..].join(" -> ")));
                    }
                    Some(_) => {}
                    None => visit(m, g, state, stack, out),
                }
            }
            stack.pop();
            state.insert(n.to_string(), 2);
        }
        let mut state = BTreeMap::new();
        let mut found = Vec::new();
        for n in graph.keys() {
            if !state.contains_key(n.as_str()) {
                visit(n, graph, &mut state, &mut Vec::new(), &mut found);
            }
        }
        cycles.extend(found.into_iter().map(|c| format!("{folder}: {c}")));
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn files_and_functions_stay_small() {
    let mut big = Vec::new();
    for f in files() {
        let text = std::fs::read_to_string(src().join(&f)).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 600 {
            big.push(format!("{}: {} lines", f.display(), lines.len()));
        }
        // A function starts at a line whose code begins with `fn` (after
        // visibility and qualifiers) and ends at the closing brace at its
        // indentation.
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            const QUALIFIERS: [&str; 6] = [
                "pub",
                "pub(crate)",
                "pub(super)",
                "async",
                "const",
                "unsafe",
            ];
            let is_fn = trimmed.split_whitespace().find(|w| !QUALIFIERS.contains(w)) == Some("fn");
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            if let Some(len) = lines[i + 1..].iter().position(|l| *l == close)
                && len + 2 > 100
            {
                big.push(format!(
                    "{}:{}: a function of {} lines",
                    f.display(),
                    i + 1,
                    len + 2
                ));
            }
        }
    }
    assert!(big.is_empty(), "too big:\n{}", big.join("\n"));
}
