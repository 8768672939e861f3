//! Compiles the contract with protox (pure Rust, so no `protoc` is needed on any machine) and
//! generates the prost messages and tonic services, plus the descriptor set served by reflection.
//!
//! The servers come from tonic-build's manual generator, from the same descriptors, so that each
//! method has its own codec: a method that streams `Event`s uses `wire::EncodedEventCodec`, which
//! sends each event's bytes as they were encoded once at commit, however many streams carry them;
//! every other one is protobuf through prost. The clients are prost's, and decode `Event`s.
//! Each package's servers are in `<package>.servers.rs`, which `lib.rs` includes beside the
//! package's messages: a new package needs both lines there.

use prost_types::{FileDescriptorSet, MethodDescriptorProto};
use protox::prost::Message;
use std::path::PathBuf;
use tonic_prost_build::manual;

const FILES: &[&str] = &[
    "ixn/common/v1/common.proto",
    "ixn/events/v1/events.proto",
    "ixn/interaction/v1/interaction.proto",
    "ixn/session/v1/session.proto",
];

/// The message the encoded-once streams carry.
const EVENT: &str = ".ixn.events.v1.Event";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ixn");
    let fds = protox::compile(FILES, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ixn_descriptor.bin"), fds.encode_to_vec())?;
    let servers = servers(&fds);
    tonic_prost_build::configure()
        // BTreeMap keeps properties in a stable order: encodings compare equal after decoding,
        // which the idempotency check relies on.
        .btree_map(".")
        // The contract names an RPC `Connect`, which would clash with the generated
        // `SessionServiceClient::connect`; clients build a `Channel` and call `new`.
        .build_transport(false)
        // Written below, from the same descriptors.
        .build_server(false)
        .compile_fds(fds)?;
    for (package, services) in servers {
        // `<package>.servers.rs`: the package's servers, each in the file the generator names.
        let includes: String = services
            .iter()
            .map(|name| format!("include!(\"{package}.{name}.rs\");\n"))
            .collect();
        std::fs::write(out.join(format!("{package}.servers.rs")), includes)?;
    }
    Ok(())
}

/// Generates every service's server, and says which services each package has.
fn servers(fds: &FileDescriptorSet) -> Vec<(String, Vec<String>)> {
    let mut packages = Vec::new();
    let mut services = Vec::new();
    for file in &fds.file {
        let package = file.package();
        let mut names = Vec::new();
        for service in &file.service {
            let mut builder = manual::Service::builder()
                .name(service.name())
                .package(package);
            for method in &service.method {
                builder = builder.method(manual_method(method));
            }
            services.push(builder.build());
            names.push(service.name().to_owned());
        }
        if !names.is_empty() {
            packages.push((package.to_owned(), names));
        }
    }
    manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&services);
    packages
}

fn streams_events(method: &MethodDescriptorProto) -> bool {
    method.server_streaming() && !method.client_streaming() && method.output_type() == EVENT
}

fn manual_method(method: &MethodDescriptorProto) -> manual::Method {
    let builder = manual::Method::builder()
        .name(snake_case(method.name()))
        .route_name(method.name())
        .input_type(rust_type(method.input_type()));
    let builder = if streams_events(method) {
        builder
            .output_type("crate::wire::EncodedEvent")
            .codec_path("crate::wire::EncodedEventCodec")
            .server_streaming()
    } else {
        assert!(
            !method.server_streaming() && !method.client_streaming(),
            "{}: only unary methods and streams of events are generated here",
            method.name()
        );
        builder
            .output_type(rust_type(method.output_type()))
            .codec_path("tonic_prost::ProstCodec")
    };
    builder.build()
}

/// `.ixn.session.v1.LoginRequest` → `crate::ixn::session::v1::LoginRequest`. Requests and answers
/// are top-level messages of the contract's own packages (prost names nested and well-known types
/// otherwise).
fn rust_type(proto: &str) -> String {
    assert!(
        proto.starts_with(".ixn."),
        "{proto}: a method takes and returns messages of the contract's packages"
    );
    let path: Vec<&str> = proto.trim_start_matches('.').split('.').collect();
    let (name, package) = path.split_last().expect("a message name");
    format!("crate::{}::{name}", package.join("::"))
}

/// `SetNotReady` → `set_not_ready`, as prost names the client's methods. (A name that is a Rust
/// keyword, which prost would escape, fails the build in the generator.)
fn snake_case(name: &str) -> String {
    use heck::ToSnakeCase;
    name.to_snake_case()
}
