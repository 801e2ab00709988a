//! The domain values the service works with, each built by a `parse` that
//! says which field is wrong and why, so handlers only ever see valid values.

use std::{fmt, time::SystemTime};

use rand::Rng;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::token::TokenHash;

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest role accepted, in characters.
pub const MAX_ROLE_CHARS: usize = 64;
/// Most roles one token may carry.
pub const MAX_ROLES: usize = 32;
/// Ids stay below 2^53 so they survive JSON numbers (JavaScript, jq).
pub const MAX_ID: u64 = (1 << 53) - 1;

/// A request field that is not acceptable, and why. The message never echoes
/// a secret: token fields only report their shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A service token's id: positive, at most [`MAX_ID`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(u64);

impl TokenId {
    pub fn parse(id: u64) -> Result<TokenId, FieldError> {
        match id {
            0 => Err(FieldError::new("id", "is required (ids are positive)")),
            1..=MAX_ID => Ok(TokenId(id)),
            _ => Err(FieldError::new(
                "id",
                format!("{id} is out of range (ids are at most {MAX_ID})"),
            )),
        }
    }

    /// A fresh id, uniformly drawn: unguessable, and unique across replicas
    /// with overwhelming probability (the store still checks).
    pub fn random() -> TokenId {
        TokenId(rand::rng().random_range(1..=MAX_ID))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `c` is a Unicode format character (general category Cf), the
/// class that holds every bidi control and zero-width character.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// A token's human-readable name: trimmed, non-empty, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenName(String);

impl TokenName {
    /// A name for a new (or renamed) token. Besides the rules every stored
    /// name obeys, it must not hold Unicode format characters (general
    /// category Cf: bidi overrides and isolates, zero-width spaces and
    /// joiners, the BOM...): they make a name read on screen as another one,
    /// or as nothing at all.
    pub fn parse(name: &str) -> Result<TokenName, FieldError> {
        let name = TokenName::read_back(name)?;
        if name.0.chars().any(is_format) {
            let visible = name
                .0
                .chars()
                .filter(|&c| !is_format(c))
                .collect::<String>();
            let problem = if visible.trim().is_empty() {
                "is empty once its invisible format characters are removed"
            } else {
                "must not contain invisible Unicode format characters (bidi controls, zero-width characters)"
            };
            return Err(FieldError::new("name", problem));
        }
        Ok(name)
    }

    /// A name as earlier releases accepted it: trimmed, 1 to
    /// [`MAX_NAME_CHARS`] characters, no control characters. Tokens stored
    /// before format characters were refused keep working; the CLI escapes
    /// those characters when it prints such a name.
    pub fn read_back(name: &str) -> Result<TokenName, FieldError> {
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err(FieldError::new("name", "is required"));
        }
        if chars > MAX_NAME_CHARS {
            return Err(FieldError::new(
                "name",
                format!("is {chars} characters long, at most {MAX_NAME_CHARS} are allowed"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(TokenName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role name: 1 to [`MAX_ROLE_CHARS`] characters of `A-Z a-z 0-9 . _ : -`.
/// No spaces or commas, so a role list survives a comma-separated header and
/// the CLI's `[a b]` rendering unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role(String);

impl Role {
    pub fn parse(role: &str) -> Result<Role, FieldError> {
        Self::check(role).map_err(|problem| FieldError::new("role", problem))
    }

    /// The problem with `role`, if any; the caller names the field, so the
    /// success path (every Validate re-reads stored roles) allocates nothing extra.
    fn check(role: &str) -> Result<Role, String> {
        if role.is_empty() {
            return Err("must not be empty".into());
        }
        if role.len() > MAX_ROLE_CHARS {
            return Err(format!("must be at most {MAX_ROLE_CHARS} characters"));
        }
        if let Some(bad) = role
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "contains {bad:?}; roles use only A-Z a-z 0-9 . _ : -"
            ));
        }
        Ok(Role(role.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// At least one role, at most [`MAX_ROLES`], without duplicates, in the order
/// first given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Roles {
    pub fn parse<S: AsRef<str>>(roles: &[S]) -> Result<Roles, FieldError> {
        if roles.is_empty() {
            return Err(FieldError::new("roles", "at least one role is required"));
        }
        let mut parsed: Vec<Role> = Vec::with_capacity(roles.len());
        for (i, role) in roles.iter().enumerate() {
            let role = Role::check(role.as_ref())
                .map_err(|problem| FieldError::new(format!("roles[{i}]"), problem))?;
            if !parsed.contains(&role) {
                parsed.push(role);
            }
        }
        if parsed.len() > MAX_ROLES {
            return Err(FieldError::new(
                "roles",
                format!(
                    "{} roles given, at most {MAX_ROLES} are allowed",
                    parsed.len()
                ),
            ));
        }
        Ok(Roles(parsed))
    }

    pub fn contains(&self, role: &Role) -> bool {
        self.0.contains(role)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.iter()
    }
}

impl fmt::Display for Roles {
    /// Comma-separated: roles hold no commas, so this reads back unambiguously.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, role) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(role.as_str())?;
        }
        Ok(())
    }
}

/// The range protobuf's Timestamp allows: 0001-01-01 to 9999-12-31 (UTC).
const MIN_UNIX_SECONDS: i64 = -62_135_596_800;
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// A point in time given as seconds and nanoseconds since the Unix epoch,
/// refused (not normalized) when out of protobuf's Timestamp range, so a
/// client bug is seen instead of silently reinterpreted.
pub fn parse_time(field: &str, seconds: i64, nanos: i32) -> Result<SystemTime, FieldError> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(FieldError::new(field, "nanos must be within 0..1000000000"));
    }
    if !(MIN_UNIX_SECONDS..=MAX_UNIX_SECONDS).contains(&seconds) {
        return Err(FieldError::new(
            field,
            "must lie between the years 1 and 9999",
        ));
    }
    let whole = std::time::Duration::from_secs(seconds.unsigned_abs());
    let second = if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)
    };
    // Nanos count forward from the second, before 1970 too (-1.5 s is
    // seconds -2, nanos 500000000), as in protobuf's Timestamp.
    second
        .and_then(|second| second.checked_add(std::time::Duration::from_nanos(nanos as u64)))
        .ok_or_else(|| FieldError::new(field, "is not a representable time"))
}

/// A point in time given as milliseconds since the Unix epoch (StackState's
/// JSON), with the same range as [`parse_time`].
pub fn parse_epoch_millis(field: &str, millis: i64) -> Result<SystemTime, FieldError> {
    // rem_euclid keeps the sub-second part in 0..1000 for times before 1970.
    let nanos = (millis.rem_euclid(1000) * 1_000_000) as i32;
    parse_time(field, millis.div_euclid(1000), nanos)
}

/// What a token is, minus its secret: what `List` shows and `Validate` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceToken {
    pub id: TokenId,
    pub name: TokenName,
    pub roles: Roles,
    /// `None` never expires.
    pub expiration: Option<SystemTime>,
    pub created_at: SystemTime,
}

impl ServiceToken {
    /// The token `new` becomes once stored under `id`.
    pub fn new(id: TokenId, new: &NewToken, created_at: SystemTime) -> ServiceToken {
        ServiceToken {
            id,
            name: new.name.clone(),
            roles: new.roles.clone(),
            expiration: new.expiration,
            created_at,
        }
    }

