//! Compiles the gRPC protos with the protoc shipped by the protoc-bin-vendored crate, and
//! writes a descriptor set for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("blue_authz_descriptor.bin"))
        .compile_protos(&["proto/blue/authz/v1/authz.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
