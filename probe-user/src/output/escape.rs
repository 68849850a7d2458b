//! Untrusted text on the way to a terminal. A traced process chooses its own name, its paths
//! and its symbols; written raw, a name like `\e]0;...\a` would retitle, recolour or worse the
//! terminal of whoever runs probe (root). Like `ls -b` and `ps`, probe shows control characters
//! escaped instead.
//!
//! Hand-written rather than taken from a crate: what counts as dangerous here (C0, DEL and the
//! C1 controls, which some terminals act on even in UTF-8) is exactly `char::is_control`, and
//! the escapes are two lines; `std`'s `escape_debug` also escapes quotes and some printable
//! characters, which would garble every name with a `'` in it.

use std::{borrow::Cow, fmt::Write as _};

/// `text` with every control character shown as an escape (`\e`, `\t`, `\r`, `\n`, `\x7f`,
/// `\u{9b}`) and backslashes doubled, so that what is shown cannot be mistaken for an escape.
/// Text with nothing to escape is returned as it is, without copying.
pub fn terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => safe.push_str("\\\\"),
            '\x1b' => safe.push_str("\\e"),
            '\t' => safe.push_str("\\t"),
            '\r' => safe.push_str("\\r"),
            '\n' => safe.push_str("\\n"),
            c if (c as u32) < 0x100 && c.is_control() => {
                // Writing to a String cannot fail.
                let _ = write!(safe, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(safe, "\\u{{{:x}}}", c as u32);
            }
            c => safe.push(c),
        }
    }
    Cow::Owned(safe)
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control()
}

/// Makes serialized JSON safe for a terminal: JSON leaves DEL and the C1 controls raw inside
/// strings (only C0 must be escaped), so they are rewritten as `\u007f`, `\u0080`... They can
/// only occur inside strings (JSON's own syntax is ASCII), so the result is the same JSON.
pub fn json_controls(json: &mut Vec<u8>) {
    // DEL is one byte; C1 controls are U+0080..U+009F, two bytes in UTF-8: C2 80..C2 9F.
    let dangerous = |bytes: &[u8], i: usize| -> Option<(u32, usize)> {
        match bytes[i] {
            0x7f => Some((0x7f, 1)),
            0xc2 if bytes.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                Some((u32::from(bytes[i + 1]), 2))
            }
            _ => None,
        }
    };
    if !(0..json.len()).any(|i| dangerous(json, i).is_some()) {
        return;
    }
    let mut safe = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while i < json.len() {
        match dangerous(json, i) {
            Some((code, width)) => {
                safe.extend_from_slice(format!("\\u{code:04x}").as_bytes());
                i += width;
            }
            None => {
                safe.push(json[i]);
                i += 1;
            }
        }
    }
    *json = safe;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn controls_are_shown_escaped_and_plain_text_untouched() {
        assert!(matches!(terminal("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(
            terminal("\x1b]0;PWNED\x07\x1b[31mX"),
            "\\e]0;PWNED\\x07\\e[31mX"
        );
        assert_eq!(
            terminal("a\tb\r\n\x7f\u{9b}c\\"),
            "a\\tb\\r\\n\\x7f\\x9bc\\\\"
        );
        assert_eq!(terminal("naïve ünïcode"), "naïve ünïcode");
    }

    #[test]
    fn json_keeps_its_meaning_without_raw_controls() {
        let mut json = serde_json::to_vec(&"a\u{7f}b\u{9b}c é").unwrap();
        json_controls(&mut json);
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        let back: String = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, "a\u{7f}b\u{9b}c é");
    }

    proptest! {
        /// Whatever a process calls itself, nothing that reaches the terminal is a control
        /// character, and distinct names stay distinct.
        #[test]
        fn no_control_character_survives(text in any::<String>(), other in any::<String>()) {
            let shown = terminal(&text);
            prop_assert!(!shown.chars().any(char::is_control));
            if text != other {
                prop_assert_ne!(shown, terminal(&other));
            }
            let mut json = serde_json::to_vec(&text).unwrap();
            json_controls(&mut json);
            let json_text = String::from_utf8(json.clone()).unwrap();
            prop_assert!(!json_text.chars().any(char::is_control));
            let back: String = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, text);
        }
    }
}
