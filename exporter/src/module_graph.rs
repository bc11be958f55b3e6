//! Keeps the module graph one-way: a test reads every file under `src/`, takes its
//! `crate::…` and `super::…` references (outside comments), resolves each to the top-level
//! module it names, and fails on a cycle between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Cycles still in the tree, each as the sorted members of one strongly connected component.
/// The test fails on any other cycle, and when one of these changes (so the list only shrinks).
/// What untangles this one: settings typed in `settings/` rather than borrowing each collector's
/// types (`app::targets`, `netdev`, `peers::probe`, `forecast`, `records`); the jobs collector
/// publishing its host view and finished migrations, with record enrichment and the app
/// holdback consuming them instead of the sampler calling into `app`, `netdev`, `peers` and
/// `records`; `state` not holding `jobs`' and `records`' types.
const KNOWN: &[&[&str]] = &[&[
    "app",
    "collector",
    "forecast",
    "jobs",
    "netdev",
    "peers",
    "records",
    "settings",
    "state",
]];

/// The top-level module of a file under `src/` and its module path (`jobs/sampler.rs` ->
/// `["jobs", "sampler"]`; `mod.rs` names its folder); `None` for the crate roots.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [one] if one == "lib" || one == "main" => None,
        _ => Some(parts),
    }
}

/// The top-level modules `text` (the file at `path`) refers to, with the line of each.
fn references(path: &[String], text: &str, tops: &BTreeSet<String>) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < code.len() {
            if !code.is_char_boundary(i) {
                i += 1;
                continue;
            }
            let rest = &code[i..];
            let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let (supers, after) = if at_word && rest.starts_with("crate::") {
                (None, &rest["crate::".len()..])
            } else if at_word && rest.starts_with("super::") {
                let mut r = rest;
                let mut k = 0;
                while let Some(t) = r.strip_prefix("super::") {
                    r = t;
                    k += 1;
                }
                (Some(k), r)
            } else {
                i += 1;
                continue;
            };
            let ident: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `super::` past this file's module path reaches the crate root (inline modules such
            // as `mod tests` are not counted, which can only make it stay inside, never leave).
            let target = match supers {
                None => Some(ident),
                Some(k) if k >= path.len() => Some(ident),
                Some(_) => None,
            };
            if let Some(t) = target.filter(|t| tops.contains(t) && *t != path[0]) {
                out.push((t, n + 1));
            }
            i += code.len() - i - after.len() + 1;
        }
    }
    out
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out.sort();
    walk.out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_new_cycle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let parsed: Vec<(Vec<String>, String, String)> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).expect("under src/");
            let path = module_path(rel)?;
            let text = std::fs::read_to_string(f).expect("read a source file");
            Some((path, rel.display().to_string(), text))
        })
        .collect();
    let tops: BTreeSet<String> = parsed.iter().map(|(p, _, _)| p[0].clone()).collect();
    assert!(
        tops.contains("jobs") && tops.contains("collector"),
        "{tops:?}"
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut evidence: BTreeMap<(String, String), String> = BTreeMap::new();
    for (path, rel, text) in &parsed {
        graph.entry(path[0].clone()).or_default();
        for (to, line) in references(path, text, &tops) {
            graph.entry(path[0].clone()).or_default().insert(to.clone());
            evidence
                .entry((path[0].clone(), to))
                .or_insert_with(|| format!("{rel}:{line}"));
        }
    }
    let found = cycles(&graph);
    let known: Vec<Vec<String>> = KNOWN
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let explain = |scc: &[String]| -> String {
        let members: BTreeSet<&String> = scc.iter().collect();
        evidence
            .iter()
            .filter(|((a, b), _)| members.contains(a) && members.contains(b))
            .map(|((a, b), at)| format!("{a} -> {b} ({at})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for scc in &found {
        assert!(
            known.contains(scc),
            "a cycle between top-level modules {scc:?}: {}",
            explain(scc)
        );
    }
    for k in &known {
        assert!(
            found.contains(k),
            "the known cycle {k:?} is gone (or changed): update KNOWN in module_graph.rs; now {found:?}"
        );
    }
}

#[test]
fn references_resolve_crate_and_super_paths_and_skip_comments() {
    let tops: BTreeSet<String> = ["jobs", "records", "app"].map(String::from).into();
    let path = vec!["jobs".to_string(), "sampler".to_string()];
    let text = "use crate::records::log::RecordLog;\n// crate::app is only named here\nuse super::tracker::X;\nlet _ = super::super::app::Y;\n";
    assert_eq!(
        references(&path, text, &tops),
        vec![("records".to_string(), 1), ("app".to_string(), 4)]
    );
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["a", "c"]), ("c", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}
