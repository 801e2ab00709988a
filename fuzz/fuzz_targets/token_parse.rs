//! Fuzz target: the token parser and the validate path's check-and-hash.
//! They must agree on every input, never panic, and never echo the input:
//! every error message is a fixed text, except that a wrong length is named.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sts::token::{MalformedToken, Secret, TokenHash};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Secret::parse(input);
    let hashed = TokenHash::of_presented(input);
    assert_eq!(parsed.is_ok(), hashed.is_ok());
    match (parsed, hashed) {
        (Ok(token), Ok(hash)) => assert_eq!(token.hash(), hash),
        (Err(MalformedToken::Length(_)), _) => {}
        (Err(why), _) => {
            let fixed = MalformedToken::FIXED.map(|e| e.to_string());
            assert!(fixed.contains(&why.to_string()), "{why}");
        }
        _ => unreachable!("checked above"),
    }
});
