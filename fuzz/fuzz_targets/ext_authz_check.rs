//! Fuzz target, differential: an ext_authz `CheckRequest` read by our
//! hand-written view and by envoy-types' full decode must give the same
//! credential headers and required roles wherever both accept the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sts::grpc::check_request_differential(data);
});
