//! The code's shape, checked: the top-level modules form no import cycle
//! (a file directly in `src/`, or a folder of `src/` taken as a whole), and
//! no source file is over 700 lines of code (tests and comments aside), so
//! the map in `lib.rs` stays a map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_CODE_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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

/// The file's lines of code: up to its unit tests, without blank lines and comments.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .collect()
}

/// `crate::name` paths in `line`, including those inside `use crate::{a, b::c}`.
fn crate_refs(line: &str, out: &mut BTreeSet<String>) {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top_module(&root, f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = top_module(&root, file);
        if !modules.contains(&module) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // A multi-line `use crate::{...}` is joined first.
        let code = code_lines(&text).join(" ");
        let mut refs = BTreeSet::new();
        crate_refs(&code, &mut refs);
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(
            refs.into_iter()
                .filter(|r| *r != module && modules.contains(r)),
        );
    }
    graph
}

fn top_module(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// A cycle through `start`, if any (depth-first).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == node) {
        let mut cycle = path[i..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = cycle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the graph was read: {graph:?}");
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(c) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle between top-level modules: {}", c.join(" -> "));
        }
    }
}

#[test]
fn cycle_finder_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    let c = cycle(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(c, Some(vec!["a".into(), "b".into(), "a".into()]));
    let mut refs = BTreeSet::new();
    crate_refs("use crate::{api, hub::Hub}; crate::token::Token", &mut refs);
    assert_eq!(
        refs,
        BTreeSet::from(["api".into(), "hub".into(), "token".into()])
    );
}

#[test]
fn no_source_file_is_over_700_lines_of_code() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let over: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = code_lines(&std::fs::read_to_string(f).unwrap()).len();
            (n > MAX_CODE_LINES).then(|| format!("{} ({n})", f.display()))
        })
        .collect();
    assert!(
        over.is_empty(),
        "over {MAX_CODE_LINES} lines of code: {over:?}"
    );
}
