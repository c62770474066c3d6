//! The layers of src/ import only downwards: front ends (the command
//! lines) → config → setup and the event loop → engine → host, wire
//! helpers and pages. This reads every `crate::` path in the production
//! code (comments and `#[cfg(test)]` parts left out) and fails on one
//! against the layering, so a shortcut shows up in review, not a year
//! later as an import circle. docs/design.md describes the layers.

use std::collections::BTreeSet;
use std::path::Path;

/// Each module, and the modules its production code may name. Front ends
/// (cli, slirp4netns, pasta, run, the binary) and the fuzz harnesses sit
/// on top and may name anything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("engine", &["host", "pages", "vnet"]),
    ("host", &["pages", "resolv", "tokens"]),
    ("vnet", &[]),
    ("pages", &[]),
    ("tokens", &[]),
    ("resolv", &[]),
    ("busy_poll", &[]),
    ("relay", &["tokens"]),
    ("config", &["engine"]),
    ("api", &["engine", "host", "tokens"]),
    ("setup", &["config", "engine", "pages", "vnet"]),
    (
        "event_loop",
        &[
            "api",
            "busy_poll",
            "engine",
            "host",
            "pages",
            "relay",
            "setup",
            "tokens",
            "vnet",
        ],
    ),
];

const ON_TOP: &[&str] = &[
    "admin",
    "cli",
    "slirp4netns",
    "pasta",
    "run",
    "main",
    "lib",
    "fuzzing",
];

/// Files that are test code as a whole.
const TEST_FILES: &[&str] = &[
    "engine/tests.rs",
    "engine/tests6.rs",
    "engine/scenario.rs",
    "host/sim.rs",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's production code names as `crate::NAME`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if TEST_FILES.contains(&rel.as_str()) {
            continue;
        }
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if ON_TOP.contains(&module.as_str()) {
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == module) else {
            panic!("{rel}: module {module} has no place in the layering; add it to ALLOWED");
        };
        checked += 1;
        for name in named_modules(&std::fs::read_to_string(file).unwrap()) {
            if name != module && !allowed.contains(&name.as_str()) {
                wrong.push(format!("{rel} names crate::{name}"));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} files checked: is src/ where it was?"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_imports_and_ignores_comments_and_tests() {
    let text = "use crate::engine::Engine;\n\
                // crate::setup in a comment\n\
                let x = crate::vnet::HEADER_LEN; // and crate::config\n\
                #[cfg(test)]\n\
                use crate::host::SimHost;\n";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["engine", "vnet"]);
}
