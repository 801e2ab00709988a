//! Who a valid token is: what the layer puts into a request's extensions
//! and the axum extractor hands a handler.

use std::{collections::BTreeMap, time::SystemTime};

use sts_api::proto;

/// A valid token's identity. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The token's id.
    pub id: u64,
    /// The token's name.
    pub name: String,
    /// The roles it holds.
    pub roles: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it expires, if it does.
    pub expiration: Option<SystemTime>,
    /// It was presented with its previous secret, still in a rotation's
    /// grace period: its holder should switch to the new one.
    pub previous_secret: bool,
}

impl Identity {
    /// Whether the token holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub(crate) fn from_answer(token: proto::ServiceToken, previous_secret: bool) -> Identity {
        Identity {
            id: token.id,
            name: token.name,
            roles: token.roles,
            labels: token.labels,
            expiration: token.expiration.and_then(time),
            previous_secret,
        }
    }
}

/// A protobuf timestamp as a time, if it is one.
pub(crate) fn time(at: prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(at).ok()
}
