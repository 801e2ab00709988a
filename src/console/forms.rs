//! The console's forms as model values: text a person typed (one label,
//! source, audience, route or limit a line; roles by commas; an expiration
//! in UTC) read by the model's own parsers, so a refusal says what the API
//! would say of the same value.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::{
    error::Error,
    model::{
        AllowedRoutes, AllowedSources, Audiences, Bindings, Description, Edit, Etag, FieldError,
        LabelEdit, Labels, NewToken, RateLimits, Roles, RouteParts, RouteRule, ServiceToken,
        TokenName,
    },
};

use super::views::{TokenForm, route_text};
use crate::text::visible;

/// What the create and edit forms post.
#[derive(Deserialize, Default)]
pub struct TokenFormInput {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub etag: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub roles: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: String,
    #[serde(default)]
    pub expiration: String,
    #[serde(default)]
    pub sources: String,
    #[serde(default)]
    pub audiences: String,
    #[serde(default)]
    pub routes: String,
    #[serde(default)]
    pub rate_limits: String,
}

impl TokenFormInput {
    /// The form as typed, to show again with an error.
    pub fn as_form(&self) -> TokenForm {
        TokenForm {
            name: self.name.clone(),
            roles: self.roles.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
            expiration: self.expiration.clone(),
            sources: self.sources.clone(),
            audiences: self.audiences.clone(),
            routes: self.routes.clone(),
            rate_limits: self.rate_limits.clone(),
        }
    }

    /// A new token, as the create page describes it.
    pub fn new_token(&self) -> Result<NewToken, Error> {
        let roles = items(&self.roles, ',');
        let new = NewToken::parse(self.name.trim(), &roles, expiration(&self.expiration)?)?;
        let limits = lines(&self.rate_limits);
        let limits = if limits.is_empty() {
            None
        } else {
            Some(RateLimits::parse_texts("rate_limits", &limits)?)
        };
        Ok(new
            .limited(limits)
            .described(
                Description::parse(&self.description)?,
                labels(&self.labels)?,
            )
            .bound(self.bindings()?))
    }

    fn bindings(&self) -> Result<Bindings, FieldError> {
        Ok(Bindings {
            sources: AllowedSources::parse("allowed_sources", &lines(&self.sources))?,
            audiences: Audiences::parse("audiences", &lines(&self.audiences))?,
            routes: routes(&self.routes)?,
        })
    }

    /// What differs between the form and `token` as it was shown: only
    /// the fields a person changed are set, so an edit of the description
    /// never trips a rule about roles it left alone.
    pub fn edit_of(&self, token: &ServiceToken) -> Result<Edit, Error> {
        let shown = TokenForm::of(token);
        let mut edit = Edit::default();
        if self.name.trim() != shown.name {
            edit.name = Some(TokenName::parse(self.name.trim())?);
        }
        if self.roles.trim() != shown.roles {
            edit.roles = Some(Roles::parse(&items(&self.roles, ','))?);
        }
        if self.description != shown.description {
            edit.description = Some(Description::parse(&self.description)?);
        }
        if lines(&self.labels) != lines(&shown.labels) {
            edit.labels = Some(LabelEdit::Replace(labels(&self.labels)?));
        }
        if self.expiration.trim() != shown.expiration {
            edit.expiration = Some(expiration(&self.expiration)?);
        }
        if lines(&self.sources) != lines(&shown.sources) {
            edit.sources = Some(AllowedSources::parse(
                "allowed_sources",
                &lines(&self.sources),
            )?);
        }
        if lines(&self.audiences) != lines(&shown.audiences) {
            edit.audiences = Some(Audiences::parse("audiences", &lines(&self.audiences))?);
        }
        if lines(&self.routes) != lines(&shown.routes) {
            edit.routes = Some(routes(&self.routes)?);
        }
        if lines(&self.rate_limits) != lines(&shown.rate_limits) {
            edit.rate_limits = Some(RateLimits::parse_texts(
                "rate_limits",
                &lines(&self.rate_limits),
            )?);
        }
        Ok(edit)
    }
}

