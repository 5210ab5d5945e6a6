//! Compiles the gRPC protos with the protoc shipped by the protoc-bin-vendored crate, and
//! writes the descriptor sets for server reflection: ours, and Envoy's ext_authz service from
//! the vendored copy of its protos in `proto/vendor` (the envoy-types crate supplies the Rust
//! types but no descriptor set).

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", &protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .codec_path("crate::service::grpc::codec::BoundedCodec")
        .file_descriptor_set_path(out.join("blue_authz_descriptor.bin"))
        .compile_protos(&["proto/blue/authz/v1/authz.proto"], &["proto"])?;
    let status = Command::new(&protoc)
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out.join("envoy_ext_authz_descriptor.bin").display()
        ))
        .arg("-Iproto/vendor")
        .arg(format!(
            "-I{}",
            protoc_bin_vendored::include_path()?.display()
        ))
        .arg("proto/vendor/envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on Envoy's ext_authz protos: {status}").into());
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
