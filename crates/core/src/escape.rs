//! Text from a trace made safe for a terminal.
//!
//! Keys, prompts, paths and other header strings come from files that anyone can write, so a
//! key holding `ESC [ 2 J` or a newline would clear the screen or forge output lines when
//! printed raw. [`printable`] escapes every control character (C0, DEL, C1) and the Unicode
//! bidirectional overrides, Rust-style (`\n`, `\t`, `\r`, `\x1b`, `\u{202e}`), and leaves
//! everything else, including non-ASCII text, as it is. The JSON outputs need none of this:
//! JSON strings escape control characters themselves.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control characters escaped; borrowed when there are none (the usual case).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert!(matches!(printable("unet.mid_block"), Cow::Borrowed(_)));
        assert_eq!(printable("süß 猫"), "süß 猫");
        assert_eq!(
            printable("a\u{1b}[2Jb\nc\td\re\u{7f}f\u{9b}g\u{202e}h"),
            "a\\x1b[2Jb\\nc\\td\\re\\x7ff\\u{9b}g\\u{202e}h"
        );
        assert!(!printable("\u{1b}\u{7}\n").chars().any(|c| c.is_control()));
    }
}
