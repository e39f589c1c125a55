//! The source tree's import graph has no cycle, between folders of `src/` or between files.
//!
//! Data flows one way (listener → TLS → HTTP → request → router → policy → upstream), and a
//! cycle is where that stops being true: two modules that can only be understood together.
//! This reads every file of `src/` (test modules left out), takes each `crate::`, `super::`
//! and `self::` path it names, in `use` items and inline, resolves it to the module that
//! defines the item (following `pub use` re-exports of `mod.rs` files), and looks for a cycle
//! among the modules and among the top-level folders. Run with `--nocapture` for the folder
//! graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A module path under the crate root: `["proxy", "upstream", "pool"]`.
type Module = Vec<String>;

struct Tree {
    /// Each module's source, test modules removed.
    sources: BTreeMap<Module, String>,
    /// `(module, name) → module` for the `pub use` re-exports of each module.
    reexports: BTreeMap<(Module, String), Module>,
}

fn read_tree(dir: &Path, prefix: &Module, sources: &mut BTreeMap<Module, String>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut module = prefix.clone();
            module.push(name);
            read_tree(&path, &module, sources);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "tests" {
            let mut module = prefix.clone();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                module.push(name);
            }
            let text = fs::read_to_string(&path).expect("source is readable");
            sources.insert(module, without_tests(&without_comments(&text)));
        }
    }
}

/// Drops comment lines (doc comments name modules without importing them).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops `#[cfg(test)] mod name { ... }` blocks: tests may reach anywhere.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{').filter(|&o| after[..o].contains("mod ")) else {
            // `#[cfg(test)] mod tests;` or an attribute on something else: skip the line.
            let end = after.find('\n').unwrap_or(after.len());
            rest = &after[end..];
            continue;
        };
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `a::{b, c::{d, e}}` as `["a::b", "a::c::d", "a::c::e"]`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find("::{") else {
        return vec![tree];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 3..tree.len() - 1]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand)
        .map(|p| match p.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// Every path a module's source names, in `use` items and inline: (`pub use`?, path).
fn paths(source: &str) -> Vec<(bool, String)> {
    let mut found = Vec::new();
    for (at, _) in source.match_indices("use ") {
        let before = source[..at].trim_end();
        let public = before.ends_with("pub") || before.ends_with("pub(crate)");
        let starts_item = before.is_empty() || before.ends_with([';', '}', '{', ']']) || public;
        let item = &source[at + 4..];
        let Some(end) = item.find(';') else { continue };
        let item = &item[..end];
        if starts_item
            && ["crate::", "super::", "self::"]
                .iter()
                .any(|p| item.starts_with(p))
        {
            found.extend(expand(item).into_iter().map(|p| (public, p)));
        }
    }
    for root in ["crate::", "super::"] {
        for (at, _) in source.match_indices(root) {
            let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
            let start = source[..at].rfind(|c: char| !ident(c)).map_or(0, |i| i + 1);
            let end = source[at..]
                .find(|c: char| !ident(c))
                .map_or(source.len(), |i| at + i);
            found.push((false, source[start..end].trim_end_matches(':').to_owned()));
        }
    }
    found
}

impl Tree {
    fn load(src: &Path) -> Self {
        let mut sources = BTreeMap::new();
        read_tree(src, &Vec::new(), &mut sources);
        let mut tree = Self {
            sources,
            reexports: BTreeMap::new(),
        };
        // Until nothing changes: a re-export may name another module's re-export.
        loop {
            let mut reexports = BTreeMap::new();
            for (module, source) in &tree.sources {
                for (public, path) in paths(source) {
                    if !public {
                        continue;
                    }
                    let name = path.rsplit("::").next().unwrap_or_default();
                    let name = name.split(" as ").last().unwrap_or(name).to_owned();
                    if let Some(target) = tree.module_of(module, &path) {
                        reexports.insert((module.clone(), name), target);
                    }
                }
            }
            if reexports == tree.reexports {
                return tree;
            }
            tree.reexports = reexports;
        }
    }

    /// The module defining what `path`, written in `from`, names.
    fn module_of(&self, from: &Module, path: &str) -> Option<Module> {
        let path = path.split(" as ").next().unwrap_or(path);
        let mut segments = path.split("::").filter(|s| !s.is_empty()).peekable();
        let mut module = match segments.next()? {
            "crate" => Vec::new(),
            "self" => from.clone(),
            "super" => {
                let mut up = from.clone();
                up.pop();
                while segments.peek() == Some(&"super") {
                    segments.next();
                    up.pop();
                }
                up
            }
            _ => return None,
        };
        for segment in segments {
            let mut deeper = module.clone();
            deeper.push(segment.to_owned());
            if self.sources.contains_key(&deeper) {
                module = deeper;
            } else if let Some(target) = self.reexports.get(&(module.clone(), segment.to_owned())) {
                module = target.clone();
            } else {
                break;
            }
        }
        Some(module)
    }

    /// Module → the modules it imports, leaving out its own ancestors (whose `mod.rs` only
    /// declares it) and itself.
    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (module, source) in &self.sources {
            let targets = edges.entry(module.clone()).or_default();
            for (_, path) in paths(source) {
                let Some(target) = self.module_of(module, &path) else {
                    continue;
                };
                if !module.starts_with(&target) {
                    targets.insert(target);
                }
            }
        }
        edges
    }
}

