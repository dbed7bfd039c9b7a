//! Validation and normalisation of the user-supplied strings that end up in events: room
//! names, user names and message text. Gateways call these on every client frame and every
//! consumer calls them again on every delivery, so a producer that skips validation cannot
//! smuggle bad data to users.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Limits that operators may tune; rooms are fixed by the protocol (`[A-Za-z0-9_-]{1,64}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest user name, in characters (Unicode scalar values) after normalisation.
    pub max_name: usize,
    /// Longest message text, in characters after normalisation.
    pub max_text: usize,
    /// Largest websocket frame a client may send, in bytes.
    pub max_frame: usize,
}

impl Limits {
    /// What a gateway accepts from clients unless configured otherwise.
    pub const DEFAULT: Limits = Limits {
        max_name: 32,
        max_text: 4000,
        max_frame: 16 * 1024,
    };

    /// The bounds every consumer enforces on deliveries (`Event::decode`): generous enough
    /// for any sane gateway configuration, tight enough that one delivery cannot make a
    /// consumer allocate without limit. A gateway configured above them would ack messages
    /// that every consumer then dead-letters, so its configuration is refused.
    pub const DECODE: Limits = Limits {
        max_name: 128,
        max_text: 64 * 1024,
        max_frame: 0,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Longest room name, in bytes (rooms are ASCII).
pub const MAX_ROOM: usize = 64;

/// Longest reason for a deletion, in characters after normalisation.
pub const MAX_REASON: usize = 200;

/// Longest reaction key, in bytes (UTF-8): room for one emoji of several code points (a
/// family, a flag, a skin tone), not for a sentence.
pub const MAX_KEY_BYTES: usize = 32;

/// Longest reaction key, in characters (Unicode scalar values).
pub const MAX_KEY_CHARS: usize = 8;

/// Why a string was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("room must be 1 to {MAX_ROOM} characters of A-Z, a-z, 0-9, '_' or '-'")]
    Room,
    #[error("name must be 1 to {max} characters, without control characters")]
    Name { max: usize },
    #[error("text must be 1 to {max} characters")]
    Text { max: usize },
    #[error("reason must be 1 to {MAX_REASON} characters")]
    Reason,
    #[error(
        "a reaction key must be one emoji: 1 to {MAX_KEY_CHARS} characters and at most \
         {MAX_KEY_BYTES} bytes, not plain ASCII, without white space or control characters"
    )]
    Key,
}

/// Checks a room name. Rooms are plain ASCII so that they are safe in queue names, URLs,
/// file names and log lines alike; nothing is rewritten.
pub fn room(raw: &str) -> Result<&str, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ROOM
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(raw)
    } else {
        Err(Invalid::Room)
    }
}

/// Normalises a user name: Unicode NFC, surrounding white space trimmed, and no control,
/// line-separator or bidirectional-override characters at all (they can forge other users'
/// lines in a log or reorder what a reader sees).
pub fn name(raw: &str, limits: &Limits) -> Result<String, Invalid> {
    if plain_name(raw, limits) {
        return Ok(raw.to_owned());
    }
    normalise_name(raw, limits)
}

/// [`name`] the long way, for every input.
fn normalise_name(raw: &str, limits: &Limits) -> Result<String, Invalid> {
    let err = Invalid::Name {
        max: limits.max_name,
    };
    let normalised: String = raw.nfc().collect();
    let trimmed = normalised.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > limits.max_name
        || trimmed.chars().any(is_invisible_control)
    {
        return Err(err);
    }
    Ok(trimmed.to_owned())
}

/// Normalises message text: Unicode NFC, line breaks kept as `\n` (CRLF and CR become LF),
/// tabs become spaces, and every other control or bidi-override character is dropped. Text
/// that is empty or only white space after that is refused.
pub fn text(raw: &str, limits: &Limits) -> Result<String, Invalid> {
    if plain_text(raw, limits) {
        return Ok(raw.to_owned());
    }
    normalise_text(raw, limits)
}

/// Normalises the reason given for a deletion: like message text (NFC, line breaks kept,
/// other control characters dropped), at most [`MAX_REASON`] characters.
pub fn reason(raw: &str) -> Result<String, Invalid> {
    let limits = Limits {
        max_text: MAX_REASON,
        ..Limits::DEFAULT
    };
    text(raw, &limits).map_err(|_| Invalid::Reason)
}

/// Checks a reaction key: Unicode NFC (a key that is not is refused, never rewritten, so
/// that one emoji is one key), 1 to [`MAX_KEY_CHARS`] characters and at most
/// [`MAX_KEY_BYTES`] bytes, no white space, no control, line-separator or bidi character, and
/// at least one character outside ASCII: an emoji, not a word (`+1`, `lol` are refused; a
/// keycap such as `1️⃣` passes).
pub fn reaction_key(raw: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_KEY_BYTES
        && raw.chars().count() <= MAX_KEY_CHARS
        && !raw.is_ascii()
        && !raw
            .chars()
            .any(|c| c.is_whitespace() || is_invisible_control(c))
        && is_nfc_quick(raw.chars()) != IsNormalized::No
        && raw.nfc().eq(raw.chars());
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid::Key)
    }
}

/// [`text`] the long way, for every input.
fn normalise_text(raw: &str, limits: &Limits) -> Result<String, Invalid> {
    let err = Invalid::Text {
        max: limits.max_text,
    };
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.nfc().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            c if is_invisible_control(c) => {}
            c => out.push(c),
        }
    }
    if out.trim().is_empty() || out.chars().count() > limits.max_text {
        return Err(err);
    }
    Ok(out)
}