    /// Expired from the expiration instant on.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|expiration| now >= expiration)
    }
}

/// A valid request for a new token. Whether `expiration` lies in the future
/// depends on the clock, so the service checks that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: TokenName,
    pub roles: Roles,
    pub expiration: Option<SystemTime>,
}

impl NewToken {
    /// What every transport (and `bootstrap`) makes of a request's fields.
    /// Times come already parsed: each transport has its own time format.
    pub fn parse<S: AsRef<str>>(
        name: &str,
        roles: &[S],
        expiration: Option<SystemTime>,
    ) -> Result<NewToken, FieldError> {
        Ok(NewToken {
            name: TokenName::parse(name)?,
            roles: Roles::parse(roles)?,
            expiration,
        })
    }
}

impl NewToken {
    /// The first admin token: it always carries `admin_role`, whatever
    /// `extra_roles` says (that is the whole point of it), and never expires.
    pub fn bootstrap<S: AsRef<str>>(
        name: &str,
        admin_role: &Role,
        extra_roles: &[S],
    ) -> Result<NewToken, FieldError> {
        // The extra roles are checked as given, so an error names the
        // position the operator typed.
        if !extra_roles.is_empty() {
            Roles::parse(extra_roles)?;
        }
        let roles: Vec<&str> = std::iter::once(admin_role.as_str())
            .chain(extra_roles.iter().map(AsRef::as_ref))
            .collect();
        NewToken::parse(name, &roles, None)
    }
}

