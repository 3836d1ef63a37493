//! Project chores. `cargo test` runs the tidy checks below: every `.rs` file starts with a `//!`
//! module doc, ARCHITECTURE.md names every crate, and `mayfly-core` stays free of async and I/O
//! crates.

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
