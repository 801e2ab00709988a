//! Compiles `proto/` with protox (pure Rust, so no system `protoc`) and
//! generates the tonic client and server from the resulting descriptors.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &["stackstate/servicetoken/v1/service_token.proto"];
const SECRET_MESSAGES: [&str; 4] = [
    ".stackstate.servicetoken.v1.CreateResponse",
    ".stackstate.servicetoken.v1.RevokeLeakedRequest",
    ".stackstate.servicetoken.v1.RotateResponse",
    ".stackstate.servicetoken.v1.ValidateRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;

    // The encoded set is served by gRPC reflection; it includes the imported
    // well-known types so `grpcurl describe` resolves Timestamp too.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(
        out_dir.join("service_token_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // Messages that carry a token secret get a hand-written, redacted Debug
    // (src/proto.rs) instead of the derived one.
    // Our codec: tonic-prost's, with decode failures in a text of our own
    // (src/proto.rs).
    tonic_prost_build::configure()
        .codec_path("crate::proto::codec::ProstCodec")
        .skip_debug(SECRET_MESSAGES)
        // Labels print and compare in key order.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
