//! Who owns a token: the chain of manager tokens above it (`Owners`),
//! direct owner first.

use std::fmt;

use super::fields::FieldError;
use super::fields::TokenId;
use super::shared::Shared;

/// How many owners a chain holds at most: how deep managers may delegate.
/// A bound keeps every record, and every check of one, small.
pub const MAX_OWNER_DEPTH: usize = 8;

/// The manager tokens above a token, its direct owner first and the
/// topmost manager (one an admin made) last; empty for a token an admin or
/// bootstrap made. The whole chain is kept, not only the direct owner, so a
/// manager deleted in the middle leaves its tokens owned by the one above
/// without rewriting any of them: a manager owns every token whose chain
/// holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(Shared<TokenId>);

impl Owners {
    /// No owner: an admin's token.
    pub const NONE: Owners = Owners(Shared::NONE);

    /// The chain of a token `owner` makes, `owner`'s own chain being
    /// `above`: refused past [`MAX_OWNER_DEPTH`].
    pub fn under(field: &str, owner: TokenId, above: &Owners) -> Result<Owners, FieldError> {
        let chain: Vec<TokenId> = std::iter::once(owner)
            .chain(above.ids().iter().copied())
            .collect();
        if chain.len() > MAX_OWNER_DEPTH {
            return Err(FieldError::new(
                field,
                format!(
                    "would put the token {} managers deep; delegation goes at most {MAX_OWNER_DEPTH} deep",
                    chain.len()
                ),
            ));
        }
        Ok(Owners(Shared::of(chain)))
    }

    /// A chain as a store or an export keeps it, re-checked: ids valid,
    /// none twice, at most [`MAX_OWNER_DEPTH`].
    pub fn parse(field: &str, ids: &[u64]) -> Result<Owners, FieldError> {
        if ids.len() > MAX_OWNER_DEPTH {
            return Err(FieldError::new(
                field,
                format!("holds more than {MAX_OWNER_DEPTH} owners"),
            ));
        }
        let mut chain = Vec::with_capacity(ids.len());
        for &id in ids {
            let id = TokenId::parse(id).map_err(|e| FieldError::new(field, e.problem))?;
            if chain.contains(&id) {
                return Err(FieldError::new(field, "names one owner twice"));
            }
            chain.push(id);
        }
        Ok(Owners(Shared::of(chain)))
    }

    /// What an update asking for owner `id` (0: none) gives the service:
    /// the direct owner alone, which the service completes with that
    /// owner's own chain.
    pub fn requested(field: &str, id: u64) -> Result<Owners, FieldError> {
        match id {
            0 => Ok(Owners::NONE),
            id => Owners::parse(field, &[id]),
        }
    }

    /// The direct owner: the manager that made the token, or the one an
    /// admin gave it to.
    pub fn direct(&self) -> Option<TokenId> {
        self.ids().first().copied()
    }

    /// Whether `manager` is in the chain: owns the token, directly or
    /// through the tokens it made.
    pub fn include(&self, manager: TokenId) -> bool {
        self.ids().contains(&manager)
    }

    pub fn ids(&self) -> &[TokenId] {
        self.0.as_slice()
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    /// As stores and exports keep it.
    pub fn numbers(&self) -> Vec<u64> {
        self.ids().iter().map(|id| id.get()).collect()
    }
}

impl fmt::Display for Owners {
    /// `7 < 5 < 3`: the direct owner first, `none` for an admin's token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, id) in self.ids().iter().enumerate() {
            if i > 0 {
                f.write_str(" < ")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}
