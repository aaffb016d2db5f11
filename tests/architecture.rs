//! The shape of `src/`, held as tests: no import circles, no file too long to
//! read in one sitting.
//!
//! A module's dependencies are the `crate::` and `super::` paths in its file
//! (comments, string literals and the `#[cfg(test)] mod tests` block aside). A
//! module's submodules are part of it, so the check runs at every level of the
//! tree: the top-level modules may not form a circle, nor may the submodules of
//! any one module among themselves. Test-only files (`*_tests.rs`) and the binary
//! (`main.rs`) are left out. A name used through a re-export counts as a use of the
//! module that re-exports it, and a glob (`use super::*`) as a use of its parent:
//! write the path to where an item lives when it matters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longer than this, a file is split.
const MAX_LINES: usize = 600;
/// Longer than this, a file says at its top why it is not split: a module doc line
/// that starts with `//! Length:`.
const EXPLAINED_LINES: usize = 400;

type Module = Vec<String>;

struct File {
    module: Module,
    path: PathBuf,
    text: String,
}

fn sources() -> Vec<File> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            File { module, path, text }
        })
        .collect()
}

/// The text a module's dependencies are read from: no comments, no string
/// contents, no test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                // A raw string: r"…", r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                // A char literal ('"', '\'', '\n'); a lifetime has no closing quote.
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths a `use` tree or an expression names after `crate::` or `super::`,
/// each as its segments: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn paths_at(b: &[u8], mut i: usize, prefix: Module, out: &mut Vec<Module>) -> usize {
    let mut path = prefix;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) == Some(&b'{') {
            i += 1;
            loop {
                i = paths_at(b, i, path.clone(), out);
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                match b.get(i) {
                    Some(b',') => i += 1,
                    _ => break,
                }
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if b.get(i) == Some(&b'}') {
                    break;
                }
            }
            return i + 1;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        match &b[start..i] {
            b"" | b"self" => {}
            b"super" => {
                path.pop();
            }
            word => path.push(String::from_utf8_lossy(word).into_owned()),
        }
        if b[i..].starts_with(b"::") {
            i += 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// Each module and the modules it uses (its own submodules and ancestors aside).
fn dependencies(files: &[File]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<&Module> = files.iter().map(|f| &f.module).collect();
    let resolve = |mut path: Module| -> Option<Module> {
        while !path.is_empty() {
            if modules.contains(&path) {
                return Some(path);
            }
            path.pop();
        }
        None
    };
    let mut deps = BTreeMap::new();
    for file in files {
        let name = file.path.file_name().unwrap().to_string_lossy();
        if name == "main.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = code(&file.text);
        let b = text.as_bytes();
        // Where `super::` starts from: the parent of this module.
        let parent: Module = file.module[..file.module.len().saturating_sub(1)].to_vec();
        let mut found = Vec::new();
        for (i, _) in text.match_indices("::") {
            let word_start = b[..i]
                .iter()
                .rposition(|c| !is_ident(*c))
                .map_or(0, |p| p + 1);
            if word_start > 0 && (b[word_start - 1] == b':' || is_ident(b[word_start - 1])) {
                continue;
            }
            let prefix = match &text[word_start..i] {
                "crate" => Vec::new(),
                "super" => parent.clone(),
                _ => continue,
            };
            paths_at(b, i + 2, prefix, &mut found);
        }
        let entry: &mut BTreeSet<Module> = deps.entry(file.module.clone()).or_default();
        for path in found {
            if let Some(target) = resolve(path)
                && !target.starts_with(&file.module)
                && !file.module.starts_with(&target)
            {
                entry.insert(target);
            }
        }
    }
    deps
}

/// The circles among the children of `parent` (each dependency cut to the child
/// of `parent` it falls in).
fn circles(deps: &BTreeMap<Module, BTreeSet<Module>>, parent: &[String]) -> Vec<Vec<String>> {
    let child = |m: &Module| -> Option<String> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in deps {
        let Some(a) = child(from) else { continue };
        for to in tos {
            if let Some(b) = child(to)
                && a != b
            {
                graph.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    // A circle is a pair of children each reachable from the other.
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|k| (k, reach(k))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for (a, from_a) in &reaches {
        if !from_a.contains(*a) || found.iter().any(|c| c.contains(a)) {
            continue;
        }
        let circle: Vec<String> = from_a
            .iter()
            .filter(|b| reaches.get(b).is_some_and(|r| r.contains(*a)))
            .cloned()
            .collect();
        found.push(circle);
    }
    found
}

#[test]
fn no_import_circles() {
    let files = sources();
    let deps = dependencies(&files);
    let mut parents: BTreeSet<Module> = BTreeSet::new();
    for m in deps.keys() {
        for i in 0..m.len() {
            parents.insert(m[..i].to_vec());
        }
    }
    let mut problems = Vec::new();
    for parent in &parents {
        for circle in circles(&deps, parent) {
            let edges: Vec<String> = deps
                .iter()
                .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
                .filter(|(from, to)| {
                    let inside = |m: &Module| {
                        m.len() > parent.len()
                            && m.starts_with(parent)
                            && circle.contains(&m[parent.len()])
                    };
                    inside(from) && inside(to) && from[parent.len()] != to[parent.len()]
                })
                .map(|(from, to)| format!("{} -> {}", from.join("::"), to.join("::")))
                .collect();
            problems.push(format!(
                "in crate::{}: {}",
                parent.join("::"),
                edges.join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "modules that use each other, directly or around a loop:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle() {
    let file = |module: &str, text: &str| File {
        module: module.split("::").map(String::from).collect(),
        path: PathBuf::from(format!("src/{}.rs", module.replace("::", "/"))),
        text: text.into(),
    };
    let files = [
        file(
            "a",
            "use crate::b::X; // crate::c::Y\nfn f() { \"crate::c\"; }",
        ),
        file("b", "use crate::{c::{self, Z}, d};"),
        file("c", "fn g() { crate::a::h() }"),
        file("d", "mod e; use e::F;"),
        file("d::e", "use super::super::a; pub struct F;"),
        file("d::f", "use super::e::F; use super::g;"),
        file("d::g", "use super::f::F;"),
    ];
    let deps = dependencies(&files);
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    assert_eq!(deps[&m("a")], BTreeSet::from([m("b")]));
    assert_eq!(deps[&m("b")], BTreeSet::from([m("c"), m("d")]));
    assert_eq!(deps[&m("d::e")], BTreeSet::from([m("a")]));
    assert_eq!(circles(&deps, &[]), vec![vec!["a", "b", "c", "d"]]);
    assert_eq!(circles(&deps, &m("d")), vec![vec!["f", "g"]]);
}

#[test]
fn no_file_too_long_to_read() {
    let mut problems = Vec::new();
    for file in sources() {
        let lines = file.text.lines().count();
        let explained = file
            .text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.is_empty())
            .any(|l| l.starts_with("//! Length:"));
        if lines > MAX_LINES {
            problems.push(format!(
                "{}: {lines} lines (more than {MAX_LINES}): split it",
                file.path.display()
            ));
        } else if lines > EXPLAINED_LINES && !explained {
            problems.push(format!(
                "{}: {lines} lines (more than {EXPLAINED_LINES}) and no `//! Length:` line in its module doc saying why",
                file.path.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
