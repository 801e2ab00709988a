//! A token's fields, each a newtype built by a `parse` that says which
//! field is wrong and why, and the request times they are given in.

use std::{collections::BTreeMap, fmt, time::SystemTime};

use rand::Rng;

use crate::{
    clock::{MAX_UNIX_SECONDS, MIN_UNIX_SECONDS},
    text::{MAX_COMBINING_MARKS, is_format, is_misleading, longest_mark_run},
};

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest role accepted, in characters.
pub const MAX_ROLE_CHARS: usize = 64;
/// Most roles one token may carry.
pub const MAX_ROLES: usize = 32;
/// Ids stay below 2^53 so they survive JSON numbers (JavaScript, jq).
pub const MAX_ID: u64 = (1 << 53) - 1;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most labels one token may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label value accepted, in characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;
/// Kubernetes' limits on a label key's name and prefix.
const MAX_LABEL_NAME: usize = 63;
const MAX_LABEL_PREFIX: usize = 253;

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
        if name.0.chars().any(is_misleading) {
            return Err(FieldError::new(
                "name",
                "must not contain line separators, spaces other than U+0020, blank-looking, private-use or unassigned characters",
            ));
        }
        if longest_mark_run(&name.0) > MAX_COMBINING_MARKS {
            return Err(FieldError::new(
                "name",
                format!(
                    "must not stack more than {MAX_COMBINING_MARKS} combining marks on one character"
                ),
            ));
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

/// The roles a route requires, from comma-separated lists (`a,b`, spaces
/// around items ignored), every one of them required, each once. A bad item
/// is an error naming `field`: a misconfigured route fails closed.
pub fn required_roles<'a>(
    field: &str,
    lists: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Role>, FieldError> {
    let mut roles = Vec::new();
    for list in lists {
        for role in list.split(',') {
            let role = Role::parse(role.trim_matches(' '))
                .map_err(|e| FieldError::new(field, e.problem))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
    }
    Ok(roles)
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

/// Free text about a token: at most [`MAX_DESCRIPTION_CHARS`] characters,
/// no control or format characters (it is shown in tables and logs). Empty
/// is no description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(text: &str) -> Result<Description, FieldError> {
        check_text(text, MAX_DESCRIPTION_CHARS)
            .map_err(|problem| FieldError::new("description", problem))?;
        Ok(Description(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The problem with a piece of displayed text, if any.
pub(super) fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(format!(
            "is {chars} characters long, at most {max_chars} are allowed"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if text.chars().any(is_format) {
        return Err(
            "must not contain invisible Unicode format characters (bidi controls, zero-width characters)"
                .into(),
        );
    }
    Ok(())
}

/// Key-value labels: at most [`MAX_LABELS`], keys in Kubernetes label-key
/// syntax (`[prefix/]name`), values up to [`MAX_LABEL_VALUE_CHARS`]
/// characters of displayable text. Kept in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse<K: AsRef<str>, V: AsRef<str>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Labels, FieldError> {
        let mut parsed = BTreeMap::new();
        for (key, value) in labels {
            let (key, value) = (key.as_ref(), value.as_ref());
            let field = || format!("labels[{key:?}]");
            check_label_key(key).map_err(|problem| {
                FieldError::new(
                    if key.chars().any(|c| c.is_control() || is_format(c)) {
                        "labels".to_owned()
                    } else {
                        field()
                    },
                    format!("key {problem}"),
                )
            })?;
            check_text(value, MAX_LABEL_VALUE_CHARS)
                .map_err(|problem| FieldError::new(field(), format!("value {problem}")))?;
            parsed.insert(key.to_owned(), value.to_owned());
        }
        if parsed.len() > MAX_LABELS {
            return Err(FieldError::new(
                "labels",
                format!(
                    "{} labels given, at most {MAX_LABELS} are allowed",
                    parsed.len()
                ),
            ));
        }
        Ok(Labels(parsed))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// How an edit changes a token's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    /// The whole set, as given.
    Replace(Labels),
    /// Keys set and keys removed, merged into the labels the token has
    /// when the store applies the change (under its lock), so concurrent
    /// merges of different keys all land.
    Merge {
        set: Labels,
        remove: std::collections::BTreeSet<String>,
    },
}

impl LabelEdit {
    /// The labels `current` has after this edit. A merge may leave more
    /// than [`MAX_LABELS`]; [`Change::check`] refuses that.
    pub(super) fn apply(&self, current: &Labels) -> Labels {
        match self {
            LabelEdit::Replace(labels) => labels.clone(),
            LabelEdit::Merge { set, remove } => {
                let mut merged = current.0.clone();
                merged.retain(|key, _| !remove.contains(key));
                merged.extend(set.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                Labels(merged)
            }
        }
    }
}

impl fmt::Display for Labels {
    /// `k=v,k=v`: keys hold no `=` or `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Kubernetes' label-key syntax: an optional DNS-subdomain prefix and `/`,
/// then a name of 1 to 63 characters of `A-Z a-z 0-9 - _ .` that starts and
/// ends alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let subdomain = !prefix.is_empty()
            && prefix.len() <= MAX_LABEL_PREFIX
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !subdomain {
            return Err(format!(
                "prefix {prefix:?} is not a DNS subdomain (lower-case a-z 0-9 - and dots, at most {MAX_LABEL_PREFIX} characters)"
            ));
        }
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = !name.is_empty()
        && name.len() <= MAX_LABEL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last());
    if !valid {
        return Err(format!(
            "must be a Kubernetes label key: [prefix/]name, the name 1 to {MAX_LABEL_NAME} characters of A-Z a-z 0-9 - _ . starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A point in time given as seconds and nanoseconds since the Unix epoch,
/// refused (not normalized) when out of protobuf's Timestamp range, so a
/// client bug is seen instead of silently reinterpreted; kept to the
/// microsecond, the precision of every store (see [`crate::clock::to_micros`]).
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
    crate::clock::from_unix(seconds, nanos.unsigned_abs())
        .map(crate::clock::to_micros)
        .ok_or_else(|| FieldError::new(field, "is not a representable time"))
}

/// A point in time given as milliseconds since the Unix epoch (StackState's
/// JSON), with the same range as [`parse_time`].
pub fn parse_epoch_millis(field: &str, millis: i64) -> Result<SystemTime, FieldError> {
    // rem_euclid keeps the sub-second part in 0..1000 for times before 1970.
    let nanos = (millis.rem_euclid(1000) * 1_000_000) as i32;
    parse_time(field, millis.div_euclid(1000), nanos)
}
