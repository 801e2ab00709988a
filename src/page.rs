//! List pagination: page sizes and the opaque cursor handed to clients.
//!
//! The cursor names the last id a page showed; the next page starts after it.
//! Because ids never change and the store lists in id order, a cursor stays
//! valid while tokens are created and deleted between pages: no token that
//! exists throughout is skipped or shown twice.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::model::{FieldError, TokenId};

/// Bumped if the cursor's meaning ever changes, so old cursors fail clearly.
const CURSOR_VERSION: u8 = 1;

/// Where a page starts and how long it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<TokenId>,
    pub size: usize,
}

impl PageRequest {
    /// `page_size` 0 means `default`, above `max` means `max`, negative is an
    /// error; `page_token` is empty or a cursor from an earlier page.
    pub fn parse(
        page_size: i32,
        page_token: &str,
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
            Some(decode_cursor(page_token)?)
        };
        Ok(PageRequest { after, size })
    }
}

/// The cursor for the page after one that ended with `last`.
pub fn encode_cursor(last: TokenId) -> String {
    let mut bytes = [0u8; 9];
    bytes[0] = CURSOR_VERSION;
    bytes[1..].copy_from_slice(&last.get().to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(cursor: &str) -> Result<TokenId, FieldError> {
    let invalid = || {
        FieldError::new(
            "page_token",
            "is not a page token this server issued; pass next_page_token unchanged",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let [CURSOR_VERSION, id @ ..] = bytes.as_slice() else {
        return Err(invalid());
    };
    let id: [u8; 8] = id.try_into().map_err(|_| invalid())?;
    TokenId::parse(u64::from_be_bytes(id)).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let id = TokenId::parse(107_484_341_630_693).unwrap();
        let page = PageRequest::parse(5, &encode_cursor(id), 100, 1000).unwrap();
        assert_eq!(
            page,
            PageRequest {
                after: Some(id),
                size: 5
            }
        );
    }

    #[test]
    fn sizes_default_and_clamp() {
        assert_eq!(PageRequest::parse(0, "", 100, 1000).unwrap().size, 100);
        assert_eq!(PageRequest::parse(5000, "", 100, 1000).unwrap().size, 1000);
        assert_eq!(
            PageRequest::parse(-1, "", 100, 1000).unwrap_err().field,
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
                PageRequest::parse(0, bad, 100, 1000).unwrap_err().field,
                "page_token",
                "{bad}"
            );
        }
    }
}