/// A token as a store holds it: its description and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: ServiceToken,
    pub hash: TokenHash,
}

/// A stored token's fields as a backend or an export reads them back, not
/// yet checked. Times come already converted: each format has its own.
#[derive(Debug, Clone, Copy)]
pub struct StoredParts<'a> {
    pub id: u64,
    pub hash: &'a [u8],
    pub name: &'a str,
    pub roles: &'a [String],
    pub expiration: Option<SystemTime>,
    pub created_at: SystemTime,
}

impl StoredToken {
    /// The one way back from storage: every field re-parsed, so a damaged
    /// record is refused (and reported) alike by every backend and by import.
    pub fn from_parts(parts: StoredParts<'_>) -> Result<StoredToken, FieldError> {
        let hash = TokenHash::from_bytes(parts.hash)
            .ok_or_else(|| FieldError::new("token_hash", "is not a SHA-256 hash (32 bytes)"))?;
        Ok(StoredToken {
            token: ServiceToken {
                id: TokenId::parse(parts.id)?,
                name: TokenName::read_back(parts.name)?,
                roles: Roles::parse(parts.roles)?,
                expiration: parts.expiration,
                created_at: parts.created_at,
            },
            hash,
        })
    }

    /// `self`, if its hash is `hash` (compared in constant time). A lookup by
    /// hash that lands on another token's record is corruption, never a
    /// match: the store reports `None` as such.
    pub fn verified(self, hash: &TokenHash) -> Option<StoredToken> {
        self.hash.ct_eq(hash).then_some(self)
    }
}