impl TokenForm {
    /// `token` as the edit form shows it.
    pub fn of(token: &ServiceToken) -> TokenForm {
        // Every field named: a new one must decide whether the form edits it.
        let ServiceToken {
            id: _,
            name,
            roles,
            expiration,
            created_at: _,
            description,
            labels,
            disabled: _,
            last_used_at: _,
            created_by: _,
            updated_at: _,
            previous_secret: _,
            bindings:
                Bindings {
                    sources,
                    audiences,
                    routes,
                },
            recent_sources: _,
            rate_limits,
            owners: _,
            lifetime: _,
        } = token;
        // Shown as the pages show them (see `text::visible`): a name an
        // earlier release stored with a bidi control cannot mislead here,
        // and left as shown it is left as it is (`edit_of` compares with
        // this).
        TokenForm {
            name: visible(name.as_str()).into_owned(),
            roles: roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            description: visible(description.as_str()).into_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| visible(&format!("{k}={v}")).into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            expiration: expiration.map(datetime_local).unwrap_or_default(),
            sources: sources.texts().join("\n"),
            audiences: audiences.as_slice().join("\n"),
            routes: RouteParts::of(routes)
                .iter()
                .map(route_text)
                .collect::<Vec<_>>()
                .join("\n"),
            rate_limits: rate_limits
                .as_slice()
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The non-empty, trimmed items of `text` split at `separator`.
fn items(text: &str, separator: char) -> Vec<String> {
    text.split(separator)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The non-empty, trimmed lines of `text`.
fn lines(text: &str) -> Vec<String> {
    items(text, '\n')
}

fn labels(text: &str) -> Result<Labels, FieldError> {
    let mut pairs = Vec::new();
    for line in lines(text) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(FieldError::new("labels", "each line must be key=value"));
        };
        pairs.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Labels::parse(pairs)
}

/// `GET,POST /path/**` or `/path`, a line each.
fn routes(text: &str) -> Result<AllowedRoutes, FieldError> {
    let mut rules = Vec::new();
    for (at, line) in lines(text).iter().enumerate() {
        let field = format!("allowed_routes[{at}]");
        let (methods, pattern) = match line.split_once(char::is_whitespace) {
            Some((methods, pattern)) if !methods.starts_with('/') => {
                (items(methods, ','), pattern.trim())
            }
            _ => (Vec::new(), line.as_str()),
        };
        rules.push(RouteRule::parse(field, &methods, pattern)?);
    }
    AllowedRoutes::new("allowed_routes", rules)
}

/// The form's `datetime-local` text, read as UTC; empty: none.
fn expiration(text: &str) -> Result<Option<SystemTime>, FieldError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let minutes = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let parsed = time::PrimitiveDateTime::parse(text, &minutes)
        .or_else(|_| time::PrimitiveDateTime::parse(text, &seconds))
        .map_err(|_| {
            FieldError::new(
                "expiration",
                "must be a date and time, YYYY-MM-DDTHH:MM (UTC)",
            )
        })?;
    Ok(Some(SystemTime::from(parsed.assume_utc())))
}

/// `at` as a `datetime-local` input shows it (UTC, to the minute, or to
/// the second when it has seconds).
fn datetime_local(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = if at.second() == 0 && at.nanosecond() == 0 {
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")
    } else {
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]")
    };
    at.format(&format).unwrap_or_default()
}

/// An etag a form posted back (`""`: none; the change is then made
/// whatever the token's etag is).
pub(super) fn etag(text: &str) -> Result<Option<Etag>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(Etag::parse("etag", text)?))
}

/// A rotation's grace as typed (`0s`, `1h`, `7days`).
pub fn grace(text: &str) -> Result<Duration, FieldError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Duration::ZERO);
    }
    crate::config::setting::duration(text)
        .map(Into::into)
        .map_err(|_| FieldError::new("grace", "must be a duration such as 0s, 30m, 1h or 7days"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_as_the_model_reads_them() {
        let input = TokenFormInput {
            name: " ci ".into(),
            roles: "a, b,,".into(),
            labels: "team=ci\n\n env = prod \n".into(),
            expiration: "2999-01-02T03:04".into(),
            routes: "GET,POST /api/**\n/health".into(),
            rate_limits: "burst=10/1s".into(),
            ..TokenFormInput::default()
        };
        let new = input.new_token().unwrap();
        assert_eq!(new.name.as_str(), "ci");
        assert_eq!(new.roles.to_string(), "a,b");
        assert_eq!(new.labels.to_string(), "env=prod,team=ci");
        assert_eq!(new.bindings.routes.rules().len(), 2);
        let bad = TokenFormInput {
            labels: "team".into(),
            ..input
        };
        assert!(bad.new_token().is_err());
        assert!(expiration("tomorrow").is_err());
        assert_eq!(grace("1h").unwrap(), Duration::from_secs(3600));
    }
}
