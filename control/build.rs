// The gRPC API is compiled from control/proto with protox (a protobuf compiler in Rust), so a fresh
// machine builds sluice with cargo alone: no system protoc needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sluice.proto");
    let fds = protox::compile(["proto/sluice.proto"], ["proto"])?;
    // Served by gRPC server reflection (grpcurl, grpcio-reflection): the proto is the contract.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sluice_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `sluice ctl` prints replies as JSON.
        .type_attribute(".sluice.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
