//! Code generated from `proto/` by `build.rs`, fenced in here so nothing else
//! depends on generated names directly.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("stackstate.servicetoken.v1");

/// The encoded descriptors of our API and the types it imports, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("service_token_descriptor");
