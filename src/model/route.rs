//! The routes a token may call ([`AllowedRoutes`] of [`RouteRule`]s),
//! parsed once into the form a check walks, and the request path they are
//! matched against ([`RequestPath`]).
//!
//! A route is matched on the request's path alone (no query), percent-
//! decoded once and compared case-sensitively. A path that could mean two
//! things to two servers never matches: one with a `.` or `..` segment, an
//! empty segment (`//`), or an encoded `/` (`%2F`), since what the check
//! reads and what the service behind the proxy serves must be the same
//! path. In a pattern, `*` matches one non-empty segment and a trailing
//! `/**` the prefix itself and anything below it; methods compare without
//! regard to case.

use std::{borrow::Cow, fmt};

use super::fields::FieldError;
use super::shared::Shared;

/// The most routes one token may be bound to.
pub const MAX_ALLOWED_ROUTES: usize = 64;
/// The most methods one route may name.
pub const MAX_ROUTE_METHODS: usize = 16;
/// The longest route pattern, in bytes.
pub const MAX_ROUTE_PATTERN_BYTES: usize = 1024;

/// One route a token may call: the methods (none: any) and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Upper-cased.
    methods: Vec<String>,
    pattern: String,
    segments: Vec<PatternSegment>,
    /// A trailing `/**`: the prefix itself and anything below it.
    below: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    /// `*`: any one non-empty segment.
    Any,
}

impl RouteRule {
    /// `methods` (HTTP method names, any case; none: any method) and
    /// `pattern`: `/` and segments, where a segment is `*` or literal text
    /// (neither `.` nor `..`, no `*` inside it), and the last may be `**`.
    pub fn parse<S: AsRef<str>>(
        field: impl Into<String>,
        methods: &[S],
        pattern: &str,
    ) -> Result<RouteRule, FieldError> {
        let field = field.into();
        let invalid = |problem: &str| Err(FieldError::new(field.clone(), problem.to_owned()));
        if methods.len() > MAX_ROUTE_METHODS {
            return invalid("names too many methods");
        }
        let mut upper: Vec<String> = Vec::with_capacity(methods.len());
        for method in methods {
            let method = method.as_ref();
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                return invalid("names a method that is not an HTTP method name");
            }
            let method = method.to_ascii_uppercase();
            if !upper.contains(&method) {
                upper.push(method);
            }
        }
        if pattern.len() > MAX_ROUTE_PATTERN_BYTES {
            return invalid("has a path pattern longer than 1024 bytes");
        }
        let Some(rest) = pattern.strip_prefix('/') else {
            return invalid("has a path pattern that does not start with /");
        };
        if pattern.contains(['?', '#']) || pattern.chars().any(char::is_control) {
            return invalid("has a path pattern with a query, a fragment or a control character");
        }
        let mut segments = Vec::new();
        let mut below = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (at, part) in parts.iter().enumerate() {
            let last = at + 1 == parts.len();
            match *part {
                "**" if last => below = true,
                "*" => segments.push(PatternSegment::Any),
                "" => return invalid("has an empty segment (//) in its path pattern"),
                "." | ".." => return invalid("has a . or .. segment in its path pattern"),
                literal if literal.contains('*') => {
                    return invalid("uses * other than as a whole segment, or ** other than last");
                }
                literal => segments.push(PatternSegment::Literal(literal.to_owned())),
            }
        }
        Ok(RouteRule {
            methods: upper,
            pattern: pattern.to_owned(),
            segments,
            below,
        })
    }

    /// The methods as given, upper-cased.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The rule as the CLI takes it: `GET,HEAD /api/*`, or the pattern
    /// alone when any method will do.
    pub fn text(&self) -> String {
        if self.methods.is_empty() {
            self.pattern.clone()
        } else {
            format!("{} {}", self.methods.join(","), self.pattern)
        }
    }

    /// Whether a request with `method` and the path `path` (decoded
    /// segments, see [`RequestPath`]) falls under this rule.
    pub fn admits(&self, method: &str, path: &RequestPath) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let segments = &path.0;
        let fits = if self.below {
            segments.len() >= self.segments.len()
        } else {
            segments.len() == self.segments.len()
        };
        fits && self
            .segments
            .iter()
            .zip(segments)
            .all(|(pattern, segment)| match pattern {
                PatternSegment::Literal(literal) => literal == segment,
                PatternSegment::Any => !segment.is_empty(),
            })
    }
}

