//! The domain values the service works with, each built by a `parse` that
//! says which field is wrong and why, so handlers only ever see valid values.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, SystemTime},
};

use rand::Rng;

use crate::{
    clock::{MAX_UNIX_SECONDS, MIN_UNIX_SECONDS},
    text::{MAX_COMBINING_MARKS, is_format, is_misleading, longest_mark_run},
    token::TokenHash,
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
/// Longest `created_by` read back (an id, a name, punctuation).
const MAX_CREATED_BY_CHARS: usize = MAX_NAME_CHARS + 24;

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
fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
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
    fn apply(&self, current: &Labels) -> Labels {
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
    pub description: Description,
    pub labels: Labels,
    pub disabled: bool,
    /// The last recorded use of either secret; `None`: none since tracking began.
    pub last_used_at: Option<SystemTime>,
    /// `"<id> (<name>)"` of the creating admin token, `"bootstrap"`, or empty
    /// for tokens made before it was recorded.
    pub created_by: String,
    /// The last change by an update or a rotation; `created_at` until then.
    pub updated_at: SystemTime,
    /// A secret rotated out and still (or lately) in its grace period.
    pub previous_secret: Option<PreviousSecret>,
}

/// A checksum of what a token's managers set (AIP-154, an HTTP entity
/// tag): a client sends it back with a change to make the change only if
/// nobody changed the token since it read it. Strong, quoted on the wire
/// (`"<32 hex digits>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag([u8; ETAG_HEX / 2]);

/// Hex digits in an etag.
const ETAG_HEX: usize = 32;

impl Etag {
    /// The etag of `token` as it stands. Uses are left out (a busy token
    /// would otherwise never let anyone change it), and so is the previous
    /// secret (a rotation moves `updated_at`; its grace ending is time
    /// passing, not a change).
    pub fn of(token: &ServiceToken) -> Etag {
        use sha2::{Digest, Sha256};
        let ServiceToken {
            id,
            name,
            roles,
            expiration,
            created_at,
            description,
            labels,
            disabled,
            last_used_at: _,
            created_by,
            updated_at,
            previous_secret: _,
        } = token;
        let mut hash = Sha256::new();
        // Every text length-prefixed, every option tagged: no two tokens
        // frame to the same bytes.
        let mut text = |t: &str| {
            hash.update((t.len() as u64).to_be_bytes());
            hash.update(t.as_bytes());
        };
        text(name.as_str());
        text(description.as_str());
        text(created_by);
        for role in roles.iter() {
            text(role.as_str());
        }
        text("");
        for (key, value) in labels.iter() {
            text(key);
            text(value);
        }
        let micros = |t: &SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_micros() as i128,
            Err(e) => -(e.duration().as_micros() as i128),
        };
        hash.update(id.get().to_be_bytes());
        hash.update([u8::from(*disabled), u8::from(expiration.is_some())]);
        hash.update(expiration.as_ref().map_or(0, micros).to_be_bytes());
        hash.update(micros(created_at).to_be_bytes());
        hash.update(micros(updated_at).to_be_bytes());
        let digest = hash.finalize();
        let mut etag = [0; ETAG_HEX / 2];
        etag.copy_from_slice(&digest[..ETAG_HEX / 2]);
        Etag(etag)
    }

    /// An etag as a client sends it back: quoted as served, or without the
    /// quotes (a shell eats them). A weak tag (`W/"…"`) never matches a
    /// strong one, so it is refused rather than left to fail later.
    pub fn parse(field: &str, text: &str) -> Result<Etag, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                format!("must be an etag as the server gave it: {ETAG_HEX} hex digits in quotes"),
            )
        };
        let text = text.trim();
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        let mut etag = [0; ETAG_HEX / 2];
        hex::decode_to_slice(inner, &mut etag).map_err(|_| bad())?;
        Ok(Etag(etag))
    }

    /// Whether `token` is still as this etag saw it.
    pub fn matches(&self, token: &ServiceToken) -> bool {
        *self == Etag::of(token)
    }
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", hex::encode(self.0))
    }
}

/// The secret a rotation replaced, while it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousSecret {
    /// It works until then (never past the token's own expiration).
    pub expiration: SystemTime,
    pub last_used_at: Option<SystemTime>,
}

