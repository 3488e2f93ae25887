//! Host-side bindings of the `stepbox:step` world. Every import can trap (the outer
//! `wasmtime::Result`), which is how the host-call budget stops a guest; only
//! `http.send` is async, because only it waits on the network.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "step",
    imports: {
        "stepbox:step/http.send": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    additional_derives: [PartialEq],
});

pub(crate) use self::stepbox::step::{audit, context, http, log, secrets, types};
