//! Fuzz target: the sled record decoder, on any bytes a damaged or foreign
//! data directory could hold. An error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sts::store::sled::decode_record(data);
});
