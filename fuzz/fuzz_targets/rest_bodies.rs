//! Fuzz target: every HTTP request body parser (token create, rotate,
//! revoke, merge patch, TokenReview, introspection form) on the same
//! bytes. None panics, and no error repeats a token the body held.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let errors = sts::http::parse_any_body(data);
    let text = String::from_utf8_lossy(data);
    // A token-shaped run in the body (what a secret looks like) never
    // comes back in an error.
    for (at, _) in text.match_indices("svctok-") {
        let secret: String = text[at..].chars().take(20).collect();
        if secret.chars().count() == 20 && secret[7..].chars().all(|c| c.is_ascii_alphanumeric()) {
            for error in &errors {
                assert!(!error.contains(&secret), "{error}");
            }
        }
    }
});
