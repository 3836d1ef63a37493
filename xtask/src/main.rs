//! Project chores. `cargo test` runs the tidy checks below: every `.rs` file starts with a `//!`
//! module doc, ARCHITECTURE.md names every crate, `mayfly-core` stays free of async and I/O
//! crates, nothing in the server below `api/` reaches up into it (`crate::api::`, axum), and no
//! code outside the store switches on the store's backend (`Dialect`, a URL's scheme).

use std::path::{Path, PathBuf};

fn main() {
    let root = project_root();
    let problems = tidy(&root);
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    if !problems.is_empty() {
        std::process::exit(1);
    }
    println!("tidy: ok");
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn tidy(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("xtask"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.starts_with("//!") {
            problems.push(format!(
                "{} does not start with a `//!` module doc",
                file.display()
            ));
        }
    }
    problems.extend(layering(root));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(root.join("crates")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !architecture.contains(&name) {
                problems.push(format!("ARCHITECTURE.md does not name crate `{name}`"));
            }
        }
    }
    let core =
        std::fs::read_to_string(root.join("crates/mayfly-core/Cargo.toml")).unwrap_or_default();
    for banned in ["tokio", "sqlx", "axum", "reqwest", "hyper"] {
        if core
            .lines()
            .any(|line| line.trim_start().starts_with(banned))
        {
            problems.push(format!(
                "mayfly-core depends on `{banned}`: the core does no I/O"
            ));
        }
    }
    problems
}

/// The server's domain (everything outside `src/api/`) knows nothing of HTTP: no `crate::api::`
/// path and no axum; and only the store knows which database it runs on.
fn layering(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let server = root.join("crates/mayfly-server/src");
    let mut files = Vec::new();
    rust_files(&server, &mut files);
    for file in &files {
        if file.starts_with(server.join("api")) || file == &server.join("lib.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for needle in ["crate::api::", "use axum", "axum::"] {
            if code_lines(&text).any(|line| line.contains(needle)) {
                problems.push(format!(
                    "{} uses `{needle}`: only `src/api/` speaks HTTP; return a BrokerError or a domain type",
                    file.display()
                ));
            }
        }
    }
    let mut outside_store = Vec::new();
    for dir in ["crates/mayfly-server/src", "crates/mayfly-cli/src"] {
        rust_files(&root.join(dir), &mut outside_store);
    }
    for file in &outside_store {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for needle in ["Dialect", "starts_with(\"postgres", "starts_with(\"sqlite"] {
            // The store's `Dialect`, not a word ending in it (`SqlDialect`, the dialect an
            // agent's SQL is parsed in, which is the target's).
            let found = |line: &str| {
                line.match_indices(needle).any(|(at, _)| {
                    !line[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            };
            if code_lines(&text).any(found) {
                problems.push(format!(
                    "{} switches on the store's backend (`{needle}`): ask the store (`Store::capabilities`)",
                    file.display()
                ));
            }
        }
    }
    problems
}

/// The lines of a Rust file that are not comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        let problems = super::tidy(&super::project_root());
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
    }
}