#[cfg(test)]
impl StoredToken {
    /// A fresh token and its record, for unit tests.
    pub(crate) fn sample() -> (crate::token::Token, StoredToken) {
        let token = crate::token::Token::generate();
        let new = NewToken::parse("t", &["r"], None).unwrap();
        let stored = StoredToken {
            token: ServiceToken::new(TokenId::random(), &new, SystemTime::now()),
            hash: token.hash(),
        };
        (token, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_and_json_safe() {
        assert_eq!(TokenId::parse(0).unwrap_err().field, "id");
        assert!(TokenId::parse(MAX_ID + 1).is_err());
        assert_eq!(TokenId::parse(MAX_ID).unwrap().get(), MAX_ID);
        for _ in 0..1000 {
            let id = TokenId::random().get();
            assert!((1..=MAX_ID).contains(&id));
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(TokenName::parse("  ci  ").unwrap().as_str(), "ci");
        assert_eq!(TokenName::parse(" \t ").unwrap_err().problem, "is required");
        assert!(TokenName::parse(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(TokenName::parse(&"é".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(TokenName::parse("a\nb").is_err());
        for spoof in [
            "evil\u{202e}gnp.exe",
            "a\u{200b}b",
            "\u{2066}x\u{2069}",
            "\u{feff}ci",
        ] {
            assert_eq!(
                TokenName::parse(spoof).unwrap_err().problem,
                "must not contain invisible Unicode format characters (bidi controls, zero-width characters)",
                "{spoof:?}"
            );
            // Stored by an earlier release: still read back.
            assert!(TokenName::read_back(spoof).is_ok());
        }
        for invisible in ["\u{200b}", " \u{200b}\u{200d} ", "\u{202e}"] {
            assert_eq!(
                TokenName::parse(invisible).unwrap_err().problem,
                "is empty once its invisible format characters are removed"
            );
        }
        assert!(TokenName::parse("caf\u{e9} \u{1f600}").is_ok());
    }

    #[test]
    fn a_bootstrap_token_always_carries_the_admin_role() {
        let admin = Role::parse("admin").unwrap();
        let roles = |extra: &[&str]| {
            let new = NewToken::bootstrap("b", &admin, extra).unwrap();
            new.roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(roles(&[]), ["admin"]);
        assert_eq!(roles(&["reader"]), ["admin", "reader"]);
        assert_eq!(roles(&["reader", "admin"]), ["admin", "reader"]);
        let error = NewToken::bootstrap("b", &admin, &["a b"]).unwrap_err();
        assert_eq!(error.field, "roles[0]");
    }

    #[test]
    fn roles_need_one_and_a_sane_alphabet() {
        assert_eq!(
            Roles::parse::<&str>(&[]).unwrap_err().field,
            "roles".to_owned()
        );
        let err = Roles::parse(&["ok", "has space"]).unwrap_err();
        assert_eq!(err.field, "roles[1]");
        assert!(err.problem.contains("' '"), "{err}");
        assert_eq!(Roles::parse(&["a", ""]).unwrap_err().field, "roles[1]");
        assert!(Roles::parse(&["a,b"]).is_err());
        assert!(Roles::parse(&["x".repeat(MAX_ROLE_CHARS + 1)]).is_err());
        let too_many: Vec<String> = (0..=MAX_ROLES).map(|i| format!("r{i}")).collect();
        assert!(Roles::parse(&too_many).is_err());
    }

    #[test]
    fn a_record_verifies_only_against_its_own_hash() {
        let (token, stored) = StoredToken::sample();
        assert_eq!(stored.clone().verified(&token.hash()), Some(stored.clone()));
        let other = crate::token::Token::generate().hash();
        assert_eq!(stored.verified(&other), None);
    }

    #[test]
    fn stored_parts_are_parsed_like_requests() {
        let (_, stored) = StoredToken::sample();
        let roles = vec!["r".to_owned()];
        let parts = StoredParts {
            id: stored.token.id.get(),
            hash: stored.hash.as_bytes(),
            name: "t",
            roles: &roles,
            expiration: None,
            created_at: stored.token.created_at,
        };
        assert_eq!(StoredToken::from_parts(parts).unwrap(), stored);
        let short = StoredParts {
            hash: &[0; 31],
            ..parts
        };
        assert_eq!(
            StoredToken::from_parts(short).unwrap_err().field,
            "token_hash"
        );
        let unnamed = StoredParts { name: " ", ..parts };
        assert_eq!(StoredToken::from_parts(unnamed).unwrap_err().field, "name");
        let no_id = StoredParts { id: 0, ..parts };
        assert_eq!(StoredToken::from_parts(no_id).unwrap_err().field, "id");
    }

    #[test]
    fn epoch_millis_keep_their_sub_second_part_either_side_of_1970() {
        let epoch = SystemTime::UNIX_EPOCH;
        let ms = std::time::Duration::from_millis;
        assert_eq!(parse_epoch_millis("t", 1_500).unwrap(), epoch + ms(1_500));
        assert_eq!(parse_epoch_millis("t", -1_500).unwrap(), epoch - ms(1_500));
        assert!(parse_epoch_millis("t", i64::MAX).is_err());
    }

    #[test]
    fn duplicate_roles_collapse_in_order() {
        let roles = Roles::parse(&["b", "a", "b"]).unwrap();
        let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(roles.contains(&Role::parse("a").unwrap()));
    }
}