/// Which of a token's secrets was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    Current,
    /// The one a rotation replaced, in its grace period.
    Previous,
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
            description: new.description.clone(),
            labels: new.labels.clone(),
            disabled: false,
            last_used_at: None,
            created_by: new.created_by.clone(),
            updated_at: created_at,
            previous_secret: None,
        }
    }

    /// Expired from the expiration instant on.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|expiration| now >= expiration)
    }

    /// Whether this token lets its holder manage tokens at `now`.
    pub fn is_admin_at(&self, admin_role: &Role, now: SystemTime) -> bool {
        !self.disabled && self.roles.contains(admin_role) && !self.is_expired_at(now)
    }

    /// As shown at `now`: a previous secret whose grace period is over is
    /// no longer mentioned.
    pub fn seen_at(mut self, now: SystemTime) -> ServiceToken {
        if self.previous_secret.is_some_and(|p| now >= p.expiration) {
            self.previous_secret = None;
        }
        self
    }
}

/// What a change does to the last admin token, under the rule: no change
/// may leave no enabled admin token valid at `horizon` (now plus the
/// admin keep margin). `after` is `None` for a delete. Returns what the change would have done
/// (for the refusal) when it takes `before`'s admin access below the
/// margin and makes it shorter than it was; whether another token keeps
/// access through the margin is the store's to check. A change that leaves
/// a token's admin access as long as it was (a rename of an admin that
/// expires soon anyway) is never refused.
pub fn takes_admin_away(
    before: &ServiceToken,
    after: Option<&ServiceToken>,
    admin_role: &Role,
    now: SystemTime,
    horizon: SystemTime,
) -> Option<&'static str> {
    let had = AdminUntil::of(before, admin_role, now)?;
    let has = after.and_then(|after| AdminUntil::of(after, admin_role, now));
    let keeps = match has {
        Some(AdminUntil::Ever) => true,
        Some(AdminUntil::Until(end)) => end > horizon,
        None => false,
    };
    if keeps || has >= Some(had) {
        return None;
    }
    let Some(after) = after else {
        return Some("deleting");
    };
    if after.disabled {
        return Some("disabling");
    }
    if !after.roles.contains(admin_role) {
        return Some("removing the admin role from");
    }
    Some("letting expire")
}

/// How long a token lets its holder manage tokens, from a moment when it
/// does: ordered, so a change can be told to shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AdminUntil {
    Until(SystemTime),
    Ever,
}

impl AdminUntil {
    /// `None`: not an admin token at `now`.
    fn of(token: &ServiceToken, admin_role: &Role, now: SystemTime) -> Option<AdminUntil> {
        if !token.is_admin_at(admin_role, now) {
            return None;
        }
        Some(token.expiration.map_or(AdminUntil::Ever, AdminUntil::Until))
    }
}

/// A change to a token's fields (an update): `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub name: Option<TokenName>,
    pub roles: Option<Roles>,
    /// `Some(None)` removes the expiration.
    pub expiration: Option<Option<SystemTime>>,
    pub description: Option<Description>,
    pub labels: Option<LabelEdit>,
    pub disabled: Option<bool>,
}

/// One field an edit changed, with its old and new values as shown in the
/// audit log (no field holds a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        *self == Edit::default()
    }

    /// `token` with this edit applied at `at`.
    pub fn apply(&self, token: &ServiceToken, at: SystemTime) -> ServiceToken {
        let mut edited = token.clone();
        if let Some(name) = &self.name {
            edited.name = name.clone();
        }
        if let Some(roles) = &self.roles {
            edited.roles = roles.clone();
        }
        if let Some(expiration) = self.expiration {
            edited.expiration = expiration;
        }
        if let Some(description) = &self.description {
            edited.description = description.clone();
        }
        if let Some(labels) = &self.labels {
            edited.labels = labels.apply(&token.labels);
        }
        if let Some(disabled) = self.disabled {
            edited.disabled = disabled;
        }
        edited.updated_at = at;
        edited
    }

    /// The fields that differ between `before` and `after`, in a fixed order.
    pub fn changes(before: &ServiceToken, after: &ServiceToken) -> Vec<FieldChange> {
        let time = |t: Option<SystemTime>| {
            t.map_or_else(|| "never".to_owned(), crate::clock::rfc3339_micros)
        };
        let candidates = [
            ("name", before.name.to_string(), after.name.to_string()),
            ("roles", before.roles.to_string(), after.roles.to_string()),
            (
                "expiration",
                time(before.expiration),
                time(after.expiration),
            ),
            (
                "description",
                before.description.as_str().to_owned(),
                after.description.as_str().to_owned(),
            ),
            (
                "labels",
                before.labels.to_string(),
                after.labels.to_string(),
            ),
            (
                "disabled",
                before.disabled.to_string(),
                after.disabled.to_string(),
            ),
        ];
        candidates
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(field, old, new)| FieldChange { field, old, new })
            .collect()
    }
}

