//! Compiles `proto/*.proto` with `protox` (a pure-Rust protobuf compiler), so the
//! build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = proto_dir.join("roomq.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&proto_dir])?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        // Rare pushes, boxed so that every `ServerFrame` stays small.
        .boxed(".roomq.v1.ServerFrame.body.presence")
        .boxed(".roomq.v1.ServerFrame.body.gap")
        .compile_fds(descriptors)?;
    Ok(())
}
