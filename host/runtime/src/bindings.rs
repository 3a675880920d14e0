//! Host bindings for the `airlock:plugin` WIT package (generated).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "airlock:plugin/plugin",
    exports: { default: async },
});
