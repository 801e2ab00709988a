//! Fuzz target: reading the credential from request headers. The input is a
//! sequence of headers, each one selector byte (which header name) followed
//! by a value up to the next 0xFF byte.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sts::credential::{self, MAX_CREDENTIAL_BYTES};

const NAMES: [&str; 4] = ["authorization", "x-api-key", "x-other", "Authorization"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for chunk in data.split(|&b| b == 0xFF) {
        let Some((&selector, value)) = chunk.split_first() else {
            continue;
        };
        let name = NAMES[usize::from(selector) % NAMES.len()];
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Ok(token) = credential::presented(&headers) {
        assert!(!token.is_empty() && token.len() <= MAX_CREDENTIAL_BYTES);
    }
});