/// Whether a name is exactly what [`name`] makes of it: the check every consumer runs on
/// every delivery. Common names are told by looking (a quick NFC check and a scan), without
/// building the normalised copy; anything else takes the full path. Errors as [`name`].
pub fn is_normal_name(raw: &str, limits: &Limits) -> Result<bool, Invalid> {
    if plain_name(raw, limits) {
        return Ok(true);
    }
    Ok(normalise_name(raw, limits)? == raw)
}

/// Whether message text is exactly what [`text`] makes of it, told by looking when it can
/// (see [`is_normal_name`]). Errors as [`text`].
pub fn is_normal_text(raw: &str, limits: &Limits) -> Result<bool, Invalid> {
    if plain_text(raw, limits) {
        return Ok(true);
    }
    Ok(normalise_text(raw, limits)? == raw)
}

/// A valid name that normalising leaves as it is, told without normalising.
fn plain_name(raw: &str, limits: &Limits) -> bool {
    is_nfc_quick(raw.chars()) == IsNormalized::Yes
        && !raw.is_empty()
        && raw.trim() == raw
        && !raw.chars().any(is_invisible_control)
        && raw.chars().count() <= limits.max_name
}

/// Valid text that normalising leaves as it is, told without normalising.
fn plain_text(raw: &str, limits: &Limits) -> bool {
    is_nfc_quick(raw.chars()) == IsNormalized::Yes
        && !raw.trim().is_empty()
        && !raw.chars().any(|c| c != '\n' && is_invisible_control(c))
        && raw.chars().count() <= limits.max_text
}

/// Characters refused in names and dropped from message text (where only `\n` is kept):
/// control characters, Unicode line/paragraph separators and bidirectional controls, which
/// could break a log line or make text read differently from what was sent.
fn is_invisible_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_ascii_words_of_at_most_64_bytes() {
        assert!(room("lobby").is_ok());
        assert!(room("a-b_C9").is_ok());
        assert!(room(&"x".repeat(64)).is_ok());
        assert_eq!(room(&"x".repeat(65)), Err(Invalid::Room));
        assert_eq!(room(""), Err(Invalid::Room));
        assert_eq!(room("lob by"), Err(Invalid::Room));
        assert_eq!(room("lobby.events"), Err(Invalid::Room));
        assert_eq!(room("café"), Err(Invalid::Room));
    }

    #[test]
    fn names_are_nfc_trimmed_and_free_of_control_characters() {
        let l = Limits::default();
        // "e" + combining acute accent becomes the single precomposed character.
        assert_eq!(name(" Rene\u{301} ", &l).unwrap(), "Ren\u{e9}");
        assert!(name("al\nice", &l).is_err());
        assert!(name("al\u{202E}ice", &l).is_err());
        assert!(name("   ", &l).is_err());
        assert!(name(&"é".repeat(32), &l).is_ok());
        assert!(name(&"é".repeat(33), &l).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_quick_checks_agree_with_normalising_and_comparing(
            raw in "(\\PC|[\\r\\n\\t \u{301}\u{202E}\u{2028}e])*",
        ) {
            let l = Limits { max_name: 8, max_text: 8, max_frame: 0 };
            let full = normalise_text(&raw, &l);
            proptest::prop_assert_eq!(&text(&raw, &l), &full);
            proptest::prop_assert_eq!(is_normal_text(&raw, &l), full.map(|t| t == raw));
            let full = normalise_name(&raw, &l);
            proptest::prop_assert_eq!(&name(&raw, &l), &full);
            proptest::prop_assert_eq!(is_normal_name(&raw, &l), full.map(|n| n == raw));
        }
    }

    #[test]
    fn reaction_keys_are_short_emoji_and_nothing_else() {
        for key in ["👍", "❤️", "🎉", "1️⃣", "👨‍👩‍👧‍👦", "🇫🇷", "👍🏽"]
        {
            assert_eq!(reaction_key(key).as_deref(), Ok(key), "{key}");
        }
        for key in [
            "",
            "+1",
            "lol",
            "👍 ",
            " 👍",
            "👍\n",
            "\u{202E}👍",
            "👍👍👍👍👍👍👍👍👍",
            "e\u{301}",
        ] {
            assert_eq!(reaction_key(key), Err(Invalid::Key), "{key:?}");
        }
        assert_eq!(
            reaction_key(&"🎉".repeat(9)),
            Err(Invalid::Key),
            "too many bytes"
        );
    }

    #[test]
    fn a_reason_is_normalised_like_text_and_short() {
        assert_eq!(reason("spam\r\n").as_deref(), Ok("spam\n"));
        assert_eq!(
            reason(&"x".repeat(MAX_REASON)).map(|r| r.len()),
            Ok(MAX_REASON)
        );
        assert_eq!(reason(&"x".repeat(MAX_REASON + 1)), Err(Invalid::Reason));
        assert_eq!(reason("  "), Err(Invalid::Reason));
    }

    #[test]
    fn text_keeps_newlines_but_no_other_control_characters() {
        let l = Limits::default();
        assert_eq!(text("a\r\nb\rc\td\u{7}e", &l).unwrap(), "a\nb\nc de");
        assert_eq!(text("x\u{2028}y", &l).unwrap(), "xy");
        assert!(text(" \n ", &l).is_err());
        assert!(text(&"a".repeat(4000), &l).is_ok());
        assert!(text(&"a".repeat(4001), &l).is_err());
    }
}
