//! What the console's templates show: one struct per page (askama
//! compiles `templates/console/*.html` against them; every value is
//! escaped on output), and tokens as a person reads them: times in UTC
//! with how long ago or ahead, states as words.

use std::time::{Duration, SystemTime};

use askama::Template;

use crate::{
    clock::span_text,
    model::{Bindings, DayUsage, Etag, RouteParts, ServiceToken},
    text::visible,
};

use super::{ConsoleState, chart};

/// What every page's frame needs.
pub struct Base {
    pub prefix: String,
    pub css: String,
    pub js: String,
    /// The signed-in token's name and id, when signed in.
    pub who: Option<(String, u64)>,
    pub csrf: String,
    /// The navigation entry this page is: `overview`, `tokens`, `new`.
    pub nav: &'static str,
}

impl Base {
    pub fn anonymous(state: &ConsoleState) -> Base {
        Base {
            prefix: state.prefix.as_str().to_owned(),
            css: state.assets.css_href(state),
            js: state.assets.js_href(state),
            who: None,
            csrf: String::new(),
            nav: "",
        }
    }

    /// The frame of a signed-in page; `csrf` is the session's token.
    pub fn signed(
        state: &ConsoleState,
        csrf: String,
        caller: &ServiceToken,
        nav: &'static str,
    ) -> Base {
        Base {
            who: Some((visible(caller.name.as_str()).into_owned(), caller.id.get())),
            csrf,
            nav,
            ..Base::anonymous(state)
        }
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignIn {
    pub base: Base,
    pub form_token: String,
    pub notice: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub base: Base,
    pub status: u16,
    pub message: String,
}

/// A count on the overview, with the list it links to.
pub struct Count {
    pub label: &'static str,
    pub value: String,
    pub href: String,
    pub class: &'static str,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub base: Base,
    pub counts: Vec<Count>,
    pub as_of: String,
    pub version: &'static str,
    pub store: &'static str,
    pub health: &'static str,
    pub health_class: &'static str,
    pub scope: &'static str,
}

/// A state word and its colour class.
pub struct Badge {
    pub word: &'static str,
    pub class: &'static str,
}

/// The states of `token` at `now`, most important first.
pub fn badges(token: &ServiceToken, now: SystemTime) -> Vec<Badge> {
    let mut badges = Vec::new();
    if token.is_expired_at(now) {
        badges.push(Badge {
            word: "expired",
            class: "state-expired",
        });
    } else if token.disabled {
        badges.push(Badge {
            word: "disabled",
            class: "state-disabled",
        });
    } else if token
        .expiration
        .is_some_and(|at| at.duration_since(now).is_ok_and(|left| left <= EXPIRING))
    {
        badges.push(Badge {
            word: "expiring",
            class: "state-expiring",
        });
    } else {
        badges.push(Badge {
            word: "active",
            class: "state-active",
        });
    }
    if token.previous_secret.is_some_and(|p| p.expiration > now) {
        badges.push(Badge {
            word: "previous secret in grace",
            class: "state-grace",
        });
    }
    badges
}

/// A token expiring within this long is shown as expiring.
pub const EXPIRING: Duration = Duration::from_secs(7 * 24 * 3600);

/// A time as the console shows it: UTC to the minute.
pub fn when(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    at.format(&format).unwrap_or_else(|_| "?".to_owned())
}

/// How long ago or ahead `at` is from `now`, roughly.
pub fn relative(at: SystemTime, now: SystemTime) -> String {
    let round = |d: Duration| {
        let s = d.as_secs();
        let rounded = match s {
            0..120 => s,
            120..7200 => s / 60 * 60,
            7200..172_800 => s / 3600 * 3600,
            _ => s / 86_400 * 86_400,
        };
        span_text(Duration::from_secs(rounded.max(1)))
    };
    match at.duration_since(now) {
        Ok(ahead) => format!("in {}", round(ahead)),
        Err(past) => format!("{} ago", round(past.duration())),
    }
}

/// One row of the tokens page.
pub struct Row {
    pub id: u64,
    pub name: String,
    pub badges: Vec<Badge>,
    pub roles: String,
    pub labels: String,
    pub expires: String,
    pub expires_title: String,
    pub last_used: String,
    pub created: String,
}

impl Row {
    pub fn of(token: &ServiceToken, now: SystemTime) -> Row {
        // Every field named: a new one must decide whether the list shows it.
        let ServiceToken {
            id,
            name,
            roles,
            expiration,
            created_at,
            description: _,
            labels,
            disabled: _,
            last_used_at,
            created_by: _,
            updated_at: _,
            previous_secret: _,
            bindings: _,
            recent_sources: _,
            rate_limits: _,
            owners: _,
            lifetime: _,
        } = token;
        Row {
            id: id.get(),
            name: visible(name.as_str()).into_owned(),
            badges: badges(token, now),
            roles: roles.to_string(),
            labels: visible(&labels.to_string()).into_owned(),
            expires: expiration.map_or_else(|| "never".to_owned(), |at| relative(at, now)),
            expires_title: expiration.map(when).unwrap_or_default(),
            last_used: last_used_at.map_or_else(|| "never".to_owned(), |at| relative(at, now)),
            created: when(*created_at),
        }
    }
}

/// A choice in a `<select>`.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "console/tokens.html")]
pub struct Tokens {
    pub base: Base,
    pub rows: Vec<Row>,
    /// The filters as the form shows them.
    pub q: String,
    pub role: String,
    pub label: String,
    pub states: Vec<Choice>,
    pub bindings: Vec<Choice>,
    pub orders: Vec<Choice>,
    pub expiring_days: String,
    pub unused_days: String,
    pub over_policy: bool,
    pub policy: bool,
    /// The link to the next page, and back to the first, when there are.
    pub next: Option<String>,
    pub first: Option<String>,
    pub notice: String,
    pub error: String,
}

/// A field of the token page: its label and its text.
pub struct Field {
    pub label: &'static str,
    pub value: String,
}

/// A recent source: the address and when it was last seen.
pub struct Seen {
    pub address: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "console/token.html")]
pub struct TokenPage {
    pub base: Base,
    pub id: u64,
    pub name: String,
    pub badges: Vec<Badge>,
    pub fields: Vec<Field>,
    pub sources: Vec<Seen>,
    pub chart: Option<chart::Chart>,
    pub etag: String,
    pub disabled: bool,
    pub max_grace: String,
    pub notice: String,
    pub error: String,
}

impl TokenPage {
    pub fn fields(token: &ServiceToken, now: SystemTime) -> (Vec<Field>, Vec<Seen>) {
        // Every field named: a new one must decide how the page shows it.
        let ServiceToken {
            id,
            name,
            roles,
            expiration,
            created_at,
            description,
            labels,
            disabled,
            last_used_at,
            created_by,
            updated_at,
            previous_secret,
            bindings:
                Bindings {
                    sources,
                    audiences,
                    routes,
                },
            recent_sources,
            rate_limits,
            owners,
            lifetime,
        } = token;
        let time = |at: &Option<SystemTime>, none: &str| {
            at.map_or_else(
                || none.to_owned(),
                |at| format!("{} ({})", when(at), relative(at, now)),
            )
        };
        let list = |items: Vec<String>, none: &str| {
            if items.is_empty() {
                none.to_owned()
            } else {
                items.join(", ")
            }
        };
        let fields = vec![
            Field {
                label: "Id",
                value: id.to_string(),
            },
            Field {
                label: "Name",
                value: visible(name.as_str()).into_owned(),
            },
            Field {
                label: "Roles",
                value: roles.to_string(),
            },
            Field {
                label: "Description",
                value: visible(description.as_str()).into_owned(),
            },
            Field {
                label: "Labels",
                value: list(
                    labels
                        .iter()
                        .map(|(k, v)| visible(&format!("{k}={v}")).into_owned())
                        .collect(),
                    "none",
                ),
            },
            Field {
                label: "Disabled",
                value: if *disabled { "yes" } else { "no" }.to_owned(),
            },
            Field {
                label: "Expires",
                value: time(expiration, "never"),
            },
            Field {
                label: "Created",
                value: time(&Some(*created_at), ""),
            },
            Field {
                label: "Created by",
                value: if created_by.is_empty() {
                    "unknown".to_owned()
                } else {
                    created_by.clone()
                },
            },
            Field {
                label: "Updated",
                value: time(&Some(*updated_at), ""),
            },
            Field {
                label: "Last used",
                value: time(last_used_at, "never"),
            },
            Field {
                label: "Previous secret",
                value: previous_secret.map_or_else(
                    || "none".to_owned(),
                    |p| {
                        format!(
                            "works until {}; last used {}",
                            when(p.expiration),
                            time(&p.last_used_at, "never")
                        )
                    },
                ),
            },
            Field {
                label: "Allowed sources",
                value: list(sources.texts(), "any"),
            },
            Field {
                label: "Audiences",
                value: list(audiences.as_slice().to_vec(), "any"),
            },
            Field {
                label: "Allowed routes",
                value: list(
                    RouteParts::of(routes).iter().map(route_text).collect(),
                    "any",
                ),
            },
            Field {
                label: "Rate limits",
                value: list(
                    rate_limits
                        .as_slice()
                        .iter()
                        .map(|l| l.to_string())
                        .collect(),
                    "none",
                ),
            },
            Field {
                label: "Owners",
                value: list(
                    owners.ids().iter().map(|o| o.to_string()).collect(),
                    "none (an admin's)",
                ),
            },
            Field {
                label: "Lifetime",
                value: lifetime.map_or_else(|| "not kept".to_owned(), span_text),
            },
            Field {
                label: "Etag",
                value: Etag::of(token).to_string(),
            },
        ];
        let seen = recent_sources
            .iter()
            .map(|(address, at)| Seen {
                address: address.to_string(),
                at: format!("{} ({})", when(at), relative(at, now)),
            })
            .collect();
        (fields, seen)
    }
}

/// A route rule as one line: its methods (if any), then its pattern.
pub fn route_text(route: &RouteParts) -> String {
    if route.methods.is_empty() {
        route.path.clone()
    } else {
        format!("{} {}", route.methods.join(","), route.path)
    }
}

/// The create and edit form's values, as text.
#[derive(Default)]
pub struct TokenForm {
    pub name: String,
    pub roles: String,
    pub description: String,
    pub labels: String,
    pub expiration: String,
    pub sources: String,
    pub audiences: String,
    pub routes: String,
    pub rate_limits: String,
}

#[derive(Template)]
#[template(path = "console/form.html")]
pub struct FormPage {
    pub base: Base,
    /// `None`: a new token; else the token edited, with its etag.
    pub editing: Option<(u64, String)>,
    pub form: TokenForm,
    pub default_lifetime: String,
    pub max_lifetime: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "console/secret.html")]
pub struct SecretPage {
    pub base: Base,
    pub id: u64,
    pub name: String,
    /// `created` or `rotated`.
    pub what: &'static str,
    pub secret: String,
    pub grace: String,
}

/// A day's usage as the chart reads it.
pub fn usage_totals(days: &[DayUsage]) -> Vec<(String, u64, u64)> {
    days.iter()
        .map(|day| {
            let valid = day.counts.get(crate::model::Outcome::Valid);
            let all = day.counts.total();
            (day.day.date(), valid, all.saturating_sub(valid))
        })
        .collect()
}
