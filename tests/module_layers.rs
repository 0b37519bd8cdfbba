//! The crate's top-level modules form layers, each using only those below it (the codemap
//! in `src/lib.rs`): no module may reach, through any chain of `crate::` paths, back to
//! itself. A cycle (a lower layer naming a higher one, as the node once named a type of the
//! HTTP layer above it) fails this test with the chain that closes it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the other top-level modules its code names with `crate::`.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to (`src/log/mod.rs` and
/// `src/log/walk.rs` are `log`); `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The modules named as `crate::<name>` in `text`, comments aside (a doc link is not a use).
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let preceded_by_ident = line[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue;
            }
            let name: String = line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn crate_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    for file in common::source_files() {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(named_modules(&text).into_iter().filter(|n| *n != module));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|n| modules.contains(n));
    }
    graph
}

/// A chain of modules that leads from one back to itself, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_reaches_back_to_itself_through_crate_paths() {
    let graph = crate_graph();
    for layer in ["log", "broker", "groups", "node", "http"] {
        assert!(
            graph.contains_key(layer),
            "module {layer} not found in src/"
        );
    }
    assert!(
        graph["http"].contains("node") && graph["node"].contains("broker"),
        "the scan sees the known layers: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_scan_finds_cycles_and_ignores_comments_and_longer_paths() {
    let text = "use crate::node::Node;\n// see crate::http\n/// [`crate::groups`]\n\
                let x = supercrate::log::f(); let y = crate::broker::Broker::open();";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["broker", "node"]);

    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_cycle(&graph(&[
            ("http", "node"),
            ("node", "broker"),
            ("broker", "log")
        ])),
        None
    );
    let cycle = find_cycle(&graph(&[
        ("http", "node"),
        ("node", "broker"),
        ("node", "http"),
    ]))
    .expect("the cycle http -> node -> http");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"http".to_string()) && cycle.contains(&"node".to_string()));
}