/// A change a store applies to one token, under the lockout rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit(Edit),
    /// A new secret; the current one becomes the previous secret until
    /// `previous_until` (capped at the token's expiration), or ends now
    /// when that is not later than the change.
    Rotate {
        hash: TokenHash,
        previous_until: SystemTime,
    },
}

impl Change {
    /// Whether `after`, what this change made, is a token the rules allow:
    /// only a label merge can break one (more than [`MAX_LABELS`] once
    /// merged with what the token had). Stores check it under the lock
    /// they apply the change under.
    pub fn check(&self, after: &ServiceToken) -> Result<(), FieldError> {
        match self {
            Change::Edit(Edit {
                labels: Some(LabelEdit::Merge { .. }),
                ..
            }) => Labels::parse(after.labels.iter()).map(|_| ()),
            Change::Edit(_) | Change::Rotate { .. } => Ok(()),
        }
    }

    /// Whether this change may be made on a disk below its reserve: a
    /// disable only, the one change that takes access away (as a delete
    /// does) and must never wait for space. Everything else may grow the
    /// store and is held to the reserve.
    pub fn may_use_the_reserve(&self) -> bool {
        match self {
            Change::Edit(Edit {
                name: None,
                roles: None,
                expiration: None,
                description: None,
                labels: None,
                disabled: Some(true),
            }) => true,
            Change::Edit(_) | Change::Rotate { .. } => false,
        }
    }

    /// Whether this change, having made `after` of `before`, changes
    /// nothing a client can see: an edit that sets every field to what it
    /// was. Stores then write nothing (no event, no new `updated_at`). A
    /// rotation always changes the secret.
    pub fn changes_nothing(&self, before: &ServiceToken, after: &ServiceToken) -> bool {
        matches!(self, Change::Edit(_)) && Edit::changes(before, after).is_empty()
    }

    /// `stored` with this change applied at `at`.
    pub fn apply(&self, stored: &StoredToken, at: SystemTime) -> StoredToken {
        match self {
            Change::Edit(edit) => StoredToken {
                token: edit.apply(&stored.token, at),
                hash: stored.hash,
                previous_hash: stored.previous_hash,
            },
            Change::Rotate {
                hash,
                previous_until,
            } => {
                let mut token = stored.token.clone();
                token.updated_at = at;
                let until = match token.expiration {
                    Some(expiration) => (*previous_until).min(expiration),
                    None => *previous_until,
                };
                let (previous_hash, previous_secret) = if until > at {
                    let previous = PreviousSecret {
                        expiration: until,
                        last_used_at: None,
                    };
                    (Some(stored.hash), Some(previous))
                } else {
                    (None, None)
                };
                token.previous_secret = previous_secret;
                StoredToken {
                    token,
                    hash: *hash,
                    previous_hash,
                }
            }
        }
    }
}

/// The token counts behind the metrics, at one moment: by state (expired
/// first, then disabled, else active), and of the active ones, those
/// expiring within each of [`TokenSummary::EXPIRING`] and those unused
/// (never used: since created) for each of [`TokenSummary::UNUSED`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenSummary {
    pub active: u64,
    pub disabled: u64,
    pub expired: u64,
    pub expiring: [u64; 3],
    pub unused: [u64; 2],
    /// The earliest expiration of an active token.
    pub next_expiry: Option<SystemTime>,
}