/// A cycle in `graph`, if there is one, as the nodes along it.
fn cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<N: Ord + Clone>(
        node: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        marks: &mut BTreeMap<N, Mark>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack
                    .iter()
                    .position(|n| n == node)
                    .expect("open node is on the stack");
                return Some(stack[from..].to_vec());
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, marks, stack) {
                return Some(found);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

fn src() -> Tree {
    Tree::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_file_imports_itself_through_others() {
    let edges = src().edges();
    assert!(edges.len() > 50, "read only {} modules", edges.len());
    if let Some(found) = cycle(&edges) {
        let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
        panic!("import cycle between modules: {}", names.join(" → "));
    }
}

#[test]
fn no_folder_of_src_imports_itself_through_others() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in src().edges() {
        let Some(top) = from.first() else { continue };
        let uses = folders.entry(top.clone()).or_default();
        uses.extend(
            targets
                .iter()
                .filter_map(|t| t.first())
                .filter(|t| *t != top)
                .cloned(),
        );
    }
    for (folder, uses) in &folders {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("{folder} → {}", uses.join(", "));
    }
    assert!(folders.contains_key("proxy") && folders["proxy"].contains("config"));
    if let Some(found) = cycle(&folders) {
        panic!(
            "import cycle between folders of src/: {}",
            found.join(" → ")
        );
    }
}

/// The walk finds what a cycle is made of, so the tests above can fail.
#[test]
fn the_walk_sees_use_items_inline_paths_and_reexports() {
    let mut sources = BTreeMap::new();
    for (module, text) in [
        (
            vec!["a"],
            "use crate::b::{self, Thing};\nfn f() { super::c::run(); }",
        ),
        (vec!["b"], "pub use inner::Thing;\nmod inner;"),
        (
            vec!["b", "inner"],
            "pub struct Thing;\nfn g() { crate::a::f(); }",
        ),
        (
            vec!["c"],
            "#[cfg(test)]\nmod tests {\n    use crate::a;\n}\npub fn run() {}",
        ),
    ] {
        let module = module.into_iter().map(String::from).collect();
        sources.insert(module, without_tests(&without_comments(text)));
    }
    let mut tree = Tree {
        sources,
        reexports: BTreeMap::new(),
    };
    tree.reexports.insert(
        (vec!["b".into()], "Thing".into()),
        vec!["b".into(), "inner".into()],
    );
    let edges = tree.edges();
    let a: Module = vec!["a".into()];
    let inner: Module = vec!["b".into(), "inner".into()];
    assert!(edges[&a].contains(&inner), "{edges:?}");
    assert!(edges[&a].contains(&vec!["c".to_owned()]), "{edges:?}");
    assert!(
        edges[&vec!["c".to_owned()]].is_empty(),
        "test modules are left out"
    );
    assert_eq!(cycle(&edges), Some(vec![a.clone(), inner.clone()]));
}
