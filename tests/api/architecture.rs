//! The layering ARCHITECTURE.md describes, checked against the source: the
//! module graph (from non-test `crate::`/`super::` paths) has no cycles,
//! the leaves stay leaves, transports cannot reach the store, secrets are
//! exposed only where the doc says, every file opens with `//!`, and the
//! code map names every file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One library source file: its module path (`store::sled`) and its code
/// with comments and `#[cfg(test)]` items removed.
struct Source {
    module: Vec<String>,
    code: String,
}

fn library_sources() -> Vec<Source> {
    let src = Path::new(ROOT).join("src");
    rust_files(&src)
        .into_iter()
        .filter(|path| !path.starts_with(src.join("bin")))
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if module
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Source {
                code: without_tests(&without_comments(&text)),
                module,
            }
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `code` without the items marked `#[cfg(test)]` (found by brace matching;
/// good enough for this code base, which keeps braces in strings balanced).
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut kept = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        kept.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semicolon) if semicolon.is_none_or(|s| open < s) => {
                let mut depth = 0;
                let mut end = item.len();
                for (i, c) in item.char_indices().skip(open) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semicolon)) => semicolon + 1,
            _ => item.len(),
        };
        rest = &item[end..];
    }
    kept.push_str(rest);
    kept
}

/// The first path segment after `crate::`, or each first segment of a
/// `crate::{a::x, b}` group; likewise for `super::`.
fn referenced(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    paths.push(segments(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            paths.push(segments(rest));
        }
    }
    paths.retain(|path| !path.is_empty());
    paths
}

/// The leading `a::b::c` of `text`, as segments.
fn segments(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        parts.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(more) => rest = more.trim_start(),
            None => break,
        }
    }
    parts
}

/// Module → the modules its non-test code uses, by full module path. Uses
/// between a module and its ancestors (a `mod.rs` re-exporting a child, a
/// child using its parent's items) are the normal shape of a module tree
/// and are left out.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let resolve = |path: Vec<String>| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| modules.contains(prefix))
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources.iter().filter(|s| !s.module.is_empty()) {
        let from = source.module.clone();
        let parent = from[..from.len() - 1].to_vec();
        let targets = referenced(&source.code, "crate::")
            .into_iter()
            .chain(
                referenced(&source.code, "super::")
                    .into_iter()
                    .map(|path| [parent.clone(), path].concat()),
            )
            .filter_map(resolve);
        let edges = graph.entry(from.join("::")).or_default();
        for to in targets {
            let related = to.starts_with(&from) || from.starts_with(&to);
            if !related {
                edges.insert(to.join("::"));
            }
        }
    }
    graph
}

/// The same graph with every module folded into its top-level one.
fn top_level(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |module: &str| module.split("::").next().unwrap().to_owned();
    let mut folded: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        let edges = folded.entry(top(from)).or_default();
        edges.extend(tos.iter().map(|to| top(to)).filter(|to| *to != top(from)));
    }
    folded
}

/// A cycle in `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let graph = module_graph(&library_sources());
    assert!(graph.contains_key("store::sled"), "{graph:#?}");
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
    let top = top_level(&graph);
    assert_eq!(find_cycle(&top), None, "{top:#?}");
}

#[test]
fn the_leaves_and_the_boundaries_hold() {
    let top = top_level(&module_graph(&library_sources()));
    let uses = |module: &str| top.get(module).cloned().unwrap_or_default();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    for leaf in ["clock", "incident", "metrics", "proto", "source", "text"] {
        assert_eq!(uses(leaf), set(&[]), "{leaf} is a leaf");
    }
    // The model takes time's range (protobuf's Timestamp) from the clock.
    // (`token` and `credential` are sts-api's, outside this graph.)
    assert_eq!(uses("model"), set(&["clock", "text"]));
    assert_eq!(uses("cache"), set(&["changes", "model"]));
    assert_eq!(uses("changes"), set(&["model"]));
    // The client shares the API's types, error formatting, the text forms
    // of a time and the rules of what in a name may mislead a reader;
    // nothing of the server.
    assert_eq!(uses("cli"), set(&["clock", "error", "proto", "text"]));
    // Transports reach tokens only through the service: no store, so no bootstrap.
    for transport in ["console", "grpc", "http"] {
        assert!(!uses(transport).contains("store"), "{transport}: {top:#?}");
    }
    // The console is a transport of its own: it reaches tokens through
    // the service, never through another transport.
    assert!(
        !uses("console").contains("http") && !uses("console").contains("grpc"),
        "{top:#?}"
    );
    assert!(!uses("http").contains("console") && !uses("grpc").contains("console"));
    // What check surfaces decide alike lives below both transports
    // (`authz`): gRPC does not reach into the HTTP side for it.
    assert!(!uses("grpc").contains("http"), "{top:#?}");
    assert!(!uses("authz").contains("http") && !uses("authz").contains("grpc"));
    // The service knows nothing of how it is reached.
    for outer in ["authz", "console", "grpc", "http", "server"] {
        assert!(!uses("service").contains(outer), "{top:#?}");
    }
}

#[test]
fn secrets_are_shown_only_where_architecture_md_says() {
    let mut showing: Vec<String> = rust_files(&Path::new(ROOT).join("src"))
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            without_tests(&without_comments(&text)).contains(".expose_secret()")
        })
        .map(|path| path.strip_prefix(ROOT).unwrap().display().to_string())
        .collect();
    showing.sort();
    assert_eq!(
        showing,
        [
            "src/bin/sts-server.rs",
            "src/console/actions.rs",
            "src/console/tokens.rs",
            "src/grpc/mod.rs",
            "src/http/tokens.rs",
            "src/webhook.rs"
        ]
    );
}

#[test]
fn every_file_says_what_it_holds_and_the_code_map_names_it() {
    let architecture = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let mut files = rust_files(&Path::new(ROOT).join("src"));
    files.extend(rust_files(&Path::new(ROOT).join("tests")));
    files.push(Path::new(ROOT).join("build.rs"));
    let crates = crate_dirs();
    assert!(!crates.is_empty());
    for dir in &crates {
        files.extend(rust_files(&dir.join("src")));
        files.push(dir.join("build.rs"));
    }
    files.retain(|path| path.exists());
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let shown = path.strip_prefix(ROOT).unwrap().display().to_string();
        assert!(text.starts_with("//!"), "{shown} opens without a //! line");
        if shown.starts_with("src/") {
            let name = path.file_name().unwrap().to_string_lossy();
            let dir = path.parent().unwrap().strip_prefix(ROOT).unwrap().display();
            assert!(
                architecture.contains(&format!("`{shown}`"))
                    || (architecture.contains(&format!("`{dir}/`"))
                        && architecture.contains(&format!("`{name}`"))),
                "ARCHITECTURE.md's code map does not name {shown}"
            );
        }
        // A crate's files are named under the crate's own heading:
        // `crates/<name>/` and then their path within it.
        if let Some(dir) = crates.iter().find(|dir| path.starts_with(dir)) {
            let crate_dir = dir.strip_prefix(ROOT).unwrap().display().to_string();
            let within = path.strip_prefix(dir).unwrap().display().to_string();
            assert!(
                architecture.contains(&format!("`{crate_dir}/`"))
                    && architecture.contains(&format!("`{within}`")),
                "ARCHITECTURE.md's code map does not name {shown}"
            );
        }
    }
}

/// The published crates under `crates/`.
fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn the_license_cargo_toml_declares_ships_with_the_source() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(Path::new(ROOT).join("LICENSE")).unwrap();
    assert!(license.trim_start().starts_with("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}
