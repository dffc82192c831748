//! Generates the agent API's message and ttrpc code from `proto/` at build time.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let protos = ["proto/agent.proto", "proto/stream.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(protos)
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate the agent API from proto/");
    strip_inner_attributes(&out_dir);
}

/// The generated files start with inner attributes and docs (`#![...]`, `//!`), which `include!` cannot take
/// inside a module; the crate sets the equivalent lints on the including modules instead.
fn strip_inner_attributes(out_dir: &str) {
    for name in ["agent.rs", "agent_ttrpc.rs", "stream.rs"] {
        let path = std::path::Path::new(out_dir).join(name);
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}
