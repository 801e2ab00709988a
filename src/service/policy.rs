//! The operator's policies a change is held to: the lifetime policy
//! (`--max-token-lifetime`, `--max-token-age`), the longest rotation grace
//! and the source-binding requirement.

use std::time::{Duration, SystemTime};

use crate::{clock::to_micros, error::Error, model::FieldError};

use super::TokenService;

impl TokenService {
    /// Until when a rotation's previous secret works: `grace` from `now`,
    /// which may be no longer than `--max-rotation-grace`.
    pub(super) fn grace_until(
        &self,
        grace: Duration,
        now: SystemTime,
    ) -> Result<SystemTime, Error> {
        let max = self.config.max_rotation_grace;
        if grace > max {
            return Err(FieldError::new(
                "grace_period",
                format!(
                    "is longer than this server's maximum rotation grace of {} (--max-rotation-grace)",
                    crate::config::lifetime_text(max)
                ),
            )
            .into());
        }
        Ok(now
            .checked_add(grace)
            .map(to_micros)
            .ok_or_else(|| FieldError::new("grace_period", "is too long"))?)
    }

    /// Refused when the server requires every token to be bound to
    /// sources (`--require-source-binding`); for a token left without any.
    pub(super) fn source_binding_required(&self) -> Result<(), Error> {
        if self.config.require_source_binding {
            return Err(FieldError::new(
                "allowed_sources",
                "is required: this server requires every token to be bound to the sources it is used from (--require-source-binding)",
            )
            .into());
        }
        Ok(())
    }

    /// Whether a token made at `created_at` and expiring at `expiration`
    /// (`None`: never) obeys, from `now`, the maximum lifetime and age.
    pub(super) fn within_policy(
        &self,
        expiration: Option<SystemTime>,
        now: SystemTime,
        created_at: SystemTime,
    ) -> Result<(), Error> {
        if let Some(max) = self.config.lifetime.max() {
            let allowed = now.checked_add(max);
            if expiration.is_none_or(|e| allowed.is_some_and(|a| e > a)) {
                let limit = self.config.lifetime.max_text().unwrap_or_default();
                let problem = match expiration {
                    None => format!(
                        "is required: this server's maximum token lifetime is {limit}; give an expiration at most {limit} from now"
                    ),
                    Some(_) => format!(
                        "is beyond this server's maximum token lifetime of {limit}: give one at most {limit} from now"
                    ),
                };
                return Err(FieldError::new("expiration", problem).into());
            }
        }
        if let Some(age) = self.config.lifetime.max_age() {
            let allowed = created_at.checked_add(age);
            if expiration.is_none_or(|e| allowed.is_some_and(|a| e > a)) {
                let limit = crate::config::lifetime_text(age);
                let until = allowed.map_or_else(String::new, |a| {
                    format!(" (for this token, {})", crate::clock::rfc3339_micros(a))
                });
                return Err(FieldError::new(
                    "expiration",
                    format!(
                        "must be at most {limit} after the token was made{until}: this server's maximum token age (--max-token-age)"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
