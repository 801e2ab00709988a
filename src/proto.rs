//! The API's generated code (from `sts-api`, which the client crate shares),
//! and the descriptors of Envoy's ext_authz API that reflection serves
//! beside ours.

pub use sts_api::proto::*;

/// The encoded descriptors of Envoy's `envoy.service.auth.v3` (ext_authz)
/// and what it imports, for gRPC reflection. Compiled from the protos the
/// `envoy-types` crate ships, whose generated types we serve; committed
/// because a build script cannot find another crate's files, and kept in
/// step with the crate by a test (`tests/api/ext_authz.rs`), which also
/// writes it anew when `STS_WRITE_DESCRIPTORS` is set.
pub const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!("../proto/envoy/ext_authz_v3.binpb");
