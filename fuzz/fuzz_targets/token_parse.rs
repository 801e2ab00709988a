//! Fuzz target: the token parser and the validate path's check-and-hash.
//! They must agree on every input, never panic, and never echo the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sts::token::{Token, TokenHash};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Token::parse(input);
    let hashed = TokenHash::of_presented(input);
    assert_eq!(parsed.is_ok(), hashed.is_ok());
    match (parsed, hashed) {
        (Ok(token), Ok(hash)) => assert_eq!(token.hash(), hash),
        (Err(why), _) => assert!(input.len() < 8 || !why.to_string().contains(input)),
        _ => unreachable!("checked above"),
    }
});
