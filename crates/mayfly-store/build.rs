//! `sqlx::migrate!` embeds the migration files when this crate compiles: rebuild it when a file
//! is added or changed, not only when Rust code changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
