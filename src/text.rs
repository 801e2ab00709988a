//! Characters that mislead a reader where a name is shown (a terminal, a
//! table, a log viewer): what new names may not hold, and what the CLI
//! and the console escape in names an earlier release stored.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Unicode format characters (general category Cf: bidi overrides and
/// isolates, zero-width spaces and joiners, the BOM): they make a name
/// read on screen as another one, or as nothing at all.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Whether `c` may mislead where a name is shown, beyond format
/// characters: a line or paragraph separator (a terminal or log viewer
/// breaks the line), a space other than U+0020 or a character drawn as
/// blank (NBSP, U+3000, the Hangul fillers, the braille blank: a name
/// reading as another, or as nothing), a private-use or unassigned code
/// point (drawn as the viewer's font pleases).
pub fn is_misleading(c: char) -> bool {
    use GeneralCategory::{
        LineSeparator, ParagraphSeparator, PrivateUse, SpaceSeparator, Unassigned,
    };
    match c.general_category() {
        LineSeparator | ParagraphSeparator | PrivateUse | Unassigned => true,
        SpaceSeparator => c != ' ',
        _ => matches!(
            c,
            '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}'
        ),
    }
}

/// The most combining marks a name may stack on one character: enough for
/// any script's accents, not for text that spills over the lines around it.
pub const MAX_COMBINING_MARKS: usize = 4;

/// The longest run of combining marks in `text`.
pub fn longest_mark_run(text: &str) -> usize {
    use GeneralCategory::{EnclosingMark, NonspacingMark, SpacingMark};
    let (mut longest, mut run) = (0, 0);
    for c in text.chars() {
        run = match c.general_category() {
            NonspacingMark | SpacingMark | EnclosingMark => run + 1,
            _ => 0,
        };
        longest = longest.max(run);
    }
    longest
}

/// `text` with every character that could mislead its reader (see
/// [`is_format`], [`is_misleading`]) written as `\u{...}`: how the console
/// shows a name an earlier release stored, so none reads as another.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| is_format(c) || is_misleading(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_format(c) || is_misleading(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}
