//! sled's record codec: a token as one versioned protobuf record
//! (`RECORD_FORMAT`), and the times in it.

use std::{collections::BTreeMap, time::SystemTime};

use prost::Message;

use crate::model::{
    Bindings, LimitParts, RecentSources, RouteParts, SeenSource, ServiceToken, StoredParts,
    StoredToken,
};
use crate::store::{Cause, StoreError};

/// The newest record format this release writes and reads. Records of
/// the first release carry no format (read as 0) and none of the fields
/// from tag 7 on; a record from a later release than this one is refused,
/// not misread.
pub(super) const RECORD_FORMAT: u32 = LIMITED_FORMAT;

/// The format of a record of a token without bindings: the previous
/// release reads it (and drops only its recent sources, which it does not
/// know), so a rollback keeps every such token.
const UNBOUND_FORMAT: u32 = 2;

/// The format of a bound token's record. The previous release refuses it
/// rather than serve the token without its bindings: a rollback never
/// widens what a token may do.
const BOUND_FORMAT: u32 = 3;

/// The format of a record of a token with rate limits (bound or not):
/// releases before limits refuse it rather than serve the token
/// unlimited, as they refuse a bound one.
const LIMITED_FORMAT: u32 = 4;

/// The on-disk form of one token. Tags are a storage format: never reuse one.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    #[prost(uint64, tag = "1")]
    pub(super) id: u64,
    #[prost(string, tag = "2")]
    pub(super) name: String,
    #[prost(string, repeated, tag = "3")]
    pub(super) roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    pub(super) expiration: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub(super) created_at: Option<prost_types::Timestamp>,
    #[prost(bytes = "vec", tag = "6")]
    pub(super) token_hash: Vec<u8>,
    #[prost(string, tag = "7")]
    pub(super) description: String,
    #[prost(btree_map = "string, string", tag = "8")]
    pub(super) labels: BTreeMap<String, String>,
    #[prost(bool, tag = "9")]
    pub(super) disabled: bool,
    #[prost(message, optional, tag = "10")]
    pub(super) last_used_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "11")]
    pub(super) created_by: String,
    #[prost(message, optional, tag = "12")]
    pub(super) updated_at: Option<prost_types::Timestamp>,
    #[prost(bytes = "vec", optional, tag = "13")]
    pub(super) previous_hash: Option<Vec<u8>>,
    #[prost(message, optional, tag = "14")]
    pub(super) previous_expiration: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "15")]
    pub(super) previous_last_used_at: Option<prost_types::Timestamp>,
    #[prost(uint32, tag = "16")]
    pub(super) format: u32,
    #[prost(string, repeated, tag = "17")]
    pub(super) allowed_sources: Vec<String>,
    #[prost(string, repeated, tag = "18")]
    pub(super) audiences: Vec<String>,
    #[prost(message, repeated, tag = "19")]
    pub(super) allowed_routes: Vec<RouteRecord>,
    #[prost(message, repeated, tag = "20")]
    pub(super) recent_sources: Vec<SourceRecord>,
    #[prost(message, optional, tag = "21")]
    pub(super) sources_announced_at: Option<prost_types::Timestamp>,
    #[prost(message, repeated, tag = "22")]
    pub(super) rate_limits: Vec<LimitRecord>,
    /// Read by releases before delegation as nothing at all: ownership
    /// only ever narrows who manages a token, so no format step guards it.
    #[prost(uint64, repeated, tag = "23")]
    pub(super) owners: Vec<u64>,
    #[prost(uint64, optional, tag = "24")]
    pub(super) lifetime_micros: Option<u64>,
    /// Retired secrets' hashes, newest first; indexed in the `retired`
    /// tree, apart from `by_hash`, so a release before them, reading
    /// `by_hash` alone, never meets an entry it cannot explain.
    #[prost(bytes = "vec", repeated, tag = "25")]
    pub(super) retired_hashes: Vec<Vec<u8>>,
}

/// One rate limit of a record.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LimitRecord {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    #[prost(uint64, tag = "2")]
    pub(super) limit: u64,
    #[prost(uint64, tag = "3")]
    pub(super) period_secs: u64,
}

/// One allowed route of a record.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RouteRecord {
    #[prost(string, repeated, tag = "1")]
    pub(super) methods: Vec<String>,
    #[prost(string, tag = "2")]
    pub(super) path: String,
}

/// One recent source of a record.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SourceRecord {
    #[prost(string, tag = "1")]
    pub(super) address: String,
    #[prost(message, optional, tag = "2")]
    pub(super) seen_at: Option<prost_types::Timestamp>,
}

