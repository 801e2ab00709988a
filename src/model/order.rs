//! The order a list is in (`ListOrder`: by id, name, expiration, last use
//! or creation, either way) and where a page of it stops (`Position`): one
//! definition of each key's value, so sled's index, PostgreSQL's indexes
//! and the cursor all sort alike (a conformance test holds them to it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fields::{FieldError, TokenId};
use super::token::ServiceToken;

/// What a list is sorted by; every key is followed by the id, so the
/// order is total and a page boundary falls between two tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OrderKey {
    /// Creation order by id: the default, and what an empty `order_by` means.
    #[default]
    Id,
    /// By name, comparing UTF-8 bytes (code points), as `COLLATE "C"` does.
    Name,
    /// Soonest first; never-expiring tokens after every expiring one.
    Expiration,
    /// Least recently used first; never used before every used one.
    LastUsed,
    Created,
}

impl OrderKey {
    /// The indexed keys (all but `Id`, which is the store's own order),
    /// with their names in `order_by`.
    pub const INDEXED: [(OrderKey, &'static str); 4] = [
        (OrderKey::Name, "name"),
        (OrderKey::Expiration, "expiration"),
        (OrderKey::LastUsed, "last_used"),
        (OrderKey::Created, "created"),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderKey::Id => "id",
            OrderKey::Name => "name",
            OrderKey::Expiration => "expiration",
            OrderKey::LastUsed => "last_used",
            OrderKey::Created => "created",
        }
    }

    /// A byte of its own in sled's index keys and in cursors.
    pub fn tag(self) -> u8 {
        match self {
            OrderKey::Id => 0,
            OrderKey::Name => 1,
            OrderKey::Expiration => 2,
            OrderKey::LastUsed => 3,
            OrderKey::Created => 4,
        }
    }

    fn of_tag(tag: u8) -> Option<OrderKey> {
        [
            OrderKey::Id,
            OrderKey::Name,
            OrderKey::Expiration,
            OrderKey::LastUsed,
            OrderKey::Created,
        ]
        .into_iter()
        .find(|key| key.tag() == tag)
    }

    /// `token`'s value under this key.
    pub fn value_of(self, token: &ServiceToken) -> SortValue {
        match self {
            OrderKey::Id => SortValue::Micros(0),
            OrderKey::Name => SortValue::Text(token.name.as_str().to_owned()),
            OrderKey::Expiration => SortValue::Micros(token.expiration.map_or(NEVER, micros)),
            OrderKey::LastUsed => SortValue::Micros(token.last_used_at.map_or(NEVER_USED, micros)),
            OrderKey::Created => SortValue::Micros(micros(token.created_at)),
        }
    }
}

/// A list's order: `order_by` as AIP-132 writes it, a key and an optional
/// ` desc` (or ` asc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListOrder {
    pub key: OrderKey,
    pub descending: bool,
}

impl ListOrder {
    pub fn parse(order_by: &str) -> Result<ListOrder, FieldError> {
        let invalid = || {
            FieldError::new(
                "order_by",
                "must be one of name, expiration, last_used, created, each optionally followed by \" desc\" or \" asc\"",
            )
        };
        let mut words = order_by.split_ascii_whitespace();
        let Some(key) = words.next() else {
            return Ok(ListOrder::default());
        };
        let key = OrderKey::INDEXED
            .iter()
            .find(|(_, name)| *name == key)
            .map(|(key, _)| *key)
            .ok_or_else(invalid)?;
        let descending = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(_) => return Err(invalid()),
        };
        if words.next().is_some() {
            return Err(invalid());
        }
        Ok(ListOrder { key, descending })
    }

    /// As `order_by` reads it back.
    pub fn to_order_by(self) -> String {
        match (self.key, self.descending) {
            (OrderKey::Id, _) => String::new(),
            (key, false) => key.as_str().to_owned(),
            (key, true) => format!("{} desc", key.as_str()),
        }
    }

    /// Where a page that ended with `token` stops.
    pub fn position_of(self, token: &ServiceToken) -> Position {
        Position {
            value: self.key.value_of(token),
            id: token.id,
        }
    }
}

/// A key's value: a name, or a time in microseconds since the epoch (a
/// missing time as [`NEVER`] or [`NEVER_USED`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    Text(String),
    Micros(i64),
}

impl SortValue {
    /// Bytes that sort as the value does: a name's bytes, a NUL escaped as
    /// `00 01` and ended by `00 00` (so a name sorts before every longer
    /// one it begins), or a time as a big-endian number with its sign
    /// flipped.
    pub fn sortable(&self, into: &mut Vec<u8>) {
        match self {
            SortValue::Text(text) => {
                for byte in text.bytes() {
                    into.push(byte);
                    if byte == 0 {
                        into.push(1);
                    }
                }
                into.extend_from_slice(&[0, 0]);
            }
            SortValue::Micros(micros) => {
                into.extend_from_slice(&((*micros as u64) ^ (1 << 63)).to_be_bytes())
            }
        }
    }
}

