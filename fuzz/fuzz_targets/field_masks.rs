//! Fuzz target: an `UpdateRequest`'s bytes through the field-mask reading
//! every gRPC Update goes through. Never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sts::grpc::parse_update(data);
});