impl TokenSummary {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    /// The windows of `expiring`, with their metric labels.
    pub const EXPIRING: [(&'static str, Duration); 3] = [
        ("1d", TokenSummary::DAY),
        ("7d", Duration::from_secs(7 * 24 * 3600)),
        ("30d", Duration::from_secs(30 * 24 * 3600)),
    ];
    /// The windows of `unused`, with their metric labels.
    pub const UNUSED: [(&'static str, Duration); 2] = [
        ("30d", Duration::from_secs(30 * 24 * 3600)),
        ("90d", Duration::from_secs(90 * 24 * 3600)),
    ];

    /// Counts `token` as of `now`.
    pub fn add(&mut self, token: &ServiceToken, now: SystemTime) {
        if token.is_expired_at(now) {
            self.expired += 1;
            return;
        }
        if token.disabled {
            self.disabled += 1;
            return;
        }
        self.active += 1;
        if let Some(expiration) = token.expiration {
            self.next_expiry = Some(self.next_expiry.map_or(expiration, |n| n.min(expiration)));
            for (count, (_, window)) in self.expiring.iter_mut().zip(TokenSummary::EXPIRING) {
                if now
                    .checked_add(window)
                    .is_none_or(|until| expiration <= until)
                {
                    *count += 1;
                }
            }
        }
        let since = token.last_used_at.unwrap_or(token.created_at);
        for (count, (_, window)) in self.unused.iter_mut().zip(TokenSummary::UNUSED) {
            if now.checked_sub(window).is_some_and(|cutoff| since < cutoff) {
                *count += 1;
            }
        }
    }
}

/// What `list` shows: every filter set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub name_prefix: Option<String>,
    pub role: Option<Role>,
    /// Not used since then: last used before it, or never used and created
    /// before it (one rule with `sts_tokens_unused`: a token made a minute
    /// ago has not been unused for 90 days).
    pub unused_since: Option<SystemTime>,
    /// Expiring before then (expired included).
    pub expiring_before: Option<SystemTime>,
    pub disabled: Option<bool>,
    /// Over the maximum lifetime: never expiring, or expiring after then.
    /// The service sets it from `over_policy`; stores only read it.
    pub expiring_after: Option<SystemTime>,
    /// Asked for: tokens the lifetime policy would not allow today.
    pub over_policy: bool,
}

impl ListFilter {
    /// From a request's fields: empty text means no filter.
    pub fn parse(
        name_prefix: &str,
        role: &str,
        unused_since: Option<SystemTime>,
        expiring_before: Option<SystemTime>,
        disabled: Option<bool>,
    ) -> Result<ListFilter, FieldError> {
        if name_prefix.chars().count() > MAX_NAME_CHARS {
            return Err(FieldError::new(
                "name_prefix",
                format!("is longer than a name can be ({MAX_NAME_CHARS} characters)"),
            ));
        }
        let role = match role {
            "" => None,
            role => Some(Role::parse(role)?),
        };
        Ok(ListFilter {
            name_prefix: (!name_prefix.is_empty()).then(|| name_prefix.to_owned()),
            role,
            unused_since,
            expiring_before,
            disabled,
            expiring_after: None,
            over_policy: false,
        })
    }

    /// The same filter, also asking for tokens over the lifetime policy.
    pub fn over_policy(self, over_policy: bool) -> ListFilter {
        ListFilter {
            over_policy,
            ..self
        }
    }

    pub fn matches(&self, token: &ServiceToken) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|prefix| token.name.as_str().starts_with(prefix))
            && self
                .role
                .as_ref()
                .is_none_or(|role| token.roles.contains(role))
            && self
                .unused_since
                .is_none_or(|since| token.last_used_at.unwrap_or(token.created_at) < since)
            && self.expiring_before.is_none_or(|before| {
                token
                    .expiration
                    .is_some_and(|expiration| expiration < before)
            })
            && self
                .disabled
                .is_none_or(|disabled| token.disabled == disabled)
            && self
                .expiring_after
                .is_none_or(|after| token.expiration.is_none_or(|expiration| expiration > after))
    }
}

