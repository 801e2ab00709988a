//! Moving tokens between stores (sled to PostgreSQL, a backup and back) as
//! JSON lines: one token per line with its id, the hash of its secret (never
//! the secret, which no store has; during a rotation's grace period the
//! previous secret's hash too) and every other field. Fields at their
//! default (no description, no labels, enabled, never used...) are left
//! out, so an export of the first release imports as it is.
//!
//! ```json
//! {"id":4503599627370495,"token_hash":"9f86…","name":"ci","roles":["deployer"],"created_at":"2026-11-28T10:00:00.123456Z","expiration":"2027-01-01T00:00:00Z","labels":{"team":"ci"},"created_by":"bootstrap","updated_at":"2026-11-28T10:00:00.123456Z"}
//! ```
//!
//! Importing keeps ids and hashes, so every exported token keeps working;
//! a token already there is left alone, so an import can be repeated.

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::{
    model::{
        Bindings, FieldError, LimitParts, ListFilter, RouteParts, SeenSource, ServiceToken,
        StoredParts, StoredToken, parse_time,
    },
    store::{Imported, Store, StoreError},
};

/// Tokens per store call, both ways.
const BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("cannot read the import: {0}")]
    Read(std::io::Error),
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: u64,
    token_hash: String,
    name: String,
    roles: Vec<String>,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_last_used_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_routes: Vec<RouteParts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent_sources: Vec<SourceLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sources_announced_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<LimitParts>,
    /// The chain of managers above the token, its direct owner first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    owners: Vec<u64>,
    /// What a self-rotation renews it for, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime_micros: Option<u64>,
    /// Retired secrets' hashes, hex, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired_hashes: Vec<String>,
}

/// A recent source in an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceLine {
    address: String,
    at: String,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Every time a store holds came through `parse_time` (years 1..=9999), so
/// RFC 3339 can write it; a time it cannot is reported, never written garbled.
fn rfc3339(time: SystemTime) -> Result<String, StoreError> {
    crate::clock::rfc3339_nanos(time).ok_or_else(|| StoreError::Corrupt {
        context: "a time out of range".to_owned(),
        source: None,
    })
}

fn parse_rfc3339(field: &str, text: &str) -> Result<SystemTime, FieldError> {
    let (seconds, nanos) = crate::clock::parse_rfc3339(text).ok_or_else(|| {
        FieldError::new(field, "must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z")
    })?;
    let nanos = i32::try_from(nanos).expect("nanoseconds fit an i32");
    parse_time(field, seconds, nanos)
}

