//! AUTOMATIC1111's prompt attention syntax: `parse_prompt_attention` of the webui's
//! `modules/prompt_parser.py`, reproduced to the bit.
//!
//! Owns the translation of a prompt into `(text, weight)` pieces. Invariants: the pieces'
//! texts, concatenated with the markers' `"BREAK"` left out, are the prompt minus its bracket
//! and weight syntax and minus the whitespace around each `BREAK`; weights are `f64` products
//! computed in the webui's order (each closing bracket multiplies every piece since its opening
//! bracket, unclosed round brackets then unclosed square ones are closed at the end), so they
//! equal the Python floats exactly; adjacent pieces of equal weight are merged; the result is
//! never empty. A `BREAK` (a whole word, with the whitespace around it) becomes the marker
//! `("BREAK", -1.0)` — like the webui, that marker is an ordinary piece afterwards: a bracket
//! around it changes its weight, and then it is no longer a marker but the text "BREAK".
//! Character classes follow Python's `re` on `str`: whitespace is `str.isspace` (Unicode
//! White_Space plus U+001C–U+001F), digits are Unicode decimal digits (Nd), word characters
//! letters, numbers and `_`.
//! Prompt editing (`[a:b:0.5]`, `[a|b]`) and composable `AND` are not handled here: they are
//! the scheduler's business in the webui and reach this parser as plain text.

use super::TextError;
use regex::Regex;
use std::sync::LazyLock;

/// Multiplier of one pair of round brackets.
pub const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;

/// The text of a `BREAK` marker piece; its weight is [`BREAK_WEIGHT`].
pub const BREAK_TEXT: &str = "BREAK";
/// The weight of a `BREAK` marker piece.
pub const BREAK_WEIGHT: f64 = -1.0;

/// True for the marker piece a `BREAK` leaves (text `"BREAK"`, weight exactly -1), which the
/// chunker turns into a chunk boundary.
pub fn is_break(text: &str, weight: f64) -> bool {
    text == BREAK_TEXT && weight == BREAK_WEIGHT
}

/// Python's `str.isspace` (what `\s` means in Python's `re` for `str` patterns).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` for `str`: `str.isalnum()` (letters L*, numbers N*) or `_`.
fn py_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let mut buf = [0u8; 4];
    WORD.as_ref()
        .is_some_and(|re| re.is_match(c.encode_utf8(&mut buf)))
}

static WORD: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^[\p{L}\p{N}]$").ok());
static DECIMAL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").ok());

/// A Unicode decimal digit (category Nd, Python's `\d`).
fn is_decimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut buf = [0u8; 4];
    DECIMAL
        .as_ref()
        .is_some_and(|re| re.is_match(c.encode_utf8(&mut buf)))
}

/// The value of a decimal digit. Unicode assigns Nd characters only in contiguous, ascending
/// runs of ten starting at a zero, so the value is the distance from the start of the
/// contiguous Nd block, modulo 10.
fn decimal_value(c: char) -> u32 {
    let mut start = c as u32;
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_decimal(prev) {
            break;
        }
        start -= 1;
    }
    (c as u32 - start) % 10
}

/// Python's `float()` on a `[+-]?[.\d]+` string: decimal digits of any script count; `None`
/// where Python raises `ValueError` ("1.2.3", ".").
fn python_float(s: &str) -> Option<f64> {
    let ascii: String = s
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c
            } else {
                char::from_digit(decimal_value(c), 10).unwrap_or(c)
            }
        })
        .collect();
    ascii.parse::<f64>().ok()
}

/// One token of the webui's `re_attention` scanner.
enum Token<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\`, or a lone `\` (then empty): the literal after the backslash.
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:` weight `)`, with the whole match and the number's text.
    Weight(&'a str, &'a str),
    CloseRound,
    CloseSquare,
    /// A run of characters other than `\ ( ) [ ] :`, or a lone `:` (the text is the match).
    Text,
}

/// Length in bytes of the `:\s*([+-]?[.\d]+)\s*\)` match at the start of `s` (which begins
/// with ':'), and the number's byte range. The pattern has a single way to match: every
/// quantifier is greedy and no backtracking can help, so a greedy scan is exact.
fn weight_match(s: &str) -> Option<(usize, usize, usize)> {
    // Byte offset of the first character at or after `from` that fails `keep`.
    let scan = |from: usize, keep: &dyn Fn(char) -> bool| {
        s[from..]
            .char_indices()
            .find(|&(_, c)| !keep(c))
            .map_or(s.len(), |(i, _)| from + i)
    };
    let num_start = scan(1, &py_space);
    let sign_end = match s[num_start..].chars().next() {
        Some('+' | '-') => num_start + 1,
        _ => num_start,
    };
    let num_end = scan(sign_end, &|c| c == '.' || is_decimal(c));
    if num_end == sign_end {
        return None;
    }
    let close = scan(num_end, &py_space);
    s[close..]
        .starts_with(')')
        .then_some((close + 1, num_start, num_end))
}

/// The next token of `s` (non-empty) and its length in bytes; the alternatives are tried in
/// the order of the webui's pattern.
fn next_token(s: &str) -> (Token<'_>, usize) {
    let mut chars = s.chars();
    let first = chars.next().unwrap_or(' ');
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => {
                (Token::Escaped(&s[1..1 + c.len_utf8()]), 2)
            }
            _ => (Token::Escaped(""), 1),
        },
        '(' => (Token::OpenRound, 1),
        '[' => (Token::OpenSquare, 1),
        ':' => match weight_match(s) {
            Some((len, a, b)) => (Token::Weight(&s[..len], &s[a..b]), len),
            None => (Token::Text, 1),
        },
        ')' => (Token::CloseRound, 1),
        ']' => (Token::CloseSquare, 1),
        _ => {
            let len = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Token::Text, len)
        }
    }
}

