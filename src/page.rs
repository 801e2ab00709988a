//! List pagination: page sizes and the opaque cursor handed to clients.
//!
//! The cursor names where the last page stopped: its last id (version 1,
//! the id order every release has had), or its last token's value under
//! the list's `order_by` and its id (version 2); the next page starts
//! after it. Every order ends with the id, so a cursor stays valid while
//! tokens are created, changed and deleted between pages: no token that
//! exists throughout and keeps its value is skipped or shown twice.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::model::{
    FieldError, ListOrder, OrderKey, Position, SortValue, TokenId, decode_position, encode_position,
};

/// Bumped if the cursor's meaning ever changes, so old cursors fail clearly.
const CURSOR_VERSION: u8 = 1;
/// A cursor of an ordered list: a [`Position`] and the order it is in.
const ORDERED_CURSOR_VERSION: u8 = 2;

/// Where a page starts, in which order, and how long it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub order: ListOrder,
    pub after: Option<Position>,
    pub size: usize,
}

impl PageRequest {
    /// The first page in id order.
    pub fn first(size: usize) -> PageRequest {
        PageRequest {
            order: ListOrder::default(),
            after: None,
            size,
        }
    }

    /// The page in id order after `id`.
    pub fn after_id(id: Option<TokenId>, size: usize) -> PageRequest {
        PageRequest {
            after: id.map(|id| Position {
                value: SortValue::Micros(0),
                id,
            }),
            ..PageRequest::first(size)
        }
    }
}

impl PageRequest {
    /// `page_size` 0 means `default`, above `max` means `max`, negative is an
    /// error; `page_token` is empty or a cursor from an earlier page.
    pub fn parse(
        page_size: i32,
        page_token: &str,
        order: ListOrder,
        default: usize,
        max: usize,
    ) -> Result<PageRequest, FieldError> {
        let size = match usize::try_from(page_size) {
            Err(_) => return Err(FieldError::new("page_size", "must not be negative")),
            Ok(0) => default,
            Ok(n) => n.min(max),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_cursor(page_token, order)?)
        };
        Ok(PageRequest { order, after, size })
    }
}

/// The cursor for the page after one that ended at `last` in `order`.
pub fn encode_cursor(order: ListOrder, last: &Position) -> String {
    if order.key == OrderKey::Id {
        let mut bytes = [0u8; 9];
        bytes[0] = CURSOR_VERSION;
        bytes[1..].copy_from_slice(&last.id.get().to_be_bytes());
        return URL_SAFE_NO_PAD.encode(bytes);
    }
    let mut bytes = vec![ORDERED_CURSOR_VERSION];
    encode_position(order, last, &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(cursor: &str, order: ListOrder) -> Result<Position, FieldError> {
    let invalid = || {
        FieldError::new(
            "page_token",
            "is not a page token this server issued for this order_by; pass next_page_token unchanged, with the same order_by",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    match bytes.as_slice() {
        [CURSOR_VERSION, id @ ..] if order.key == OrderKey::Id => {
            let id: [u8; 8] = id.try_into().map_err(|_| invalid())?;
            let id = TokenId::parse(u64::from_be_bytes(id)).map_err(|_| invalid())?;
            Ok(Position {
                value: SortValue::Micros(0),
                id,
            })
        }
        [ORDERED_CURSOR_VERSION, position @ ..] => {
            decode_position(order, position).ok_or_else(invalid)
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let id = TokenId::parse(107_484_341_630_693).unwrap();
        let by_id = ListOrder::default();
        let at = PageRequest::after_id(Some(id), 5).after.unwrap();
        let page = PageRequest::parse(5, &encode_cursor(by_id, &at), by_id, 100, 1000).unwrap();
        assert_eq!(page, PageRequest::after_id(Some(id), 5));
        let by_name = ListOrder::parse("name desc").unwrap();
        let at = Position {
            value: SortValue::Text("z".to_owned()),
            id,
        };
        let cursor = encode_cursor(by_name, &at);
        let page = PageRequest::parse(5, &cursor, by_name, 100, 1000).unwrap();
        assert_eq!(page.after, Some(at));
        // Under another order the cursor is refused, not misread.
        for other in [by_id, ListOrder::parse("name").unwrap()] {
            let refused = PageRequest::parse(5, &cursor, other, 100, 1000).unwrap_err();
            assert_eq!(refused.field, "page_token");
        }
    }

    #[test]
    fn sizes_default_and_clamp() {
        assert_eq!(
            PageRequest::parse(0, "", ListOrder::default(), 100, 1000)
                .unwrap()
                .size,
            100
        );
        assert_eq!(
            PageRequest::parse(5000, "", ListOrder::default(), 100, 1000)
                .unwrap()
                .size,
            1000
        );
        assert_eq!(
            PageRequest::parse(-1, "", ListOrder::default(), 100, 1000)
                .unwrap_err()
                .field,
            "page_size"
        );
    }

    #[test]
    fn foreign_cursors_are_refused() {
        for bad in [
            "x",
            "AAAA",
            "!!",
            &URL_SAFE_NO_PAD.encode([2u8; 9]),
            &URL_SAFE_NO_PAD.encode([1u8, 0, 0, 0, 0, 0, 0, 0, 0]),
        ] {
            assert_eq!(
                PageRequest::parse(0, bad, ListOrder::default(), 100, 1000)
                    .unwrap_err()
                    .field,
                "page_token",
                "{bad}"
            );
        }
    }
}
