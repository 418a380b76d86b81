//! The engine's house rules, read from its source: which module may import which, no import
//! loops, no oversized files. ARCHITECTURE.md states these invariants; this test is how they
//! are enforced, so a change that breaks one fails here with the offending file and path.
//!
//! The floors (see `engine/src/lib.rs`): the ground floor (`rules`, `plugin_source`, `rpc`,
//! `owner`, `sandbox`, `tls`, `memory`, `errors`, `input`, `telemetry`) imports no role; the
//! controller never imports the worker (it neither builds nor runs plugin code); no role imports
//! one beside it except run-local, which runs on the worker's parts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// The modules every role may use, which import none.
const GROUND_FLOOR: [&str; 10] =
    ["rules", "plugin_source", "rpc", "owner", "sandbox", "tls", "memory", "errors", "input", "telemetry"];

/// What each role may not import (the binary's `cli` is above them all).
const FORBIDDEN: [(&str, &[&str]); 4] = [
    ("controller", &["worker", "local", "client", "cli"]),
    ("worker", &["controller", "local", "client", "cli"]),
    ("client", &["controller", "worker", "local", "cli"]),
    ("local", &["controller", "client", "cli"]),
];

/// The longest a source file may grow before it is split along a seam.
const MAX_LINES: usize = 600;

fn engine_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One source file of the engine: its module path and the module paths it refers to.
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    refs: Vec<Vec<String>>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !matches!(path.file_name().and_then(|n| n.to_str()), Some("target" | ".git" | "node_modules")) {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `controller/dispatch/chunks.rs` is `controller::dispatch::chunks`; `mod.rs`, `lib.rs` and
/// `main.rs` are their directory's module (the binary's `cli` shares the library's namespace:
/// the library has no module of that name).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code without comments and without the unit tests at the end of the file.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap().trim())),
        Some(open) => {
            let head = format!("{prefix}{}", &tree[..open]);
            let inner = &tree[open + 1..tree.rfind('}').expect("a use tree's braces are balanced")];
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_use(&inner[start..i], &head, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand_use(&inner[start..], &head, out);
            }
        }
    }
}

/// Resolves a path as written in `module` to a module path of the crate; `None` for paths of
/// other crates and names local to the file. `children` are the modules declared in `module`,
/// which a path may name without `self::`.
fn resolve(module: &[String], children: &BTreeSet<String>, path: &str) -> Option<Vec<String>> {
    let mut parts = path.split("::").map(str::trim).filter(|p| !p.is_empty()).peekable();
    let mut resolved: Vec<String> = match *parts.peek()? {
        "crate" | "kiln_engine" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        child if children.contains(child) => {
            let mut resolved = module.to_vec();
            resolved.push(child.to_owned());
            resolved
        }
        _ => return None,
    };
    parts.next();
    for part in parts {
        match part {
            "super" => {
                resolved.pop()?;
            }
            "self" => {}
            part => resolved.push(part.to_owned()),
        }
    }
    Some(resolved)
}

fn read_sources() -> Vec<SourceFile> {
    let src = engine_src();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let use_statement = Regex::new(r"(?ms)^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);").unwrap();
    let declared = Regex::new(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;").unwrap();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let module = module_of(path.strip_prefix(&src).unwrap());
            let code = code_of(&std::fs::read_to_string(&path).unwrap());
            let children: BTreeSet<String> = declared.captures_iter(&code).map(|c| c[1].to_owned()).collect();
            let starts: Vec<&str> = ["crate", "super", "self", "kiln_engine"]
                .into_iter()
                .chain(children.iter().map(String::as_str))
                .collect();
            let inline_path = Regex::new(&format!(r"\b(?:{})(?:::\w+)+", starts.join("|"))).unwrap();
            let mut written = Vec::new();
            for statement in use_statement.captures_iter(&code) {
                expand_use(&statement[1], "", &mut written);
            }
            let rest = use_statement.replace_all(&code, "");
            written.extend(inline_path.find_iter(&rest).map(|m| m.as_str().to_owned()));
            let refs = written.iter().filter_map(|path| resolve(&module, &children, path)).collect();
            SourceFile { path, module, refs }
        })
        .collect()
}

/// The module of `modules` a referenced path lies in: its longest prefix that is a file's.
fn target<'a>(modules: &'a BTreeSet<Vec<String>>, path: &[String]) -> Option<&'a Vec<String>> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(engine_src()).unwrap_or(path).display().to_string()
}