/// A valid request for a new token. Whether `expiration` lies in the future
/// depends on the clock, so the service checks that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: TokenName,
    pub roles: Roles,
    pub expiration: Option<SystemTime>,
    pub description: Description,
    pub labels: Labels,
    /// Set by the service, which knows the caller.
    pub created_by: String,
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
            description: Description::default(),
            labels: Labels::default(),
            created_by: String::new(),
        })
    }

    /// With a description and labels (the optional fields of a create).
    pub fn described(mut self, description: Description, labels: Labels) -> NewToken {
        self.description = description;
        self.labels = labels;
        self
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

/// A token as a store holds it: its description and the hash of its secret
/// (and of the secret a rotation replaced, while that one is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: ServiceToken,
    pub hash: TokenHash,
    /// Set exactly when `token.previous_secret` is.
    pub previous_hash: Option<TokenHash>,
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
    pub description: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub disabled: bool,
    pub last_used_at: Option<SystemTime>,
    pub created_by: &'a str,
    /// `None` in records written before updates existed: `created_at`.
    pub updated_at: Option<SystemTime>,
    pub previous_hash: Option<&'a [u8]>,
    pub previous_expiration: Option<SystemTime>,
    pub previous_last_used_at: Option<SystemTime>,
}

impl<'a> StoredParts<'a> {
    /// The fields of a record written before the token lifecycle: no
    /// description, labels, last use, creator, update or previous secret.
    pub fn first_release(
        id: u64,
        hash: &'a [u8],
        name: &'a str,
        roles: &'a [String],
        expiration: Option<SystemTime>,
        created_at: SystemTime,
    ) -> StoredParts<'a> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        StoredParts {
            id,
            hash,
            name,
            roles,
            expiration,
            created_at,
            description: "",
            labels: &NO_LABELS,
            disabled: false,
            last_used_at: None,
            created_by: "",
            updated_at: None,
            previous_hash: None,
            previous_expiration: None,
            previous_last_used_at: None,
        }
    }
}

fn parse_hash(field: &str, bytes: &[u8]) -> Result<TokenHash, FieldError> {
    TokenHash::from_bytes(bytes)
        .ok_or_else(|| FieldError::new(field, "is not a SHA-256 hash (32 bytes)"))
}

impl StoredToken {
    /// The one way back from storage: every field re-parsed, so a damaged
    /// record is refused (and reported) alike by every backend and by import.
    pub fn from_parts(parts: StoredParts<'_>) -> Result<StoredToken, FieldError> {
        let hash = parse_hash("token_hash", parts.hash)?;
        let (previous_hash, previous_secret) =
            match (parts.previous_hash, parts.previous_expiration) {
                (None, None) => (None, None),
                (Some(bytes), Some(expiration)) => {
                    let previous = PreviousSecret {
                        expiration,
                        last_used_at: parts.previous_last_used_at,
                    };
                    (Some(parse_hash("previous_hash", bytes)?), Some(previous))
                }
                _ => {
                    return Err(FieldError::new(
                        "previous_hash",
                        "and previous_expiration must be set together",
                    ));
                }
            };
        check_text(parts.created_by, MAX_CREATED_BY_CHARS)
            .map_err(|problem| FieldError::new("created_by", problem))?;
        Ok(StoredToken {
            token: ServiceToken {
                id: TokenId::parse(parts.id)?,
                name: TokenName::read_back(parts.name)?,
                roles: Roles::parse(parts.roles)?,
                expiration: parts.expiration,
                created_at: parts.created_at,
                description: Description::parse(parts.description)?,
                labels: Labels::parse(parts.labels)?,
                disabled: parts.disabled,
                last_used_at: parts.last_used_at,
                created_by: parts.created_by.to_owned(),
                updated_at: parts.updated_at.unwrap_or(parts.created_at),
                previous_secret,
            },
            hash,
            previous_hash,
        })
    }

    /// Which of this token's secrets hashes to `hash` (compared in constant
    /// time), if either.
    pub fn secret_for(&self, hash: &TokenHash) -> Option<Secret> {
        let current = self.hash.ct_eq(hash);
        let previous = self.previous_hash.is_some_and(|p| p.ct_eq(hash));
        if current {
            Some(Secret::Current)
        } else if previous {
            Some(Secret::Previous)
        } else {
            None
        }
    }

