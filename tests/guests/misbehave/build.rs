//! Link the component with a growable function table, so `grow-table` can
//! test the host's table limit (by default wasm-ld fixes the table's maximum
//! at its initial size, and growth is refused by the module itself).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--growable-table");
    }
}