/// Every arrow that leaves a module's floor for one it may not import.
fn forbidden_arrows(files: &[SourceFile]) -> Vec<String> {
    let mut wrong = Vec::new();
    for file in files {
        let Some(from) = file.module.first() else { continue };
        let forbidden: Vec<&str> = if GROUND_FLOOR.contains(&from.as_str()) {
            vec!["controller", "worker", "client", "local", "cli"]
        } else {
            FORBIDDEN.iter().find(|(role, _)| role == from).map(|(_, f)| f.to_vec()).unwrap_or_default()
        };
        for path in &file.refs {
            if let Some(to) = path.first()
                && forbidden.contains(&to.as_str())
            {
                wrong.push(format!("{} ({from}) imports {}", relative(&file.path), path.join("::")));
            }
        }
    }
    wrong
}

/// The import loops among the engine's files. An arrow to an enclosing module (a child using
/// its parent's items) does not count: the parent is the room the child lives in.
fn import_loops(files: &[SourceFile]) -> Vec<Vec<String>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for file in files {
        let from = modules.get(&file.module).unwrap();
        let entry = edges.entry(from).or_default();
        for path in &file.refs {
            if let Some(to) = target(&modules, path)
                && to != from
                && !from.starts_with(to)
            {
                entry.insert(to);
            }
        }
    }
    // Tarjan's strongly connected components: each of more than one module is a loop.
    struct Search<'a> {
        edges: &'a BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, (usize, usize)>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        loops: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, node: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(node, (n, n));
            self.stack.push(node);
            self.on_stack.insert(node);
            for &next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.index[next].1.min(self.index[node].1);
                    self.index.get_mut(node).unwrap().1 = low;
                } else if self.on_stack.contains(next) {
                    let low = self.index[next].0.min(self.index[node].1);
                    self.index.get_mut(node).unwrap().1 = low;
                }
            }
            if self.index[node].0 == self.index[node].1 {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.join("::"));
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.loops.push(component);
                }
            }
        }
    }
    let mut search = Search {
        edges: &edges,
        index: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        loops: Vec::new(),
    };
    for node in edges.keys() {
        if !search.index.contains_key(node) {
            search.visit(node);
        }
    }
    search.loops
}

#[test]
fn the_reader_sees_the_imports_it_is_meant_to_check() {
    // The checks below are only as good as the reading: it must find these known arrows.
    let files = read_sources();
    let find = |module: &str, to: &str| {
        let file = files.iter().find(|f| f.module.join("::") == module).unwrap_or_else(|| panic!("no module {module}"));
        file.refs.iter().any(|path| path.join("::").starts_with(to))
    };
    assert!(find("local", "worker::runner"), "run-local runs on the worker's runner");
    assert!(find("controller::service", "plugin_source"), "the controller checks plugin sources");
    assert!(find("worker::service::state", "worker::runner"));
    // Arrows written inline, not in a `use`, are seen too.
    assert!(find("worker::builder", "plugin_source::embedded"), "an inline path");
    let mut expanded = Vec::new();
    expand_use("super::{jobs::{Job, State}, store as s}", "", &mut expanded);
    assert_eq!(expanded, ["super::jobs::Job", "super::jobs::State", "super::store"]);
    let module: Vec<String> = ["controller", "dispatch", "chunks"].map(String::from).to_vec();
    let none = BTreeSet::new();
    assert_eq!(resolve(&module, &none, "super::super::jobs::Job").unwrap(), ["controller", "jobs", "Job"]);
    let children = BTreeSet::from(["chunks".to_owned()]);
    assert_eq!(resolve(&module[..2], &children, "chunks::run").unwrap(), ["controller", "dispatch", "chunks", "run"]);
    assert_eq!(resolve(&module[..2], &children, "std::io"), None);
}

#[test]
fn no_ground_floor_module_imports_a_role_and_no_role_imports_one_it_may_not() {
    let wrong = forbidden_arrows(&read_sources());
    assert!(wrong.is_empty(), "arrows that point up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_catches_a_controller_that_imports_the_worker() {
    // The same check over a made-up controller file that uses the executor.
    let file = SourceFile {
        path: engine_src().join("controller/bad.rs"),
        module: vec!["controller".into(), "bad".into()],
        refs: vec![
            resolve(&["controller".into(), "bad".into()], &BTreeSet::new(), "crate::worker::executor::Executor")
                .unwrap(),
        ],
    };
    assert_eq!(forbidden_arrows(&[file]), ["controller/bad.rs (controller) imports worker::executor::Executor"]);
}

#[test]
fn no_import_loop_among_the_engines_modules() {
    let loops = import_loops(&read_sources());
    let shown: Vec<String> = loops.iter().map(|l| l.join(" <-> ")).collect();
    assert!(loops.is_empty(), "modules that import each other in a loop:\n{}", shown.join("\n"));
}

#[test]
fn no_source_file_of_the_repository_is_over_600_lines() {
    let mut paths = Vec::new();
    rust_files(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap(), &mut paths);
    assert!(paths.len() > 100, "the repository's sources were found");
    let long: Vec<String> = paths
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "files to split along a seam (at most {MAX_LINES} lines):\n{}", long.join("\n"));
}