    /// Which secret `hash` is, if it still works at `now`: the current
    /// one, or the previous one within its grace period. A rotated-out
    /// secret past its grace is as gone as a deleted token's.
    pub fn live_secret_at(&self, hash: &TokenHash, now: SystemTime) -> Option<Secret> {
        match self.secret_for(hash)? {
            Secret::Current => Some(Secret::Current),
            Secret::Previous => self
                .token
                .previous_secret
                .is_some_and(|previous| now < previous.expiration)
                .then_some(Secret::Previous),
        }
    }

    /// `self`, if one of its secrets hashes to `hash`. A lookup by hash that
    /// lands on another token's record is corruption, never a match: the
    /// store reports `None` as such.
    pub fn verified(self, hash: &TokenHash) -> Option<StoredToken> {
        self.secret_for(hash).is_some().then_some(self)
    }

    /// Every hash that finds this token: the current one and the previous.
    pub fn hashes(&self) -> impl Iterator<Item = &TokenHash> {
        std::iter::once(&self.hash).chain(self.previous_hash.as_ref())
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
            previous_hash: None,
        };
        (token, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_moves_with_what_managers_set_and_not_with_use() {
        let (_, stored) = StoredToken::sample();
        let token = stored.token;
        let etag = Etag::of(&token);
        let later = token.created_at + Duration::from_secs(1);
        let changed: Vec<(&str, ServiceToken)> = vec![
            (
                "name",
                ServiceToken {
                    name: TokenName::parse("u").unwrap(),
                    ..token.clone()
                },
            ),
            (
                "roles",
                ServiceToken {
                    roles: Roles::parse(&["r", "s"]).unwrap(),
                    ..token.clone()
                },
            ),
            (
                "expiration",
                ServiceToken {
                    expiration: Some(later),
                    ..token.clone()
                },
            ),
            (
                "created_at",
                ServiceToken {
                    created_at: later,
                    ..token.clone()
                },
            ),
            (
                "description",
                ServiceToken {
                    description: Description::parse("d").unwrap(),
                    ..token.clone()
                },
            ),
            (
                "labels",
                ServiceToken {
                    labels: Labels::parse([("k", "v")]).unwrap(),
                    ..token.clone()
                },
            ),
            (
                "disabled",
                ServiceToken {
                    disabled: true,
                    ..token.clone()
                },
            ),
            (
                "created_by",
                ServiceToken {
                    created_by: "bootstrap".into(),
                    ..token.clone()
                },
            ),
            (
                "updated_at",
                ServiceToken {
                    updated_at: later,
                    ..token.clone()
                },
            ),
            (
                "id",
                ServiceToken {
                    id: TokenId::parse(token.id.get() % MAX_ID + 1).unwrap(),
                    ..token.clone()
                },
            ),
        ];
        for (field, other) in changed {
            assert_ne!(Etag::of(&other), etag, "{field}");
        }
        let used = ServiceToken {
            last_used_at: Some(later),
            previous_secret: Some(PreviousSecret {
                expiration: later,
                last_used_at: Some(later),
            }),
            ..token.clone()
        };
        assert_eq!(Etag::of(&used), etag);
        assert!(etag.matches(&used));
    }

    #[test]
    fn an_etag_reads_back_quoted_or_bare_and_nothing_else() {
        let (_, stored) = StoredToken::sample();
        let etag = Etag::of(&stored.token);
        let text = etag.to_string();
        assert_eq!(text.len(), 34);
        assert_eq!(Etag::parse("etag", &text).unwrap(), etag);
        assert_eq!(Etag::parse("etag", text.trim_matches('"')).unwrap(), etag);
        assert_eq!(Etag::parse("etag", &text.to_uppercase()).unwrap(), etag);
        for bad in [
            "",
            "\"\"",
            "W/\"00\"",
            &format!("W/{text}"),
            &text[..20],
            "*",
            &format!("{text},{text}"),
        ] {
            let error = Etag::parse("etag", bad).unwrap_err();
            assert_eq!(error.field, "etag");
            assert!(!error.problem.contains(bad) || bad.is_empty(), "{bad}");
        }
    }

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
    fn names_that_break_lines_look_blank_or_spill_over_are_refused() {
        for misleading in [
            "a\u{2028}b",
            "a\u{2029}b",
            "ci\u{a0}deploy",
            "ci\u{3000}deploy",
            "ci\u{2009}deploy",
            "\u{3164}",
            "a\u{2800}b",
            "a\u{e000}b",
            "a\u{f0000}b",
            "a\u{0378}b",
        ] {
            let refused = TokenName::parse(misleading).unwrap_err();
            assert!(
                refused.problem.contains("line separators"),
                "{misleading:?}"
            );
            // An earlier release's stored name still reads back.
            assert!(TokenName::read_back(misleading).is_ok());
        }
        let marks = |n: usize| format!("e{}", "\u{301}".repeat(n));
        assert!(TokenName::parse(&marks(MAX_COMBINING_MARKS)).is_ok());
        let zalgo = TokenName::parse(&marks(MAX_COMBINING_MARKS + 1)).unwrap_err();
        assert!(zalgo.problem.contains("combining marks"), "{zalgo:?}");
        // Scripts that need marks are fine.
        for fine in [
            "\u{928}\u{92e}\u{938}\u{94d}\u{924}\u{947}",
            "ti\u{1ebf}ng vi\u{1ec7}t",
            "a b-c_d.e",
        ] {
            assert!(TokenName::parse(fine).is_ok(), "{fine:?}");
        }
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
        let parts = StoredParts::first_release(
            stored.token.id.get(),
            stored.hash.as_bytes(),
            "t",
            &roles,
            None,
            stored.token.created_at,
        );
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
    fn label_keys_follow_kubernetes_and_values_are_displayable() {
        for key in ["team", "a", "app.kubernetes.io/name", "x/y-z_1.2", "A9"] {
            assert!(Labels::parse([(key, "v")]).is_ok(), "{key}");
        }
        for key in [
            "",
            "-a",
            "a-",
            "a b",
            "UPPER.example/x",
            "/name",
            "prefix/",
            "a/b/c",
            &"n".repeat(64),
        ] {
            let error = Labels::parse([(key, "v")]).unwrap_err();
            assert!(error.problem.starts_with("key "), "{key}: {error}");
        }
        assert!(Labels::parse([("k", "x".repeat(MAX_LABEL_VALUE_CHARS))]).is_ok());
        assert!(Labels::parse([("k", "x".repeat(MAX_LABEL_VALUE_CHARS + 1))]).is_err());
        assert!(Labels::parse([("k", "a\nb")]).is_err());
        assert!(Labels::parse([("k", "a\u{202e}b")]).is_err());
        let too_many: Vec<(String, &str)> =
            (0..=MAX_LABELS).map(|i| (format!("k{i}"), "")).collect();
        assert_eq!(Labels::parse(too_many).unwrap_err().field, "labels");
        let labels = Labels::parse([("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(labels.to_string(), "a=1,b=2");
    }

    #[test]
    fn descriptions_are_bounded_displayable_text() {
        assert_eq!(Description::parse("").unwrap(), Description::default());
        assert!(Description::parse(&"é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        let long = Description::parse(&"é".repeat(MAX_DESCRIPTION_CHARS + 1)).unwrap_err();
        assert_eq!(long.field, "description");
        assert!(Description::parse("two\nlines").is_err());
        assert!(Description::parse("a\u{200b}b").is_err());
    }

    fn admin_token(roles: &[&str], expiration: Option<SystemTime>) -> ServiceToken {
        let new = NewToken::parse("admin", roles, expiration).unwrap();
        ServiceToken::new(TokenId::random(), &new, SystemTime::now())
    }

    #[test]
    fn only_changes_that_take_admin_access_away_are_named() {
        let role = Role::parse("admin").unwrap();
        let now = SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        let before = admin_token(&["admin"], None);
        let after = |edit: Edit| edit.apply(&before, now);
        let cases = [
            (None, Some("deleting")),
            (
                Some(after(Edit {
                    disabled: Some(true),
                    ..Edit::default()
                })),
                Some("disabling"),
            ),
            (
                Some(after(Edit {
                    roles: Some(Roles::parse(&["reader"]).unwrap()),
                    ..Edit::default()
                })),
                Some("removing the admin role from"),
            ),
            (
                Some(after(Edit {
                    expiration: Some(Some(now + hour)),
                    ..Edit::default()
                })),
                Some("letting expire"),
            ),
            (
                Some(after(Edit {
                    name: Some(TokenName::parse("x").unwrap()),
                    roles: Some(Roles::parse(&["admin", "reader"]).unwrap()),
                    ..Edit::default()
                })),
                None,
            ),
        ];
        let margin = hour * 24;
        let rule = |before: &ServiceToken, after: Option<&ServiceToken>| {
            takes_admin_away(before, after, &role, now, now + margin)
        };
        for (after, expected) in cases {
            assert_eq!(rule(&before, after.as_ref()), expected);
        }
        // An expiration beyond the margin keeps access long enough: a year
        // away is allowed, a day less a second is not.
        let at = |expiration| Edit {
            expiration: Some(Some(expiration)),
            ..Edit::default()
        };
        let year = at(now + margin * 365).apply(&before, now);
        assert_eq!(rule(&before, Some(&year)), None);
        let short = at(now + margin - std::time::Duration::from_secs(1)).apply(&before, now);
        assert_eq!(rule(&before, Some(&short)), Some("letting expire"));
        // A later expiration gives time; an earlier one takes it.
        let expiring = admin_token(&["admin"], Some(now + hour));
        let later = at(now + hour * 2);
        assert_eq!(rule(&expiring, Some(&later.apply(&expiring, now))), None);
        let never = Edit {
            expiration: Some(None),
            ..Edit::default()
        };
        assert_eq!(rule(&expiring, Some(&never.apply(&expiring, now))), None);
        // An admin inside the margin already: a change that leaves its
        // access as it was (a rename) is allowed; one that shortens it is not.
        let rename = Edit {
            name: Some(TokenName::parse("x").unwrap()),
            ..Edit::default()
        };
        assert_eq!(rule(&expiring, Some(&rename.apply(&expiring, now))), None);
        assert_eq!(rule(&expiring, None), Some("deleting"));
        // Not an admin token: nothing to take away.
        let reader = admin_token(&["reader"], None);
        assert_eq!(rule(&reader, None), None);
    }

    #[test]
    fn an_edit_names_exactly_the_fields_it_changed() {
        let before = admin_token(&["a"], None);
        let edit = Edit {
            name: Some(TokenName::parse("admin").unwrap()),
            roles: Some(Roles::parse(&["a", "b"]).unwrap()),
            disabled: Some(true),
            labels: Some(LabelEdit::Replace(Labels::parse([("team", "ci")]).unwrap())),
            ..Edit::default()
        };
        let after = edit.apply(&before, SystemTime::now());
        let changes = Edit::changes(&before, &after);
        let fields: Vec<&str> = changes.iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["roles", "labels", "disabled"],
            "the name did not change"
        );
        assert_eq!(
            (changes[0].old.as_str(), changes[0].new.as_str()),
            ("a", "a,b")
        );
        assert!(Edit::default().is_empty());
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_only_inside_the_token_s_life() {
        let (_, stored) = StoredToken::sample();
        let now = SystemTime::now();
        let minute = std::time::Duration::from_secs(60);
        let new = crate::token::Token::generate().hash();
        let rotate = |until| Change::Rotate {
            hash: new,
            previous_until: until,
        };
        let rotated = rotate(now + minute).apply(&stored, now);
        assert_eq!(rotated.hash, new);
        assert_eq!(rotated.previous_hash, Some(stored.hash));
        assert_eq!(
            rotated.token.previous_secret.unwrap().expiration,
            now + minute
        );
        assert_eq!(rotated.token.id, stored.token.id);
        let ended = rotate(now).apply(&stored, now);
        assert_eq!(
            (ended.previous_hash, ended.token.previous_secret),
            (None, None)
        );
        // Rotating again drops the first secret.
        let again = Change::Rotate {
            hash: crate::token::Token::generate().hash(),
            previous_until: now + minute,
        }
        .apply(&rotated, now);
        assert_eq!(again.previous_hash, Some(new));
        // Shown without it once its grace period is over.
        let seen = rotated.token.clone().seen_at(now + minute);
        assert_eq!(seen.previous_secret, None);
    }

    #[test]
    fn duplicate_roles_collapse_in_order() {
        let roles = Roles::parse(&["b", "a", "b"]).unwrap();
        let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(roles.contains(&Role::parse("a").unwrap()));
    }
}
