//! Rebuilds the archiver when a migration is added: `sqlx::migrate!` embeds
//! `migrations/sqlite/` and `migrations/postgres/` at compile time, and cargo does not
//! otherwise notice a new file there (a directory is watched with everything under it).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
