fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded, so setting the variable is sound.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/cleanroom.proto");
    tonic_prost_build::configure().compile_protos(&["proto/cleanroom.proto"], &["proto"])?;
    Ok(())
}