impl Line {
    fn of(stored: &StoredToken) -> Result<Line, StoreError> {
        // Every field named: an export carries every one.
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
                },
            hash,
            previous_hash,
            retired,
        } = stored;
        let time = |t: Option<SystemTime>| t.map(rfc3339).transpose();
        Ok(Line {
            id: id.get(),
            token_hash: hex::encode(hash.as_bytes()),
            name: name.as_str().to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            created_at: rfc3339(*created_at)?,
            expiration: time(*expiration)?,
            description: description.as_str().to_owned(),
            labels: labels.as_map().clone(),
            disabled: *disabled,
            last_used_at: time(*last_used_at)?,
            created_by: created_by.clone(),
            updated_at: Some(rfc3339(*updated_at)?),
            previous_hash: previous_hash.map(|h| hex::encode(h.as_bytes())),
            previous_expiration: time(previous_secret.map(|p| p.expiration))?,
            previous_last_used_at: time(previous_secret.and_then(|p| p.last_used_at))?,
            allowed_sources: sources.texts(),
            audiences: audiences.as_slice().to_vec(),
            allowed_routes: RouteParts::of(routes),
            recent_sources: SeenSource::of(recent_sources)
                .into_iter()
                .map(|SeenSource { address, at }| {
                    Ok(SourceLine {
                        address,
                        at: rfc3339(at)?,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            sources_announced_at: time(recent_sources.announced_at())?,
            rate_limits: LimitParts::of(rate_limits),
            owners: owners.numbers(),
            lifetime_micros: lifetime.map(|l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX)),
            retired_hashes: retired.iter().map(|h| hex::encode(h.as_bytes())).collect(),
        })
    }

    /// Parse, don't trust: an import is untrusted input like any request.
    fn parse(&self) -> Result<StoredToken, FieldError> {
        let hash = |field: &str, text: &str| {
            hex::decode(text)
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(|| FieldError::new(field, "must be 64 hex digits"))
        };
        let time = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_rfc3339(field, text))
                .transpose()
        };
        let token_hash = hash("token_hash", &self.token_hash)?;
        let previous_hash = self
            .previous_hash
            .as_deref()
            .map(|text| hash("previous_hash", text))
            .transpose()?;
        let retired = self
            .retired_hashes
            .iter()
            .map(|text| hash("retired_hashes", text))
            .collect::<Result<Vec<_>, _>>()?;
        let recent_sources = self
            .recent_sources
            .iter()
            .map(|source| {
                Ok(SeenSource {
                    address: source.address.clone(),
                    at: parse_rfc3339("recent_sources", &source.at)?,
                })
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        StoredToken::from_parts(StoredParts {
            id: self.id,
            hash: &token_hash,
            name: &self.name,
            roles: &self.roles,
            expiration: time("expiration", &self.expiration)?,
            created_at: parse_rfc3339("created_at", &self.created_at)?,
            description: &self.description,
            labels: &self.labels,
            disabled: self.disabled,
            last_used_at: time("last_used_at", &self.last_used_at)?,
            created_by: &self.created_by,
            updated_at: time("updated_at", &self.updated_at)?,
            previous_hash: previous_hash.as_deref(),
            previous_expiration: time("previous_expiration", &self.previous_expiration)?,
            previous_last_used_at: time("previous_last_used_at", &self.previous_last_used_at)?,
            allowed_sources: &self.allowed_sources,
            audiences: &self.audiences,
            allowed_routes: &self.allowed_routes,
            recent_sources: &recent_sources,
            sources_announced_at: time("sources_announced_at", &self.sources_announced_at)?,
            rate_limits: &self.rate_limits,
            owners: &self.owners,
            lifetime: self.lifetime_micros.map(std::time::Duration::from_micros),
            retired: &retired,
        })
    }
}

/// Writes every token in `store`, in id order; returns how many.
pub async fn export(store: &dyn Store, out: &mut impl Write) -> Result<u64, ExportError> {
    let mut after = None;
    let mut written = 0;
    loop {
        let page = store
            .list_matching(after, BATCH, &ListFilter::default())
            .await?;
        for stored in &page {
            let line = serde_json::to_string(&Line::of(stored)?).expect("a Line serializes");
            writeln!(out, "{line}").map_err(ExportError::Write)?;
            written += 1;
        }
        match page.last() {
            Some(last) if page.len() == BATCH => after = Some(last.token.id),
            _ => break,
        }
    }
    out.flush().map_err(ExportError::Write)?;
    Ok(written)
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub added: u64,
    pub already_there: u64,
    /// Tokens left out because their id or hash is another token's here.
    pub conflicts: Vec<String>,
}

/// Reads an export and adds its tokens to `store`, a batch at a time, each
/// batch durable before the next is read. Stops at the first line that is
/// not a valid token, naming it; the batches before it stay imported, and
/// since importing is idempotent, running the fixed file again finishes it.
pub async fn import(store: &dyn Store, input: impl BufRead) -> Result<ImportSummary, ExportError> {
    let mut summary = ImportSummary::default();
    let mut batch = Vec::with_capacity(BATCH);
    for (index, line) in input.lines().enumerate() {
        let text = line.map_err(ExportError::Read)?;
        if text.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| ExportError::Line {
            line: index + 1,
            problem,
        };
        let parsed: Line = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        batch.push(parsed.parse().map_err(|e| bad(e.to_string()))?);
        if batch.len() == BATCH {
            import_batch(store, &mut batch, &mut summary).await?;
        }
    }
    import_batch(store, &mut batch, &mut summary).await?;
    Ok(summary)
}

async fn import_batch(
    store: &dyn Store,
    batch: &mut Vec<StoredToken>,
    summary: &mut ImportSummary,
) -> Result<(), ExportError> {
    if batch.is_empty() {
        return Ok(());
    }
    for outcome in store.import(batch).await? {
        match outcome {
            Imported::Added => summary.added += 1,
            Imported::AlreadyThere => summary.already_there += 1,
            Imported::Conflict(why) => summary.conflicts.push(why),
        }
    }
    batch.clear();
    Ok(())
}
