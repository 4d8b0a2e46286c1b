//! The layout rules of the source tree, checked on the files themselves:
//!
//! - the crate's modules (src/, and the tasks in solutions/ and exercises/) import each other
//!   without a circle, file by file, so every module can be read after the ones it uses;
//! - the crate's own code names a module in every `crate::` path (`crate::lora::slot::LinearSlot`,
//!   not the root re-export `crate::LinearSlot`), so a dependency shows where it is used;
//! - chapter 1-8 code and chapters (exercises, solutions, book) name nothing from the
//!   challenges t09-t11: a learner in week one meets only what the earlier tasks taught;
//! - no code points outside the repository (`../shared` exists only on the maintainers' machines).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rs_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module a file defines: src/a/b.rs -> `a::b`, src/a/mod.rs -> `a`, and a task file of
/// either tree -> `tasks::tNN_name`. None for the crate root and the trees' mod.rs.
fn module_of(path: &Path) -> Option<String> {
    let s = path.to_string_lossy().replace('\\', "/");
    let (tree, rest) = s.split_once('/')?;
    let rest = rest.strip_suffix(".rs")?;
    match tree {
        "solutions" | "exercises" => (rest != "mod").then(|| format!("tasks::{rest}")),
        "src" if rest == "lib" => None,
        "src" => Some(rest.strip_suffix("/mod").unwrap_or(rest).replace('/', "::")),
        _ => None,
    }
}

/// The source without comments (doc comments included) and string literals.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if b[i] == '/' && b.get(i + 1) == Some(&'*') {
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == '"' && (i == 0 || b[i - 1] != '\'') {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `a::{b, c::{d, e}}` -> [`a::b`, `a::c::d`, `a::c::e`].
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())]);
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts.iter().filter(|p| !p.is_empty()).flat_map(|p| expand(p)).map(|p| format!("{prefix}{p}")).collect()
}

/// Where the `{ ... }` block that `s` starts with ends: just past its matching `}` (or the end).
fn block_end(s: &str) -> usize {
    let mut depth = 0;
    s.char_indices()
        .find(|&(_, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            depth == 0
        })
        .map_or(s.len(), |(j, _)| j + 1)
}

