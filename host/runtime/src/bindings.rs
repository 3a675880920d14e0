//! Host bindings for the `airlock:plugin` WIT package (generated).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "airlock:plugin/plugin",
    exports: { default: async },
    // Workspace operations wait on the store (the network, for
    // PostgreSQL) on a blocking thread, so the call's deadline can abandon
    // a guest waiting there (see `grants/workspace.rs`).
    imports: { "airlock:plugin/workspace": async },
});
