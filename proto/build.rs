//! Compiles `relais/v1/*.proto` into Rust at build time.
//!
//! The files are parsed by `protox` (pure Rust) instead of `protoc`, so building Relais needs no
//! system package and the Docker build stage stays a plain Rust image.

use std::path::Path;

const PROTO_FILES: &[&str] = &[
    "relais/v1/common.proto",
    "relais/v1/audit.proto",
    "relais/v1/events.proto",
    "relais/v1/worker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(PROTO_FILES, [root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