/// The token id a `tokens` key holds, for a log line about its record.
pub(super) fn key_id(key: &[u8]) -> String {
    <[u8; 8]>::try_from(key).map_or_else(
        |_| format!("{key:?}"),
        |id| u64::from_be_bytes(id).to_string(),
    )
}

impl Record {
    pub(super) fn of(stored: &StoredToken) -> Record {
        // Every field named: a new one must decide how the record keeps it.
        let StoredToken {
            token:
                ServiceToken {
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
                    bindings,
                    recent_sources,
                    rate_limits,
                    owners,
                    lifetime,
                },
            hash,
            previous_hash,
            retired,
        } = stored;
        let Bindings {
            sources,
            audiences,
            routes,
        } = bindings;
        Record {
            id: id.get(),
            name: name.as_str().to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            expiration: expiration.map(Into::into),
            created_at: Some((*created_at).into()),
            token_hash: hash.as_bytes().to_vec(),
            description: description.as_str().to_owned(),
            labels: labels.as_map().clone(),
            disabled: *disabled,
            last_used_at: last_used_at.map(Into::into),
            created_by: created_by.clone(),
            updated_at: Some((*updated_at).into()),
            previous_hash: previous_hash.map(|h| h.as_bytes().to_vec()),
            previous_expiration: previous_secret.map(|p| p.expiration.into()),
            previous_last_used_at: previous_secret.and_then(|p| p.last_used_at).map(Into::into),
            format: if !rate_limits.is_empty() {
                LIMITED_FORMAT
            } else if !bindings.is_empty() {
                BOUND_FORMAT
            } else {
                UNBOUND_FORMAT
            },
            allowed_sources: sources.texts(),
            audiences: audiences.as_slice().to_vec(),
            allowed_routes: RouteParts::of(routes)
                .into_iter()
                .map(|RouteParts { methods, path }| RouteRecord { methods, path })
                .collect(),
            recent_sources: SeenSource::of(recent_sources)
                .into_iter()
                .map(|SeenSource { address, at }| SourceRecord {
                    address,
                    seen_at: Some(at.into()),
                })
                .collect(),
            sources_announced_at: recent_sources.announced_at().map(Into::into),
            rate_limits: LimitParts::of(rate_limits)
                .into_iter()
                .map(
                    |LimitParts {
                         name,
                         limit,
                         period_secs,
                     }| LimitRecord {
                        name,
                        limit,
                        period_secs,
                    },
                )
                .collect(),
            owners: owners.numbers(),
            lifetime_micros: lifetime.map(|l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX)),
            retired_hashes: retired.iter().map(|h| h.as_bytes().to_vec()).collect(),
        }
    }

    pub(super) fn decode_checked(bytes: &[u8]) -> Result<Record, StoreError> {
        let record = Record::decode(bytes)
            .map_err(|e| StoreError::corrupt("a token record is undecodable", e))?;
        if record.format > RECORD_FORMAT {
            return Err(StoreError::Corrupt {
                context: format!(
                    "token {}: its record has format {}, written by a later release (this one reads formats up to {RECORD_FORMAT})",
                    record.id, record.format
                ),
                source: None,
            });
        }
        Ok(record)
    }

    /// Re-parses everything, so a damaged record is reported, never served.
    pub(super) fn decode_stored(bytes: &[u8]) -> Result<StoredToken, StoreError> {
        let record = Record::decode_checked(bytes)?;
        let corrupt = |e: Cause| StoreError::corrupt(format!("token {}", record.id), e);
        let time =
            |ts: prost_types::Timestamp| SystemTime::try_from(ts).map_err(|e| corrupt(e.into()));
        let created_at = record
            .created_at
            .ok_or_else(|| corrupt("the record has no created_at".into()))?;
        let allowed_routes: Vec<RouteParts> = record
            .allowed_routes
            .iter()
            .map(|route| RouteParts {
                methods: route.methods.clone(),
                path: route.path.clone(),
            })
            .collect();
        let recent_sources = record
            .recent_sources
            .iter()
            .map(|source| {
                let at = source
                    .seen_at
                    .ok_or_else(|| corrupt("a recent source has no time".into()))?;
                Ok(SeenSource {
                    address: source.address.clone(),
                    at: time(at)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rate_limits: Vec<LimitParts> = record
            .rate_limits
            .iter()
            .map(|limit| LimitParts {
                name: limit.name.clone(),
                limit: limit.limit,
                period_secs: limit.period_secs,
            })
            .collect();
        StoredToken::from_parts(StoredParts {
            id: record.id,
            hash: &record.token_hash,
            name: &record.name,
            roles: &record.roles,
            expiration: record.expiration.map(time).transpose()?,
            created_at: time(created_at)?,
            description: &record.description,
            labels: &record.labels,
            disabled: record.disabled,
            last_used_at: record.last_used_at.map(time).transpose()?,
            created_by: &record.created_by,
            updated_at: record.updated_at.map(time).transpose()?,
            previous_hash: record.previous_hash.as_deref(),
            previous_expiration: record.previous_expiration.map(time).transpose()?,
            previous_last_used_at: record.previous_last_used_at.map(time).transpose()?,
            allowed_sources: &record.allowed_sources,
            audiences: &record.audiences,
            allowed_routes: &allowed_routes,
            recent_sources: &recent_sources,
            sources_announced_at: record.sources_announced_at.map(time).transpose()?,
            rate_limits: &rate_limits,
            owners: &record.owners,
            lifetime: record.lifetime_micros.map(std::time::Duration::from_micros),
            retired: &record.retired_hashes,
        })
        .map_err(|e| corrupt(e.into()))
    }
}

impl Record {
    /// The record's recent sources. An entry this release cannot read is
    /// dropped: it is usage, and a merge keeps only the newest anyway.
    pub(super) fn recent_sources(&self) -> RecentSources {
        let kept = self.recent_sources.iter().filter_map(|source| {
            let address = source.address.parse().ok()?;
            let at = SystemTime::try_from(source.seen_at?).ok()?;
            Some((address, at))
        });
        let announced_at = self
            .sources_announced_at
            .and_then(|ts| SystemTime::try_from(ts).ok());
        RecentSources::read_back(kept, announced_at)
    }

    pub(super) fn set_recent_sources(&mut self, recent: &RecentSources) {
        self.recent_sources = SeenSource::of(recent)
            .into_iter()
            .map(|SeenSource { address, at }| SourceRecord {
                address,
                seen_at: Some(at.into()),
            })
            .collect();
        self.sources_announced_at = recent.announced_at().map(Into::into);
    }
}

/// The later of two optional times, as a record keeps it.
pub(super) fn latest(
    kept: Option<prost_types::Timestamp>,
    at: SystemTime,
) -> Option<prost_types::Timestamp> {
    let kept_time = kept.and_then(|ts| SystemTime::try_from(ts).ok());
    match kept_time {
        Some(kept_time) if kept_time >= at => kept,
        _ => Some(at.into()),
    }
}

/// For the fuzz target: a stored record's bytes decoded as every read
/// decodes them; an error, never a panic, for any bytes.
#[doc(hidden)]
pub fn decode_record(bytes: &[u8]) -> Result<StoredToken, StoreError> {
    Record::decode_stored(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AllowedSources, Audiences};

    #[test]
    fn only_a_bound_or_limited_tokens_record_is_of_a_format_earlier_releases_refuse() {
        let (_, mut stored) = StoredToken::sample();
        let record = Record::of(&stored);
        assert_eq!(record.format, UNBOUND_FORMAT);
        assert_eq!(
            Record::decode_stored(&record.encode_to_vec()).unwrap(),
            stored
        );
        for bindings in [
            Bindings {
                sources: AllowedSources::parse("s", &["10.0.0.0/8"]).unwrap(),
                ..Bindings::default()
            },
            Bindings {
                audiences: Audiences::parse("a", &["ci"]).unwrap(),
                ..Bindings::default()
            },
        ] {
            stored.token.bindings = bindings;
            let record = Record::of(&stored);
            assert_eq!(record.format, BOUND_FORMAT);
            assert_eq!(
                Record::decode_stored(&record.encode_to_vec()).unwrap(),
                stored
            );
        }
        stored.token.rate_limits =
            crate::model::RateLimits::parse_texts("r", &["burst=20/1s"]).unwrap();
        for bindings in [stored.token.bindings.clone(), Bindings::default()] {
            stored.token.bindings = bindings;
            let record = Record::of(&stored);
            assert_eq!(record.format, LIMITED_FORMAT);
            assert_eq!(
                Record::decode_stored(&record.encode_to_vec()).unwrap(),
                stored
            );
        }
        // A later release's record is refused, not read without what it adds.
        let mut later = Record::of(&stored);
        later.format = RECORD_FORMAT + 1;
        assert!(Record::decode_stored(&later.encode_to_vec()).is_err());
    }
}