/// Every `prefix...` path a file's code names (`crate::` or `super::`; use trees expanded),
/// without the prefix. `super::*` gives the empty path.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            rest = tail;
            continue;
        }
        let end = if tail.starts_with('{') {
            block_end(tail)
        } else {
            tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{')).unwrap_or(tail.len())
        };
        let path = tail[..end].trim_end_matches(':');
        if path.contains('{') {
            out.extend(expand(path));
        } else {
            out.push(path.to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The code without its inline `mod name { ... }` blocks (tests, kernels): their `super::` is the
/// file's own module, not its parent.
fn outside_inline_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("mod") {
        let starts_word = rest[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after = &rest[i + 3..];
        let name = after.trim_start();
        let spaced = name.len() < after.len();
        let name_end = name.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(name.len());
        let is_block = starts_word && spaced && name_end > 0 && name[name_end..].trim_start().starts_with('{');
        if !is_block {
            out.push_str(&rest[..i + 3]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..i]);
        let body = &name[name.find('{').expect("a block")..];
        rest = &body[block_end(body)..];
    }
    out.push_str(rest);
    out
}

struct Crate {
    /// module -> the files defining it (a task has two: its stub and its solution).
    files: BTreeMap<String, Vec<PathBuf>>,
    /// The modules declared in src/lib.rs.
    top: BTreeSet<String>,
}

fn the_crate() -> Crate {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in rs_files("src").into_iter().chain(rs_files("solutions")).chain(rs_files("exercises")) {
        if let Some(m) = module_of(&f) {
            files.entry(m).or_default().push(f);
        }
    }
    let lib = fs::read_to_string("src/lib.rs").unwrap();
    let top = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')))
        .map(str::to_string)
        .collect();
    Crate { files, top }
}

impl Crate {
    /// The module a path lands in: its longest prefix that is a module of the crate.
    fn resolve(&self, path: &str) -> Option<String> {
        let path = path.replacen("solutions::", "tasks::", 1).replacen("exercises::", "tasks::", 1);
        let segs: Vec<&str> = path.split("::").collect();
        (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| self.files.contains_key(m))
    }

    /// The other modules that `module`'s code (one file of it, comments and strings removed)
    /// names: `crate::a::b::Item` lands in `a::b`, and `super::x::Item` in the sibling `x` when
    /// `x` is a module, else in the parent (outside inline modules, whose `super` is the file).
    fn imports_of(&self, module: &str, code: &str) -> BTreeSet<String> {
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.extend(self.resolve(&p));
        }
        if let Some((parent, _)) = module.rsplit_once("::") {
            for p in paths_after(&outside_inline_modules(code), "super::") {
                // `super::super::x`: one level up per further `super`.
                let (mut base, mut rest) = (Some(parent), p.as_str());
                while let Some(r) = rest.strip_prefix("super::").or((rest == "super").then_some("")) {
                    base = base.and_then(|b| b.rsplit_once("::").map(|(up, _)| up));
                    rest = r;
                }
                let Some(base) = base else { continue };
                let full = if rest.is_empty() || rest == "*" { base.to_string() } else { format!("{base}::{rest}") };
                deps.extend(self.resolve(&full));
            }
        }
        deps.remove(module);
        deps
    }

    /// module -> the other modules it names.
    fn imports(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, paths) in &self.files {
            let mut deps = BTreeSet::new();
            for f in paths {
                deps.extend(self.imports_of(module, &code_only(&fs::read_to_string(f).unwrap())));
            }
            graph.insert(module.clone(), deps);
        }
        graph
    }
}

/// A circle in `graph`, if any, as the modules along it.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == d).expect("on the stack");
                    let mut circle = stack[from..].to_vec();
                    circle.push(d.clone());
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_modules_import_each_other_without_a_circle() {
    let krate = the_crate();
    let graph = krate.imports();
    assert!(graph.len() > 40, "found only {} modules: is the test run from the repository root?", graph.len());
    if let Some(circle) = find_circle(&graph) {
        panic!("these modules import each other in a circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_circle_finder_finds_a_planted_circle() {
    // The check above must be able to fail: the real graph with one planted edge back from a
    // leaf to a module that uses it.
    let mut graph = the_crate().imports();
    assert!(graph["lora::slot"].contains("tasks::t02_linear_with_lora"), "{:?}", graph["lora::slot"]);
    graph.get_mut("tasks::t02_linear_with_lora").unwrap().insert("lora::slot".into());
    let circle = find_circle(&graph).expect("a planted circle is found");
    assert!(circle.contains(&"lora::slot".to_string()), "{circle:?}");
}

#[test]
fn a_sibling_named_through_super_is_an_edge_to_the_sibling() {
    // `super::gguf::GgufFile` in models::load is an edge to the sibling models::gguf, not to
    // the parent; an item of the parent (`super::CausalLm`) is an edge to the parent.
    let krate = the_crate();
    let deps = krate.imports_of("models::load", "use super::gguf::GgufFile; use super::CausalLm;");
    assert_eq!(deps, BTreeSet::from(["models::gguf".to_string(), "models".to_string()]));
    // A test module's `super::` is the file's own module: no edge, however the block is spaced.
    for code in
        ["fn f() {}\n#[cfg(test)]\nmod tests { use super::*; use super::gguf::X; }", "mod\ttests\n{ use super::*; }"]
    {
        let deps = krate.imports_of("models::load", code);
        assert!(deps.is_empty(), "{code:?}: {deps:?}");
    }
    // `super::super::x` goes up two levels: from compute::fused::norm to the sibling of compute.
    let deps = krate.imports_of("compute::fused::norm", "use super::super::matmul::Mat;");
    assert_eq!(deps, BTreeSet::from(["compute::matmul".to_string()]));
    // And a circle between two siblings is found: models::load uses models::gguf (the real
    // graph), and a planted `use super::load::load_model;` in models::gguf closes it.
    let mut graph = krate.imports();
    assert!(graph["models::load"].contains("models::gguf"), "{:?}", graph["models::load"]);
    let planted = krate.imports_of("models::gguf", "use super::load::load_model;");
    graph.get_mut("models::gguf").unwrap().extend(planted);
    let circle = find_circle(&graph).expect("a planted circle between siblings is found");
    assert!(circle.contains(&"models::load".to_string()) && circle.contains(&"models::gguf".to_string()), "{circle:?}");
}

#[test]
fn crate_code_names_the_module_of_every_path() {
    let krate = the_crate();
    let mut bad = Vec::new();
    for f in krate.files.values().flatten() {
        let code = code_only(&fs::read_to_string(f).unwrap());
        for p in paths_after(&code, "crate::") {
            let first = p.split("::").next().unwrap_or_default();
            if !krate.top.contains(first) && first != "solutions" && first != "exercises" {
                bad.push(format!("{}: crate::{p}", f.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "name the module (crate::lora::slot::LinearSlot, not crate::LinearSlot):\n{}",
        bad.join("\n")
    );
}

/// What chapters 1-8 must not mention: the challenges' tasks and what they add.
const LATER: [&str; 13] = [
    "t09",
    "t10",
    "t11",
    "qlora",
    "quantiz",
    "nf4",
    "perrow",
    "per-row",
    "per_row",
    "adapterset",
    "modules_to_save",
    "loraplus",
    "lora+",
];

fn later_words(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap().to_lowercase();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for w in LATER {
            if line.contains(w) {
                found.push(format!("{}:{}: `{w}` in {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn chapters_one_to_eight_name_nothing_from_the_challenges() {
    let mut files = Vec::new();
    for n in 1..=8 {
        let prefix = format!("t{n:02}_");
        for dir in ["exercises", "solutions", "book/src"] {
            for entry in fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&prefix)) {
                    files.push(p);
                }
            }
        }
    }
    assert_eq!(files.len(), 24, "t01-t08 in exercises/, solutions/ and book/src/: {files:?}");
    let found: Vec<String> = files.iter().flat_map(|f| later_words(f)).collect();
    assert!(found.is_empty(), "chapters 1-8 mention later tasks:\n{}", found.join("\n"));
    // And the check sees such a word where there is one.
    assert!(!later_words(Path::new("exercises/t09_qlora.rs")).is_empty());
}

#[test]
fn no_code_points_outside_the_repository() {
    let mut found = Vec::new();
    for dir in ["src", "solutions", "exercises", "examples", "tests", "scripts", ".ci"] {
        let mut stack = vec![PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let Ok(text) = fs::read_to_string(&p) else { continue };
                for (n, line) in text.lines().enumerate() {
                    // The benchmark instructions may name the maintainers' PEFT scripts.
                    if line.contains("../shared") && !line.contains("../shared/bench") && p != Path::new(file!()) {
                        found.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "paths outside the repository:\n{}", found.join("\n"));
}
