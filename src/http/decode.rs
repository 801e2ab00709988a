//! JSON request bodies decoded into the handlers' request types, with
//! errors in fixed words: which field, and what it must be.
//!
//! Why not serde's own messages: they quote the offending value
//! (`invalid type: string "svctok-…", expected u64`), and a value sent in
//! the wrong place may be a secret; and they speak Rust (`expected struct
//! RotateJson`, `u64`) where the user typed JSON.

use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::model::FieldError;

/// `bytes` as a `T`, or a 400 naming the field at fault. `what` names the
/// whole body (`a token request`); `read_only` lists fields a client may
/// have copied from a `GET` that the server sets itself.
pub fn json<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    read_only: &[&str],
) -> Result<T, FieldError> {
    let mut decoder = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut decoder).map_err(|e| {
        let segments: Vec<_> = e.path().iter().collect();
        // An unknown field's path ends with its key: the field is where
        // that member was found.
        let at = match e.inner().to_string().starts_with("unknown field `") {
            true => &segments[..segments.len().saturating_sub(1)],
            false => &segments[..],
        };
        explain(e.inner(), &path_text(at), what, read_only)
    })?;
    decoder
        .end()
        .map_err(|e| explain(&e, "", what, read_only))?;
    Ok(value)
}

/// A path as `labels.team`, `roles[1]`; a key that does not look like a
/// field name (it is the client's text, perhaps a secret) as `<member>`.
fn path_text(segments: &[&serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(if plausible(key) { key } else { "<member>" });
            }
            Segment::Unknown => text.push_str(".?"),
        }
    }
    text
}

/// Whether a key the client sent looks like a field name (no token has
/// this shape), so that an error may repeat it.
pub fn plausible(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The error for `error` at `path` (empty for the whole body).
fn explain(error: &serde_json::Error, path: &str, what: &str, read_only: &[&str]) -> FieldError {
    let field = match path {
        "" => "body",
        path => path,
    };
    if error.classify() != Category::Data {
        // Syntax and premature ends: serde's text says what was expected
        // where, never what was there.
        return FieldError::new(
            "body",
            format!(
                "is not {what}: not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ),
        );
    }
    let text = error.to_string();
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(t, _)| t);
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let (name, known) = rest.split_once('`').unwrap_or((rest, ""));
        let known = known.strip_prefix(", expected ").unwrap_or("no fields");
        return match (plausible(name), read_only.contains(&name)) {
            (true, true) => FieldError::new(
                name,
                "is set by the server (or by a later update), not in this request",
            ),
            (true, false) => {
                FieldError::new(name, format!("is not a field of {what} (expected {known})"))
            }
            (false, _) => FieldError::new(
                field,
                format!("has a member that is not a field of {what} (expected {known})"),
            ),
        };
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return FieldError::new(name, "is required");
    }
    if let Some(rest) = text.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return FieldError::new(name, "is given twice (perhaps under two of its names)");
    }
    match text.split_once(", expected ") {
        Some((_, expected)) => FieldError::new(field, format!("must be {}", in_json(expected))),
        None => FieldError::new(field, "is not valid"),
    }
}

/// What serde expected, in JSON's words.
fn in_json(expected: &str) -> &'static str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a char" => "a string",
        "a sequence" => "an array",
        "a map" => "an object",
        e if e.starts_with("struct ") => "an object",
        e if e.starts_with("a sequence") || e.starts_with("an array") => "an array",
        e if e.contains("string") => "a string",
        _ => "a value of another type",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Request {
        name: String,
        roles: Vec<String>,
        #[serde(alias = "expiration")]
        expiry_date: Option<i64>,
        #[serde(default)]
        grace_seconds: u64,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    const SECRET: &str = "svctok-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg123456";

    fn error(body: &str) -> String {
        let e = json::<Request>(body.as_bytes(), "a request", &["id", "createdAt"]).unwrap_err();
        let text = format!("{}: {}", e.field, e.problem);
        assert!(!text.contains("svctok"), "{text}");
        assert!(!text.contains("u64") && !text.contains("struct"), "{text}");
        text
    }

    #[test]
    fn errors_name_the_field_and_what_it_must_be_never_the_value() {
        let cases = [
            (
                format!(r#"{{"name": "a", "roles": "{SECRET}"}}"#),
                "roles: must be an array",
            ),
            (
                format!(r#"{{"name": "a", "roles": ["{SECRET}", 5]}}"#),
                "roles[1]: must be a string",
            ),
            (
                format!(r#"{{"name": ["{SECRET}"], "roles": []}}"#),
                "name: must be a string",
            ),
            (
                format!(r#"{{"name": "a", "roles": [], "graceSeconds": "{SECRET}"}}"#),
                "graceSeconds: must be a whole number, 0 or more",
            ),
            (
                format!(r#"{{"name": "a", "roles": [], "expiryDate": "{SECRET}"}}"#),
                "expiryDate: must be a whole number",
            ),
            (
                r#"{"name": "a", "roles": [], "labels": {"k": 1}}"#.to_owned(),
                "labels.k: must be a string",
            ),
            (format!(r#"["{SECRET}"]"#), "body: must be an object"),
            (
                format!(r#"{{"name": "{SECRET}"#),
                "body: is not a request: not valid JSON (line 1, column 66)",
            ),
            (r#"{"name": "a"}"#.into(), "roles: is required"),
            (
                r#"{"name": "a", "roles": [], "id": 7}"#.into(),
                "id: is set by the server (or by a later update), not in this request",
            ),
            (
                r#"{"name": "a", "roles": [], "expiryDate": 1, "expiration": 2}"#.into(),
                "expiryDate: is given twice (perhaps under two of its names)",
            ),
            (
                r#"{"name": "a", "roles": []} x"#.into(),
                "body: is not a request: not valid JSON (line 1, column 28)",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(error(&body), expected, "{body}");
        }
        let unknown = error(r#"{"name": "a", "roles": [], "expires": 1}"#);
        assert!(
            unknown.starts_with(
                "expires: is not a field of a request (expected one of `name`, `roles`"
            ),
            "{unknown}"
        );
        // A key that may be a secret is not repeated.
        let key = error(&format!(r#"{{"name": "a", "roles": [], "{SECRET}": 1}}"#));
        assert!(
            key.starts_with("body: has a member that is not a field"),
            "{key}"
        );
        let fine: Request =
            json(br#"{"name": "a", "roles": [], "expiration": 5}"#, "", &[]).unwrap();
        assert_eq!(fine.expiry_date, Some(5));
    }
}
