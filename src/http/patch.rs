//! REST's names of a token's fields where they differ from the API's, and
//! the JSON merge patch (RFC 7396) `PATCH /api/security/tokens/{id}` takes,
//! read into an `Edit`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::{
    AllowedSources, Audiences, Description, Edit, FieldError, LabelEdit, Labels, Owners, Roles,
    RouteParts, TokenName, parse_epoch_millis,
};

use super::api::RateLimitJson;
use super::decode;

/// What StackState's REST calls a new token's expiration.
pub(super) const EXPIRY_DATE: &str = "expiryDate";

/// REST's names of the bindings.
pub(super) const ALLOWED_SOURCES: &str = "allowedSources";
pub(super) const AUDIENCES: &str = "audiences";
pub(super) const ALLOWED_ROUTES: &str = "allowedRoutes";
/// REST's name of the rate limits.
pub(super) const RATE_LIMITS: &str = "rateLimits";
/// REST's name of a token's owner.
pub(super) const OWNER_ID: &str = "ownerId";

/// A JSON merge patch (RFC 7396) of `name`, `roles`, `expiryDate`,
/// `description`, `labels`, `disabled` and the bindings: a member present
/// is changed, `null` removes what can be removed (`expiryDate`: never
/// expires; `description`; `labels`, or one label within it; a binding,
/// which `[]` removes as well). A binding is replaced whole (RFC 7396
/// replaces arrays).
pub(super) fn patch_edit(patch: &Value) -> Result<Edit, FieldError> {
    let Some(members) = patch.as_object() else {
        return Err(FieldError::new(
            "body",
            "must be a JSON object (a merge patch)",
        ));
    };
    let mut edit = Edit::default();
    let text = |field: &str, value: &Value| -> Result<String, FieldError> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| FieldError::new(field, "must be a string"))
    };
    for (field, value) in members {
        match (field.as_str(), value) {
            ("name" | "roles" | "disabled", Value::Null) => {
                return Err(FieldError::new(field.as_str(), "cannot be removed"));
            }
            ("name", value) => edit.name = Some(TokenName::parse(&text("name", value)?)?),
            ("roles", value) => {
                let roles: Vec<String> = serde_json::from_value(value.clone())
                    .map_err(|_| FieldError::new("roles", "must be an array of strings"))?;
                edit.roles = Some(Roles::parse(&roles)?);
            }
            (EXPIRY_DATE, Value::Null) => edit.expiration = Some(None),
            (EXPIRY_DATE, value) => {
                let ms = value
                    .as_i64()
                    .ok_or_else(|| FieldError::new(EXPIRY_DATE, "must be epoch milliseconds"))?;
                edit.expiration = Some(Some(parse_epoch_millis(EXPIRY_DATE, ms)?));
            }
            ("description", Value::Null) => edit.description = Some(Description::default()),
            ("description", value) => {
                edit.description = Some(Description::parse(&text("description", value)?)?);
            }
            ("labels", Value::Null) => {
                edit.labels = Some(LabelEdit::Replace(Labels::default()));
            }
            ("labels", Value::Object(changes)) => {
                // Merged into the token's labels as the store applies the
                // change: concurrent patches of different keys all land.
                let mut set: BTreeMap<String, String> = BTreeMap::new();
                let mut remove = std::collections::BTreeSet::new();
                for (key, value) in changes {
                    match value {
                        Value::Null => {
                            remove.insert(key.clone());
                        }
                        Value::String(value) => {
                            set.insert(key.clone(), value.clone());
                        }
                        _ => {
                            return Err(FieldError::new(
                                format!("labels[{key:?}]"),
                                "must be a string, or null to remove it",
                            ));
                        }
                    }
                }
                edit.labels = Some(LabelEdit::Merge {
                    set: Labels::parse(&set)?,
                    remove,
                });
            }
            ("labels", _) => {
                return Err(FieldError::new("labels", "must be an object, or null"));
            }
            (ALLOWED_SOURCES, value) => {
                let items: Vec<String> = binding_list(ALLOWED_SOURCES, value)?;
                edit.sources = Some(AllowedSources::parse(ALLOWED_SOURCES, &items)?);
            }
            (AUDIENCES, value) => {
                let items: Vec<String> = binding_list(AUDIENCES, value)?;
                edit.audiences = Some(Audiences::parse(AUDIENCES, &items)?);
            }
            (ALLOWED_ROUTES, value) => {
                let items: Vec<RouteParts> = binding_list(ALLOWED_ROUTES, value)?;
                edit.routes = Some(RouteParts::parse(ALLOWED_ROUTES, &items)?);
            }
            (RATE_LIMITS, value) => {
                let items: Vec<RateLimitJson> = binding_list(RATE_LIMITS, value)?;
                edit.rate_limits = Some(RateLimitJson::parse(RATE_LIMITS, &items)?);
            }
            (OWNER_ID, Value::Null) => edit.owners = Some(Owners::NONE),
            (OWNER_ID, value) => {
                let id = value.as_u64().ok_or_else(|| {
                    FieldError::new(OWNER_ID, "must be a token id, or null for none")
                })?;
                edit.owners = Some(Owners::requested(OWNER_ID, id)?);
            }
            ("disabled", value) => {
                edit.disabled = Some(
                    value
                        .as_bool()
                        .ok_or_else(|| FieldError::new("disabled", "must be true or false"))?,
                );
            }
            (other, _) => {
                // The client's key: repeated only when it looks like a
                // field name (a secret sent as a key is not).
                let field = if decode::plausible(other) {
                    other
                } else {
                    "body"
                };
                return Err(FieldError::new(
                    field,
                    "cannot be changed (name, roles, expiryDate, description, labels, disabled, allowedSources, audiences, allowedRoutes, rateLimits can)",
                ));
            }
        }
    }
    Ok(edit)
}

/// A binding's array in a patch (`null`: none), in fixed words when it is
/// not one: serde's would quote the value.
fn binding_list<T: serde::de::DeserializeOwned>(
    field: &str,
    value: &Value,
) -> Result<Vec<T>, FieldError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(value.clone()).map_err(|_| {
        FieldError::new(
            field,
            if field == ALLOWED_ROUTES {
                "must be an array of {\"methods\": [...], \"path\": \"...\"} objects, or null"
            } else {
                "must be an array of strings, or null"
            },
        )
    })
}
