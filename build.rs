//! `sqlx::migrate!` embeds the files of `migrations/` at build time; without this, a
//! new migration file would not rebuild the crate (cargo only watches the files the
//! macro already included).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