impl RouteRule {
    /// Whether every request this rule admits, `wider` admits too.
    pub fn within(&self, wider: &RouteRule) -> bool {
        let methods = wider.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| wider.methods.contains(m)));
        let length = if wider.below {
            self.segments.len() >= wider.segments.len()
        } else {
            !self.below && self.segments.len() == wider.segments.len()
        };
        methods
            && length
            && wider
                .segments
                .iter()
                .zip(&self.segments)
                .all(|(wide, narrow)| match wide {
                    PatternSegment::Any => true,
                    PatternSegment::Literal(_) => wide == narrow,
                })
    }
}

/// RFC 9110's token characters, what a method name is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The routes a token may call; empty: any route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedRoutes(Shared<RouteRule>);

impl AllowedRoutes {
    /// At most [`MAX_ALLOWED_ROUTES`] rules.
    pub fn new(field: &str, rules: Vec<RouteRule>) -> Result<AllowedRoutes, FieldError> {
        if rules.len() > MAX_ALLOWED_ROUTES {
            return Err(FieldError::new(
                field,
                format!("at most {MAX_ALLOWED_ROUTES} routes"),
            ));
        }
        Ok(AllowedRoutes(Shared::of(rules)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_slice().is_empty()
    }

    pub fn rules(&self) -> &[RouteRule] {
        self.0.as_slice()
    }

    /// The rules as [`RouteRule::text`] writes them.
    pub fn texts(&self) -> Vec<String> {
        self.0.as_slice().iter().map(RouteRule::text).collect()
    }

    /// Whether some rule admits `method` on `path`; never for a path that
    /// does not parse (see [`RequestPath::parse`]).
    pub fn admits(&self, method: &str, path: &str) -> bool {
        let Some(path) = RequestPath::parse(path) else {
            return false;
        };
        self.0
            .as_slice()
            .iter()
            .any(|rule| rule.admits(method, &path))
    }
}

/// A request's path as routes are matched against it: its segments,
/// each percent-decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'t>(Vec<Cow<'t, str>>);

impl<'t> RequestPath<'t> {
    /// The path of a request target (a query or fragment is dropped), or
    /// `None` when it could be read two ways: not starting with `/`, an
    /// empty segment before the last (`//`), a `.` or `..` segment
    /// (encoded or not), an encoded `/`, or a segment that is not UTF-8
    /// once decoded. A trailing `/` is an empty last segment, which only a
    /// `/**` pattern admits.
    pub fn parse(target: &'t str) -> Option<RequestPath<'t>> {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let rest = path.strip_prefix('/')?;
        if rest.is_empty() {
            return Some(RequestPath(Vec::new()));
        }
        let raw: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (at, segment) in raw.iter().enumerate() {
            if segment.is_empty() && at + 1 != raw.len() {
                return None;
            }
            let decoded = percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .ok()?;
            if decoded.contains('/') || decoded == "." || decoded == ".." {
                return None;
            }
            segments.push(decoded);
        }
        Some(RequestPath(segments))
    }

    /// The decoded segments.
    pub fn segments(&self) -> &[Cow<'t, str>] {
        &self.0
    }
}

/// Semicolon-separated route rules, `any` when empty.
impl fmt::Display for AllowedRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.as_slice().is_empty() {
            return f.write_str("any");
        }
        f.write_str(&self.texts().join("; "))
    }
}
