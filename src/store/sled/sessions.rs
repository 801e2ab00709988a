//! sled's `sessions` tree: a console session under the SHA-256 of its id,
//! as a versioned fixed-width record. Runs on the offload lanes.

use std::time::SystemTime;

use async_trait::async_trait;

use crate::model::{Session, SessionKey, TokenId, from_micros, micros};
use crate::store::{Sessions, StoreError};
use crate::token::TokenHash;

use super::{SledStore, Trees, unavailable};

/// The format of a session record: this byte, the token's id (8 bytes),
/// the hash of its secret (32), when it began and when it was last seen
/// (microseconds since the epoch, 8 each), all big-endian.
const SESSION_FORMAT: u8 = 1;
const SESSION_BYTES: usize = 1 + 8 + 32 + 8 + 8;

fn encode(session: &Session) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SESSION_BYTES);
    bytes.push(SESSION_FORMAT);
    bytes.extend_from_slice(&session.token_id.get().to_be_bytes());
    bytes.extend_from_slice(session.token_hash.as_bytes());
    bytes.extend_from_slice(&micros(session.created_at).to_be_bytes());
    bytes.extend_from_slice(&micros(session.seen_at).to_be_bytes());
    bytes
}

/// A record's session; an unreadable one is no session (it signs nobody in).
fn decode(key: SessionKey, bytes: &[u8]) -> Option<Session> {
    if bytes.len() != SESSION_BYTES || bytes[0] != SESSION_FORMAT {
        return None;
    }
    let number = |at: usize| <[u8; 8]>::try_from(&bytes[at..at + 8]).ok();
    Some(Session {
        key,
        token_id: TokenId::parse(u64::from_be_bytes(number(1)?)).ok()?,
        token_hash: TokenHash::from_bytes(&bytes[9..41])?,
        created_at: from_micros(i64::from_be_bytes(number(41)?)),
        seen_at: from_micros(i64::from_be_bytes(number(49)?)),
    })
}

impl Trees {
    fn touch(&self, key: &SessionKey, at: SystemTime) -> Result<(), StoreError> {
        let update = |old: Option<&[u8]>| {
            let mut session = decode(*key, old?)?;
            session.seen_at = session.seen_at.max(at);
            Some(encode(&session))
        };
        self.sessions
            .update_and_fetch(key.as_bytes(), update)
            .map_err(unavailable)?;
        Ok(())
    }

    fn end_stale_sessions(
        &self,
        seen_before: SystemTime,
        begun_before: SystemTime,
    ) -> Result<u64, StoreError> {
        let mut ended = 0;
        for entry in self.sessions.iter() {
            let (key, bytes) = entry.map_err(unavailable)?;
            let stale = SessionKey::from_bytes(&key)
                .and_then(|k| decode(k, &bytes))
                .is_none_or(|s| s.seen_at < seen_before || s.created_at < begun_before);
            if stale {
                self.sessions.remove(&key).map_err(unavailable)?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}

#[async_trait]
impl Sessions for SledStore {
    async fn open_session(&self, session: &Session) -> Result<(), StoreError> {
        let (key, record) = (session.key, encode(session));
        self.write(move |trees| {
            trees.check_space()?;
            trees
                .sessions
                .insert(key.as_bytes(), record)
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        self.sync().await
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let key = *key;
        self.read(move |trees| {
            let bytes = trees.sessions.get(key.as_bytes()).map_err(unavailable)?;
            Ok(bytes.and_then(|bytes| decode(key, &bytes)))
        })
        .await
    }

    async fn touch_sessions(&self, seen: &[(SessionKey, SystemTime)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let seen = seen.to_vec();
        self.write(move |trees| {
            for (key, at) in &seen {
                trees.touch(key, *at)?;
            }
            Ok(())
        })
        .await
    }

    async fn end_session(&self, key: &SessionKey) -> Result<(), StoreError> {
        let key = *key;
        self.write(move |trees| {
            trees.sessions.remove(key.as_bytes()).map_err(unavailable)?;
            Ok(())
        })
        .await?;
        self.sync().await
    }

    async fn end_stale_sessions(
        &self,
        seen_before: SystemTime,
        begun_before: SystemTime,
    ) -> Result<u64, StoreError> {
        let ended = self
            .write(move |trees| trees.end_stale_sessions(seen_before, begun_before))
            .await?;
        if ended > 0 {
            self.sync().await?;
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_foreign_one_is_no_session() {
        let session = Session {
            key: SessionKey::of(b"id"),
            token_id: TokenId::parse(7).unwrap(),
            token_hash: TokenHash::from_bytes(&[3; 32]).unwrap(),
            created_at: from_micros(1_700_000_000_000_000),
            seen_at: from_micros(1_700_000_000_500_000),
        };
        let bytes = encode(&session);
        assert_eq!(decode(session.key, &bytes), Some(session.clone()));
        let mut later = bytes.clone();
        later[0] = 2;
        assert_eq!(decode(session.key, &later), None);
        assert_eq!(decode(session.key, &bytes[1..]), None);
    }
}
