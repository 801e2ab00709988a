//! Service-token secrets: generation, parsing (prefix, alphabet, checksum) and
//! the SHA-256 hash that is all the store ever keeps of them.
//!
//! A token is `svctok-` + 43 base62 characters from the OS-seeded CSPRNG
//! (256 bits) + a 6-character base62 CRC-32 of everything before it. The
//! checksum lets `parse` reject typos and truncations without a store lookup
//! and lets secret scanners recognise a token with few false positives.

use std::fmt;

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every token starts with.
pub const PREFIX: &str = "svctok-";
/// 62^43 > 2^256: the random body carries 256 bits.
const BODY_LEN: usize = 43;
/// 62^6 > 2^32: room for a CRC-32.
const CHECKSUM_LEN: usize = 6;
/// The exact length of every well-formed token.
pub const TOKEN_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A service-token secret. Its `Debug` output is redacted; the only way to the
/// characters is [`Secret::expose_secret`], so every place that shows one is
/// easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a string is not a well-formed token. Never carries the string itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    /// Nothing was presented.
    #[error("the token is empty")]
    Empty,
    /// It does not start with [`PREFIX`].
    #[error("the token does not start with `{PREFIX}`")]
    Prefix,
    /// It has the wrong length (this many characters).
    #[error("the token has {0} characters, a service token has {TOKEN_LEN}")]
    Length(usize),
    /// A character outside A-Z, a-z, 0-9 follows the prefix.
    #[error("the token contains a character outside A-Z, a-z, 0-9")]
    Alphabet,
    /// The checksum does not match: mistyped or truncated.
    #[error("the token's checksum does not match (mistyped or truncated?)")]
    Checksum,
}

impl MalformedToken {
    /// The reasons whose text is fixed: every reason but `Length`, which
    /// names a number. None ever carries the presented string.
    pub const FIXED: [MalformedToken; 4] = [
        MalformedToken::Empty,
        MalformedToken::Prefix,
        MalformedToken::Alphabet,
        MalformedToken::Checksum,
    ];
}

impl Secret {
    /// Draws a new token from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub fn generate() -> Secret {
        let mut token = String::with_capacity(TOKEN_LEN);
        token.push_str(PREFIX);
        token.extend(
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(BODY_LEN)
                .map(char::from),
        );
        token.extend(checksum(&token).map(char::from));
        Secret(token)
    }

    /// Checks shape and checksum; touches no store.
    pub fn parse(presented: &str) -> Result<Secret, MalformedToken> {
        check(presented)?;
        Ok(Secret(presented.to_owned()))
    }

    /// The secret itself, for the one response that hands it out.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The at-rest form of this token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::digest(&self.0)
    }
}

/// Prefix, length, alphabet and checksum of a presented token.
fn check(presented: &str) -> Result<(), MalformedToken> {
    if presented.is_empty() {
        return Err(MalformedToken::Empty);
    }
    let Some(rest) = presented.strip_prefix(PREFIX) else {
        return Err(MalformedToken::Prefix);
    };
    if presented.len() != TOKEN_LEN {
        return Err(MalformedToken::Length(presented.chars().count()));
    }
    // Every byte looked at, without a branch per byte: the compiler
    // vectorises this, where `all` stops at each one.
    let alphanumeric = rest.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_digit() | b.is_ascii_uppercase() | b.is_ascii_lowercase())
    });
    if !alphanumeric {
        return Err(MalformedToken::Alphabet);
    }
    let (payload, given) = presented.split_at(TOKEN_LEN - CHECKSUM_LEN);
    // The checksum is a public function of the token, so an early-exit
    // compare here leaks nothing that is not already public.
    if checksum(payload) != given.as_bytes() {
        return Err(MalformedToken::Checksum);
    }
    Ok(())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The base62 digits of the payload's CRC-32, most significant first.
fn checksum(payload: &str) -> [u8; CHECKSUM_LEN] {
    let mut crc = u64::from(crc32fast::hash(payload.as_bytes()));
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    digits
}

/// SHA-256 of a token: the key the store finds a token by. A token carries
/// 256 random bits, so a fast unsalted hash is enough (no password stretching
/// needed) and keeps validation a single lookup.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a presented token, if it is well-formed. What validation
    /// uses: it checks and hashes without copying the secret.
    pub fn of_presented(presented: &str) -> Result<TokenHash, MalformedToken> {
        check(presented)?;
        Ok(TokenHash::digest(presented))
    }

    fn digest(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// A hash as stored, if `bytes` are 32 long.
    pub fn from_bytes(bytes: &[u8]) -> Option<TokenHash> {
        bytes.try_into().ok().map(TokenHash)
    }

    /// The 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time: use this, not `==`, wherever a hash found
    /// through an index is checked against the presented one.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        for _ in 0..100 {
            let token = Secret::generate();
            assert_eq!(token.expose_secret().len(), TOKEN_LEN);
            assert!(token.expose_secret().starts_with(PREFIX));
            assert_eq!(Secret::parse(token.expose_secret()), Ok(token));
        }
    }

    #[test]
    fn generated_tokens_differ() {
        assert_ne!(Secret::generate(), Secret::generate());
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let token = Secret::generate();
        let original = token.expose_secret().as_bytes().to_vec();
        for i in PREFIX.len()..original.len() {
            for &replacement in BASE62 {
                if replacement == original[i] {
                    continue;
                }
                let mut typo = original.clone();
                typo[i] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(Secret::parse(&typo), Err(MalformedToken::Checksum), "{i}");
            }
        }
    }

    #[test]
    fn malformed_tokens_say_why() {
        let token = Secret::generate();
        let s = token.expose_secret();
        assert_eq!(Secret::parse(""), Err(MalformedToken::Empty));
        assert_eq!(Secret::parse(&s[1..]), Err(MalformedToken::Prefix));
        assert_eq!(
            Secret::parse(&s[..s.len() - 1]),
            Err(MalformedToken::Length(TOKEN_LEN - 1))
        );
        assert_eq!(
            Secret::parse(&format!("{s}x")),
            Err(MalformedToken::Length(TOKEN_LEN + 1))
        );
        let mut with_dash = s.to_owned();
        with_dash.replace_range(10..11, "-");
        assert_eq!(Secret::parse(&with_dash), Err(MalformedToken::Alphabet));
        // Multi-byte characters must not panic on the byte-index split.
        let mut with_umlaut = s[..TOKEN_LEN - 2].to_owned();
        with_umlaut.push('é');
        assert_eq!(Secret::parse(&with_umlaut), Err(MalformedToken::Alphabet));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let token = Secret::generate();
        let shown = format!("{token:?} {:?}", token.hash());
        assert!(!shown.contains(&token.expose_secret()[PREFIX.len()..]));
        assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn presented_tokens_hash_like_parsed_ones_and_malformed_ones_do_not() {
        let token = Secret::generate();
        assert_eq!(
            TokenHash::of_presented(token.expose_secret()),
            Ok(token.hash())
        );
        assert_eq!(
            TokenHash::of_presented("svctok-x"),
            Err(MalformedToken::Length(8))
        );
    }

    #[test]
    fn hash_is_sha256_of_the_whole_token() {
        let token = Secret::generate();
        let expected: [u8; 32] = Sha256::digest(token.expose_secret()).into();
        assert_eq!(token.hash().as_bytes(), &expected);
        assert!(token.hash().ct_eq(&token.hash()));
        assert!(!token.hash().ct_eq(&Secret::generate().hash()));
    }
}
