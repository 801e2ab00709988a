//! `Shared`, a list of a token's bindings as a token holds it.

use std::{fmt, sync::Arc};

/// A list of a token's bindings: a cached token is cloned for every
/// check, so a clone shares the list (one count) and an empty list, the
/// common case, is nothing at all (no count to touch).
#[derive(Clone)]
pub(super) struct Shared<T>(Option<Arc<[T]>>);

impl<T> Shared<T> {
    pub(super) const NONE: Shared<T> = Shared(None);

    pub(super) fn of(items: Vec<T>) -> Shared<T> {
        Shared((!items.is_empty()).then(|| items.into()))
    }

    pub(super) fn as_slice(&self) -> &[T] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Shared<T> {
        Shared(None)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}
