//! Examples live in `examples/*.rs`; run `cargo run -p airlock-examples --example embed`.
