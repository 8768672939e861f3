//! Compiles the contract with protox (pure Rust, so no `protoc` is needed on any machine) and
//! generates the prost messages and tonic services, plus the descriptor set served by reflection.

use protox::prost::Message;
use std::path::PathBuf;

const FILES: &[&str] = &[
    "ixn/common/v1/common.proto",
    "ixn/events/v1/events.proto",
    "ixn/interaction/v1/interaction.proto",
    "ixn/session/v1/session.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ixn");
    let fds = protox::compile(FILES, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ixn_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // BTreeMap keeps properties in a stable order: encodings compare equal after decoding,
        // which the idempotency check relies on.
        .btree_map(".")
        // The contract names an RPC `Connect`, which would clash with the generated
        // `SessionServiceClient::connect`; clients build a `Channel` and call `new`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