/// Python's `re.split(r"\s*\bBREAK\b\s*", text)`.
pub(crate) fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut part_start = 0;
    for (q, _) in text.match_indices(BREAK_TEXT) {
        if q < part_start {
            continue;
        }
        let end = q + BREAK_TEXT.len();
        let before_ok = text[..q].chars().next_back().is_none_or(|c| !py_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !py_word(c));
        if !(before_ok && after_ok) {
            continue;
        }
        let lead = text[part_start..q]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| py_space(c))
            .last()
            .map_or(q, |(i, _)| part_start + i);
        let trail = text[end..]
            .char_indices()
            .find(|&(_, c)| !py_space(c))
            .map_or(text.len(), |(i, _)| end + i);
        parts.push(&text[part_start..lead]);
        part_start = trail;
    }
    parts.push(&text[part_start..]);
    parts
}

/// The webui's `parse_prompt_attention`: the prompt's pieces with their attention weights.
///
/// `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w (whitespace allowed around w);
/// nesting multiplies; unclosed brackets apply to the rest of the prompt; `\(`, `\)`, `\[`,
/// `\]`, `\\` are literal characters; `BREAK` gives a `("BREAK", -1.0)` marker (see
/// [`is_break`]). An empty prompt gives `[("", 1.0)]`.
///
/// # Errors
/// [`TextError::Weight`] where a weight inside round brackets is not a number (`(x:1.2.3)`),
/// where the webui raises `ValueError`.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<(String, f64)>, TextError> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let square_multiplier = 1.0 / ROUND_BRACKET_MULTIPLIER;

    fn multiply_range(res: &mut [(String, f64)], start: usize, multiplier: f64) {
        for piece in res.iter_mut().skip(start) {
            piece.1 *= multiplier;
        }
    }

    let mut rest = text;
    while !rest.is_empty() {
        let (token, len) = next_token(rest);
        let whole = &rest[..len];
        rest = &rest[len..];
        match token {
            Token::Escaped(lit) => res.push((lit.to_string(), 1.0)),
            Token::OpenRound => round.push(res.len()),
            Token::OpenSquare => square.push(res.len()),
            Token::Weight(m, number) if !round.is_empty() => {
                let w = python_float(number).ok_or_else(|| TextError::Weight {
                    text: m.to_string(),
                })?;
                if let Some(start) = round.pop() {
                    multiply_range(&mut res, start, w);
                }
            }
            Token::CloseRound if !round.is_empty() => {
                if let Some(start) = round.pop() {
                    multiply_range(&mut res, start, ROUND_BRACKET_MULTIPLIER);
                }
            }
            Token::CloseSquare if !square.is_empty() => {
                if let Some(start) = square.pop() {
                    multiply_range(&mut res, start, square_multiplier);
                }
            }
            Token::Weight(..) | Token::CloseRound | Token::CloseSquare | Token::Text => {
                for (i, part) in split_break(whole).into_iter().enumerate() {
                    if i > 0 {
                        res.push((BREAK_TEXT.to_string(), BREAK_WEIGHT));
                    }
                    res.push((part.to_string(), 1.0));
                }
            }
        }
    }
    for &start in &round {
        multiply_range(&mut res, start, ROUND_BRACKET_MULTIPLIER);
    }
    for &start in &square {
        multiply_range(&mut res, start, square_multiplier);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_split_follows_python_re_split() {
        assert_eq!(split_break("a BREAK b"), ["a", "b"]);
        assert_eq!(split_break("BREAK"), ["", ""]);
        assert_eq!(split_break("a BREAK BREAK b"), ["a", "", "b"]);
        assert_eq!(split_break("aBREAK b"), ["aBREAK b"]);
        assert_eq!(split_break("a BREAKs"), ["a BREAKs"]);
        assert_eq!(split_break("a_BREAK"), ["a_BREAK"]);
        assert_eq!(split_break("x,BREAK,y"), ["x,", ",y"]);
        assert_eq!(split_break("a \n BREAK\tb"), ["a", "b"]);
        assert_eq!(split_break("a break b"), ["a break b"]);
        assert_eq!(split_break("éBREAK"), ["éBREAK"]);
        assert_eq!(split_break("2BREAK"), ["2BREAK"]);
    }

    #[test]
    fn weight_numbers_parse_like_python_float() {
        assert_eq!(python_float("1.5"), Some(1.5));
        assert_eq!(python_float("+.5"), Some(0.5));
        assert_eq!(python_float("-2."), Some(-2.0));
        assert_eq!(python_float("1.2.3"), None);
        assert_eq!(python_float("."), None);
        // Arabic-Indic digits: Python's float() accepts any decimal digit.
        assert_eq!(python_float("\u{661}.\u{665}"), Some(1.5));
        // Mathematical bold digit nine (the second run of ten in a contiguous Nd block).
        assert_eq!(python_float("\u{1D7D7}"), Some(9.0));
        assert_eq!(python_float("\u{1D7D8}"), Some(0.0));
    }

    #[test]
    fn word_characters_are_python_isalnum() {
        assert!(py_word('a') && py_word('_') && py_word('7') && py_word('²') && py_word('é'));
        // A combining mark and a circled letter are Unicode-alphabetic, but not `isalnum`.
        assert!(!py_word('\u{301}') && !py_word('\u{24B6}') && !py_word(' ') && !py_word(','));
    }
}