/// A page's last token under an order: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub value: SortValue,
    pub id: TokenId,
}

/// A never-expiring token's expiration: 9999-12-31T23:59:59.999999Z, past
/// every time a token can be given.
pub const NEVER: i64 = 253_402_300_799_999_999;
/// A never-used token's last use: 0001-01-01T00:00:00Z, before every
/// time a use can have.
pub const NEVER_USED: i64 = -62_135_596_800_000_000;

/// `time` in microseconds since the epoch, held within [`NEVER_USED`],
/// [`NEVER`].
pub fn micros(time: SystemTime) -> i64 {
    let micros = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    micros.clamp(NEVER_USED, NEVER)
}

/// The time `micros` since the epoch.
pub fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// A position as a cursor carries it: the order's tag (its top bit set
/// when descending), the id, and the value.
pub fn encode_position(order: ListOrder, position: &Position, into: &mut Vec<u8>) {
    into.push(order.key.tag() | if order.descending { 0x80 } else { 0 });
    into.extend_from_slice(&position.id.get().to_be_bytes());
    match &position.value {
        SortValue::Text(text) => into.extend_from_slice(text.as_bytes()),
        SortValue::Micros(micros) => into.extend_from_slice(&micros.to_be_bytes()),
    }
}

/// The position [`encode_position`] wrote, if it was written for `order`.
pub fn decode_position(order: ListOrder, bytes: &[u8]) -> Option<Position> {
    let (&tag, rest) = bytes.split_first()?;
    let key = OrderKey::of_tag(tag & 0x7f)?;
    if key != order.key || (tag & 0x80 != 0) != order.descending {
        return None;
    }
    let (id, value) = rest.split_at_checked(8)?;
    let id = TokenId::parse(u64::from_be_bytes(id.try_into().ok()?)).ok()?;
    let value = match key {
        OrderKey::Name => SortValue::Text(String::from_utf8(value.to_vec()).ok()?),
        _ => SortValue::Micros(i64::from_be_bytes(value.try_into().ok()?)),
    };
    Some(Position { value, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_by_reads_as_aip_132_writes_it() {
        assert_eq!(ListOrder::parse("").unwrap(), ListOrder::default());
        let parsed = ListOrder::parse("  last_used   desc ").unwrap();
        assert_eq!(
            parsed,
            ListOrder {
                key: OrderKey::LastUsed,
                descending: true
            }
        );
        assert_eq!(parsed.to_order_by(), "last_used desc");
        assert!(!ListOrder::parse("name asc").unwrap().descending);
        for bad in ["id", "name up", "name desc x", "Name", "created,name"] {
            assert_eq!(
                ListOrder::parse(bad).unwrap_err().field,
                "order_by",
                "{bad}"
            );
        }
    }

    #[test]
    fn sortable_bytes_sort_as_the_values_do() {
        let texts = ["", "a", "a\0", "a\0b", "ab", "b", "é", "z\u{10ffff}"];
        let times = [NEVER_USED, -1, 0, 1, 1_700_000_000_000_000, NEVER];
        let values: Vec<SortValue> = texts
            .iter()
            .map(|t| SortValue::Text((*t).to_owned()))
            .chain(times.iter().map(|m| SortValue::Micros(*m)))
            .collect();
        for a in &values {
            for b in &values {
                if std::mem::discriminant(a) != std::mem::discriminant(b) {
                    continue;
                }
                let (mut x, mut y) = (Vec::new(), Vec::new());
                a.sortable(&mut x);
                b.sortable(&mut y);
                assert_eq!(x.cmp(&y), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn positions_round_trip_only_under_their_own_order() {
        let order = ListOrder {
            key: OrderKey::Name,
            descending: true,
        };
        let position = Position {
            value: SortValue::Text("ci-runner".to_owned()),
            id: TokenId::parse(42).unwrap(),
        };
        let mut bytes = Vec::new();
        encode_position(order, &position, &mut bytes);
        assert_eq!(decode_position(order, &bytes), Some(position));
        let ascending = ListOrder {
            descending: false,
            ..order
        };
        assert_eq!(decode_position(ascending, &bytes), None);
        assert_eq!(decode_position(order, &bytes[..5]), None);
    }

    #[test]
    fn times_are_held_within_the_sentinels() {
        assert_eq!(micros(UNIX_EPOCH), 0);
        assert_eq!(from_micros(-5), UNIX_EPOCH - Duration::from_micros(5));
        assert_eq!(micros(from_micros(NEVER)), NEVER);
    }
}
