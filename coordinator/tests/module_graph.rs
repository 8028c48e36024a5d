//! The coordinator's modules form layers: no module imports one that imports it back, directly
//! or through others (ARCHITECTURE.md, "Layers"). Checked on the source: every `crate::<module>`
//! a file names is an edge from its top-level module (`api/*.rs` count as `api`), and the graph
//! must have no cycle. Named in a `use`, a path or a doc link alike: a mention is a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![];
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name == "bin" {
                continue;
            }
            // Source files only (a module's folder may hold assets it embeds).
            for f in std::fs::read_dir(&p).unwrap().flatten() {
                if f.path().extension().is_some_and(|x| x == "rs") {
                    files.push((name.clone(), f.path()));
                }
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if name != "lib" {
                files.push((name, p));
            }
        }
    }
    for (module, path) in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let deps = g.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let target: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !target.is_empty() && target != module {
                deps.insert(target);
            }
        }
        // `super::x` inside a folder module stays within it; `super::` at the top names lib.
    }
    g
}

/// A cycle through `start`, if any (depth-first search).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| p == n) {
            let mut c = path[pos..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(g, n, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn coordinator_modules_have_no_import_cycle() {
    let g = graph();
    assert!(g.len() > 10, "the graph was read: {g:?}");
    if let Some(c) = cycle(&g) {
        panic!("import cycle between coordinator modules: {}", c.join(" -> "));
    }
}

#[test]
fn the_node_and_the_leaders_tasks_do_not_import_the_http_layer() {
    let g = graph();
    for m in ["node", "proposer", "liveness", "migration", "stream", "handover", "backfill", "clock", "config"] {
        assert!(!g[m].contains("api"), "{m} imports the API layer: {:?}", g[m]);
        assert!(!g[m].contains("server"), "{m} imports the server: {:?}", g[m]);
        assert!(!g[m].contains("ui"), "{m} imports the console: {:?}", g[m]);
    }
    // The console is a client of the API, in-process: the API knows nothing of it.
    assert!(!g["api"].contains("ui"), "the API imports the console: {:?}", g["api"]);
    assert!(g["ui"].contains("api"), "the console calls the API: {:?}", g["ui"]);
}

#[test]
fn the_check_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert!(cycle(&g).is_none());
}
