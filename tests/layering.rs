//! The module layering of docs/architecture.md ("Layout"), checked on the
//! source: a top-level module of `src/` imports only from its own level or
//! below, the HTTP layer alone knows axum's extractors and the router, and
//! no file grows past the size a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Levels, top to bottom (docs/architecture.md, "Layout").
const LEVELS: &[&[&str]] = &[
    &["app"],
    &["http"],
    &[
        "front",
        "ingest",
        "processor",
        "archiver",
        "replay",
        "moderation",
    ],
    &["fanout", "presence", "gears", "control"],
    &["store", "bus", "archive"],
    &[
        "config",
        "auth",
        "rooms",
        "message",
        "metrics",
        "error",
        "json",
        "text",
        "flight",
        "clock",
        "log_throttle",
    ],
];

/// Largest source file in `src/` (lines).
const MAX_FILE_LINES: usize = 620;

fn level(module: &str) -> usize {
    LEVELS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` has no level in LEVELS: add it"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files (binaries excluded) with their top-level module.
fn library_files() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let top = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if ["lib", "main", "bin"].contains(&top.as_str()) {
                return None;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Some((top, path, text))
        })
        .collect()
}

/// Code without comments and without the unit tests at the end of a file.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn imports(text: &str) -> BTreeSet<String> {
    let code = code(text);
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

#[test]
fn modules_import_only_from_their_level_or_below() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (top, path, text) in library_files() {
        for used in imports(&text) {
            if used == top {
                continue;
            }
            if level(&used) < level(&top) {
                upward.push(format!("{} imports crate::{used}", path.display()));
            }
            graph.entry(top.clone()).or_default().insert(used);
        }
    }
    assert!(upward.is_empty(), "imports upward:\n{}", upward.join("\n"));
    // Same-level imports are allowed; a cycle among them is not.
    for start in graph.keys() {
        let mut stack = vec![start.clone()];
        let mut seen = BTreeSet::new();
        while let Some(m) = stack.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                assert_ne!(next, start, "import cycle through `{start}` and `{m}`");
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
    }
}

#[test]
fn only_the_http_layer_knows_extractors_and_the_router() {
    let mut offenders = Vec::new();
    for (top, path, text) in library_files() {
        if top == "http" || top == "app" {
            continue;
        }
        let code = code(&text);
        for needle in [
            "axum::Router",
            "axum::routing",
            "axum::extract::State",
            "axum::extract::Path",
            "axum::extract::Query",
            "FromRequestParts",
            "FromRequest<",
            "WebSocketUpgrade",
        ] {
            if code.contains(needle) {
                offenders.push(format!("{} uses {needle}", path.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn source_files_stay_readable() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{}: {n} lines", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}
