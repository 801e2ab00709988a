//! Tells cargo that `migrations/` (embedded by `sqlx::migrate!`) is an
//! input, so a new migration rebuilds the server. The API's code is
//! generated in `crates/sts-api`.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
