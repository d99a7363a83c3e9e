//! CLIP's byte-level BPE tokenizer (OpenAI `simple_tokenizer`, HF `CLIPTokenizer`), offline.
//!
//! Owns text → token ids without special tokens, and the canonical GPT-2 byte ↔ unicode table
//! ([`bytes_to_unicode`]). Invariants: the vocabulary always has `<|startoftext|>` and
//! `<|endoftext|>` (checked at load); the pad id is a vocabulary id; encoding never fails —
//! a symbol missing from the vocabulary becomes the unknown token `<|endoftext|>`, as in HF.
//!
//! The pipeline, per text: split out the literal special tokens `<|startoftext|>` and
//! `<|endoftext|>` (case-sensitive, as HF's added-token split does), then per remaining segment
//! HTML-unescape twice (the named entities `&amp; &lt; &gt; &quot; &apos;`, with Python's
//! `html.unescape` rules for legacy names without `;`, and numeric `&#NNN;` / `&#xHH;`
//! references with its replacement tables), strip, collapse whitespace runs to one space,
//! lowercase (Unicode, with final sigma); cut with CLIP's pre-tokenisation pattern; map each
//! piece's UTF-8 bytes through the byte table; run BPE (the last symbol carries `</w>`; each
//! round merges every left-to-right occurrence of the lowest-ranked pair).
//!
//! `ftfy.fix_text`, which A1111's environment and OpenAI's tokenizer apply before everything
//! else, is reproduced in its commonest, table-free parts ([`ftfy_fixes`]): terminal escapes
//! and control characters removed, Latin ligatures spelled out, fullwidth ASCII made ASCII, curly
//! quotes straightened. Not reproduced: its mojibake repair, halfwidth katakana, NFC
//! composition (rare in typed prompts), the HTML5 named entities beyond the five above,
//! and HF's fallback `BasicTokenizer` path taken when ftfy is not installed. HF's tokenizer
//! (A1111 on SD 1.x, diffusers) has no `html.unescape` of its own and relies on ftfy's
//! conditional entity decoding; OpenAI's (A1111 on SD 2.x, through open_clip) unescapes twice,
//! as here. The Python character-class details (which
//! characters are whitespace, letters, case variants) were checked against the Python code on
//! random prompts.

use super::TextError;
use super::prompt::py_space;
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

/// CLIP's beginning-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also its unknown token, and SD 1.x's pad token).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Suffix of a word's last BPE symbol.
pub const END_OF_WORD: &str = "</w>";
/// HF's slow tokenizer keeps at most this many lines of `merges.txt` after the header
/// (`49152 - 256 - 2`; CLIP's file has exactly that many).
pub const MAX_MERGES_TXT: usize = 49152 - 256 - 2;

/// CLIP's pre-tokenisation pattern, `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
/// [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` compiled case-insensitively by Python's `regex` module.
/// That module folds case in the literals and in the negated class but matches the positive
/// property classes as they are; the regex crate would fold those too (U+0345, a combining
/// mark whose case variants are letters, would become a letter), so `(?i)` is scoped to match:
/// U+0345 then matches no alternative and is skipped, as in Python.
const PRETOKENIZE: &str = r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|(?i:[^\s\p{L}\p{N}])+";

/// Token → id.
pub type Vocab = HashMap<String, u32>;
/// Symbol pairs, by rank.
pub type Merges = Vec<(String, String)>;

/// Words cached at most (the cache is cleared when full).
const CACHE_LIMIT: usize = 1 << 16;

/// GPT-2/CLIP's byte ↔ unicode table: the printable bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` map to
/// themselves, the other bytes, in increasing order, to U+0100 upwards. Returned in vocabulary
/// order — entry `i` is the byte and character of CLIP's token id `i` (ids 0–255).
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let others = (0..=255u8).filter(|&b| !printable(b));
    for (n, b) in others.enumerate() {
        let c = char::from_u32(256 + n as u32).unwrap_or(char::REPLACEMENT_CHARACTER);
        out.push((b, c));
    }
    out
}

/// The byte table indexed by byte value.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (b, c) in bytes_to_unicode() {
        table[usize::from(b)] = c;
    }
    table
}

/// Python's `html.unescape`, restricted to the named entities `amp lt gt quot apos` (in both
/// cases where HTML5 has them, and without `;` where HTML5 allows it) and to numeric
/// references, with Python's rules: a name is at most 32 characters, the longest known prefix
/// of an unknown name is replaced, numeric references need no `;`, and invalid code points are
/// replaced (U+FFFD, Windows-1252 for 0x80–0x9F) or dropped as Python does.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        match charref(after) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The named references known here, as Python's `html.entities.html5` spells them.
fn named_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp;" | "amp" | "AMP;" | "AMP" => "&",
        "lt;" | "lt" | "LT;" | "LT" => "<",
        "gt;" | "gt" | "GT;" | "GT" => ">",
        "quot;" | "quot" | "QUOT;" | "QUOT" => "\"",
        "apos;" => "'",
        _ => return None,
    })
}

/// The replacement of the character reference at the start of `s` (just after a `&`) and the
/// bytes it consumes; `None` where Python's pattern does not match.
fn charref(s: &str) -> Option<(String, usize)> {
    if let Some(num) = s.strip_prefix('#') {
        let (radix, digits_at) = match num.as_bytes().first() {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = s[digits_at..]
            .bytes()
            .take_while(|b| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let text = &s[digits_at..digits_at + digits];
        let mut end = digits_at + digits;
        if s[end..].starts_with(';') {
            end += 1;
        }
        // Values past the Unicode range all give U+FFFD; saturate instead of overflowing.
        let value = u32::from_str_radix(text, radix).unwrap_or(u32::MAX);
        return Some((numeric_charref(value), end));
    }
    let name_len: usize = s
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let end = if s[name_len..].starts_with(';') {
        name_len + 1
    } else {
        name_len
    };
    let name = &s[..end];
    if let Some(v) = named_entity(name) {
        return Some((v.to_string(), end));
    }
    // The longest known prefix of at least two characters, as Python looks for it.
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in bounds.iter().rev() {
        if let Some(v) = named_entity(&name[..cut]) {
            return Some((format!("{v}{}", &name[cut..]), end));
        }
    }
    None
}

/// Python's replacement of a numeric character reference.
fn numeric_charref(n: u32) -> String {
    const CP1252: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    let replacement = char::REPLACEMENT_CHARACTER.to_string();
    let chr = |v: u32| char::from_u32(v).map_or_else(|| replacement.clone(), String::from);
    match n {
        0 => replacement.clone(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => chr(CP1252[(n - 0x80) as usize]),
        0xD800..=0xDFFF | 0x11_0000.. => replacement.clone(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        _ if n & 0xFFFE == 0xFFFE => String::new(),
        _ => chr(n),
    }
}

/// The parts of `ftfy.fix_text` (default settings) that need no tables, in ftfy's order:
/// terminal escapes (`ESC [ digits/; letter`) removed; control characters removed (U+0000–0008,
/// 000B, 000E–001F, 007F, 206A–206F, FEFF, FFF9–FFFC, 1D173–1D17A, E0000–E007F); Latin
/// ligatures spelled out (`ﬁ` → `fi`, `Ĳ` → `IJ`, `ŉ` → `ʼn`, …); fullwidth ASCII U+FF01–FF5E and
/// the ideographic space made ASCII; curly single quotes (U+02BC, U+2018–201B) → `'` and double
/// quotes (U+201C–201F) → `"`.
pub fn ftfy_fixes(text: &str) -> String {
    const LIGATURES: [(char, &str); 22] = [
        ('Ĳ', "IJ"),
        ('ĳ', "ij"),
        ('ŉ', "ʼn"),
        ('Ǳ', "DZ"),
        ('ǲ', "Dz"),
        ('ǳ', "dz"),
        ('Ǆ', "DŽ"),
        ('ǅ', "Dž"),
        ('ǆ', "dž"),
        ('Ǉ', "LJ"),
        ('ǈ', "Lj"),
        ('ǉ', "lj"),
        ('Ǌ', "NJ"),
        ('ǋ', "Nj"),
        ('ǌ', "nj"),
        ('ﬀ', "ff"),
        ('ﬁ', "fi"),
        ('ﬂ', "fl"),
        ('ﬃ', "ffi"),
        ('ﬄ', "ffl"),
        ('ﬅ', "ſt"),
        ('ﬆ', "st"),
    ];
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // ESC [ (digits | ;)* letter
        if c == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        i += 1;
        let control = matches!(
            c as u32,
            0x00..=0x08
                | 0x0B
                | 0x0E..=0x1F
                | 0x7F
                | 0x206A..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFC
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE007F
        );
        if control {
            continue;
        }
        if let Some((_, s)) = LIGATURES.iter().find(|(l, _)| *l == c) {
            for d in s.chars() {
                out.push(if d == 'ʼ' { '\'' } else { d });
            }
            continue;
        }
        out.push(match c as u32 {
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            0x3000 => ' ',
            0x02BC | 0x2018..=0x201B => '\'',
            0x201C..=0x201F => '"',
            _ => c,
        });
    }
    out
}

/// CLIP's text normalisation: [`ftfy_fixes`], HTML-unescape twice, strip, collapse whitespace
/// runs to one space, strip, lowercase. As in the Python (`str.strip` but the `regex`
/// module's `\s`), U+001C–U+001F are stripped at the ends but are not whitespace inside.
pub fn normalize(text: &str) -> String {
    let text = html_unescape(&html_unescape(&ftfy_fixes(text)));
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.trim_matches(py_space).chars() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out.to_lowercase()
}

/// CLIP's BPE tokenizer; see the module documentation.
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// Merge ranks: first symbol → second symbol → rank (lower merges first).
    ranks: HashMap<String, HashMap<String, usize>>,
    byte_chars: [char; 256],
    bos: u32,
    eos: u32,
    pad: u32,
    comma: Option<u32>,
    pretokenize: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_len", &self.vocab.len())
            .field(
                "merges",
                &self.ranks.values().map(HashMap::len).sum::<usize>(),
            )
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, TextError> {
    crate::files::require_regular(path)
        .and_then(|_| std::fs::read_to_string(path))
        .map_err(|source| TextError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn read_json(path: &Path) -> Result<Value, TextError> {
    serde_json::from_str(&read(path)?).map_err(|e| TextError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn format_error(path: &Path, key: &str, what: impl Into<String>) -> TextError {
    TextError::Format {
        path: path.to_path_buf(),
        key: key.to_string(),
        what: what.into(),
    }
}

/// Parse `merges.txt`: the `#version:` header is skipped, blank lines are ignored, every other
/// line is two symbols separated by whitespace; at most [`MAX_MERGES_TXT`] merges are kept,
/// as in HF's slow tokenizer.
pub fn parse_merges_txt(text: &str, path: &Path) -> Result<Vec<(String, String)>, TextError> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 && line.starts_with("#version") {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (a, b) = match (parts.next(), parts.next(), parts.next()) {
            (None, ..) => continue,
            (Some(a), Some(b), None) => (a, b),
            _ => {
                return Err(TextError::MergeLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            }
        };
        if merges.len() < MAX_MERGES_TXT {
            merges.push((a.to_string(), b.to_string()));
        }
    }
    Ok(merges)
}

/// The vocabulary and merges of an HF `tokenizer.json` (`model.vocab`, `model.merges` as
/// `"a b"` strings or `["a", "b"]` pairs; `added_tokens` fill ids the vocabulary lacks).
pub fn parse_tokenizer_json(json: &Value, path: &Path) -> Result<(Vocab, Merges), TextError> {
    let model = json
        .get("model")
        .ok_or_else(|| format_error(path, "model", "is missing; is this an HF tokenizers file?"))?;
    if let Some(kind) = model.get("type").and_then(Value::as_str)
        && kind != "BPE"
    {
        return Err(format_error(
            path,
            "model.type",
            format!(
                "is '{kind}', but CLIP's tokenizer is 'BPE'; use the model's own tokenizer/ folder"
            ),
        ));
    }
    let vocab_json = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| format_error(path, "model.vocab", "must be an object of token → id"))?;
    let mut vocab = HashMap::with_capacity(vocab_json.len());
    for (token, id) in vocab_json {
        let id = id
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                format_error(
                    path,
                    "model.vocab",
                    format!("maps '{token}' to {id}, not to a token id (an integer ≥ 0)"),
                )
            })?;
        vocab.insert(token.clone(), id);
    }
    if let Some(added) = json.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            let content = t.get("content").and_then(Value::as_str);
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok());
            if let (Some(content), Some(id)) = (content, id) {
                vocab.entry(content.to_string()).or_insert(id);
            }
        }
    }
    let merges_json = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| format_error(path, "model.merges", "must be an array of merges"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for (i, m) in merges_json.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s
                .split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(v) => match v.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            format_error(
                path,
                &format!("model.merges[{i}]"),
                format!("is {m}, expected \"a b\" or [\"a\", \"b\"]"),
            )
        })?);
    }
    Ok((vocab, merges))
}

/// The `pad_token` of a `special_tokens_map.json` / `tokenizer_config.json` value: a string
/// or `{"content": …}`; `None` when absent or null.
fn pad_token_of(json: &Value, path: &Path) -> Result<Option<String>, TextError> {
    match json.get("pad_token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => match v.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format_error(
                path,
                "pad_token",
                format!("is {v}, expected a token string or {{\"content\": token}}"),
            )),
        },
    }
}

/// OpenAI CLIP's BPE merges as published (`bpe_simple_vocab_16e6.txt.gz` of OpenAI's CLIP
/// repository, taken from the `open_clip_torch` 3.3.0 wheel, SHA-256 924691ac288e5440…;
/// MIT License, Copyright (c) 2021 OpenAI: `src/text/BPE_VOCAB_LICENSE`). SD 1.x and 2.x both
/// use this vocabulary.
const OPENAI_BPE_GZ: &[u8] = include_bytes!("bpe_simple_vocab_16e6.txt.gz");
/// Merges OpenAI's `SimpleTokenizer` reads: the file's lines 1 to 48 894 (49 152 − 256 − 2).
pub const OPENAI_MERGES: usize = 49_152 - 256 - 2;

impl ClipTokenizer {
    /// OpenAI CLIP's tokenizer from the built-in vocabulary, built as `SimpleTokenizer` builds
    /// it: the 256 byte symbols, their `</w>` forms, one symbol per merge (the pair joined), then
    /// `<|startoftext|>` and `<|endoftext|>` — 49 408 ids, the same as HF's
    /// `openai/clip-vit-large-patch14` vocabulary. Pad = EOS (SD 1.x); SD 2.x pads with `!`
    /// ([`ClipTokenizer::with_pad_token`]).
    pub fn openai() -> Result<Self, TextError> {
        use std::io::Read;
        let damaged = |what: String| TextError::BuiltinVocab { what };
        let mut text = String::new();
        flate2::read::GzDecoder::new(OPENAI_BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|e| damaged(e.to_string()))?;
        let merges: Merges = text
            .split('\n')
            .skip(1)
            .take(OPENAI_MERGES)
            .enumerate()
            .map(|(i, line)| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(damaged(format!("merge line {} is '{line}'", i + 2))),
                }
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != OPENAI_MERGES {
            return Err(damaged(format!("{} merges", merges.len())));
        }
        let mut symbols: Vec<String> = Vec::with_capacity(2 * 256 + merges.len() + 2);
        let bytes = bytes_to_unicode();
        symbols.extend(bytes.iter().map(|(_, c)| c.to_string()));
        symbols.extend(bytes.iter().map(|(_, c)| format!("{c}{END_OF_WORD}")));
        symbols.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        symbols.push(BOS_TOKEN.into());
        symbols.push(EOS_TOKEN.into());
        let vocab: Vocab = symbols
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i as u32))
            .collect();
        Self::build(vocab, merges, "the built-in OpenAI CLIP vocabulary")
    }

    /// Load a diffusers `tokenizer/` folder: `vocab.json` + `merges.txt`, or else
    /// `tokenizer.json`. The pad token comes from `special_tokens_map.json`, else
    /// `tokenizer_config.json` (`pad_token`), else it is `<|endoftext|>`.
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let json_path = dir.join("tokenizer.json");
        let mut tok = if vocab_path.is_file() && merges_path.is_file() {
            let vocab: HashMap<String, u32> =
                serde_json::from_str(&read(&vocab_path)?).map_err(|e| TextError::Json {
                    path: vocab_path.clone(),
                    message: format!("{e} (expected an object of token → id)"),
                })?;
            let merges = parse_merges_txt(&read(&merges_path)?, &merges_path)?;
            Self::build(vocab, merges, &vocab_path.display().to_string())?
        } else if json_path.is_file() {
            let (vocab, merges) = parse_tokenizer_json(&read_json(&json_path)?, &json_path)?;
            Self::build(vocab, merges, &json_path.display().to_string())?
        } else {
            return Err(TextError::MissingFiles {
                dir: dir.to_path_buf(),
            });
        };
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            if let Some(pad) = pad_token_of(&read_json(&path)?, &path)? {
                tok.pad = tok
                    .vocab
                    .get(&pad)
                    .copied()
                    .ok_or_else(|| TextError::PadToken {
                        origin: path.display().to_string(),
                        token: pad.clone(),
                    })?;
                break;
            }
        }
        Ok(tok)
    }

    /// A tokenizer from an in-memory vocabulary and merges (rank = position); pad = EOS.
    pub fn from_parts(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
    ) -> Result<Self, TextError> {
        Self::build(
            vocab,
            merges,
            "the vocabulary given to ClipTokenizer::from_parts",
        )
    }

    /// The same tokenizer with another pad token (SD 2.x's diffusers tokenizer pads with `!`).
    pub fn with_pad_token(mut self, token: &str) -> Result<Self, TextError> {
        self.pad = self.token_id(token).ok_or_else(|| TextError::PadToken {
            origin: "ClipTokenizer::with_pad_token".to_string(),
            token: token.to_string(),
        })?;
        Ok(self)
    }

    fn build(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        origin: &str,
    ) -> Result<Self, TextError> {
        let special = |token: &'static str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| TextError::MissingSpecial {
                    origin: origin.to_string(),
                    token,
                })
        };
        let (bos, eos) = (special(BOS_TOKEN)?, special(EOS_TOKEN)?);
        let mut ranks: HashMap<String, HashMap<String, usize>> = HashMap::new();
        // A repeated pair keeps its last rank, as Python's dict(zip(merges, range(...))) does.
        for (rank, (a, b)) in merges.into_iter().enumerate() {
            ranks.entry(a).or_default().insert(b, rank);
        }
        let pretokenize = Regex::new(PRETOKENIZE).map_err(|e| TextError::Pattern {
            message: e.to_string(),
        })?;
        let comma = vocab.get(",</w>").copied();
        Ok(Self {
            vocab,
            ranks,
            byte_chars: byte_chars(),
            bos,
            eos,
            pad: eos,
            comma,
            pretokenize,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// `<|startoftext|>`'s id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// `<|endoftext|>`'s id (also the unknown token's).
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The pad token's id.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// A vocabulary entry's id (`"a</w>"`, `"<|endoftext|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// `,</w>`'s id (what A1111's comma backtracking looks for), if the vocabulary has it.
    pub fn comma_id(&self) -> Option<u32> {
        self.comma
    }

    /// Number of vocabulary entries.
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// Token ids of `text`, without BOS/EOS and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = [(BOS_TOKEN, self.bos), (EOS_TOKEN, self.eos)]
                .into_iter()
                .filter_map(|(t, id)| rest.find(t).map(|p| (p, t.len(), id)))
                .min();
            let Some((p, len, id)) = next else {
                self.encode_segment(rest, &mut out);
                return out;
            };
            self.encode_segment(&rest[..p], &mut out);
            out.push(id);
            rest = &rest[p + len..];
        }
    }

    fn encode_segment(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let text = normalize(text);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for piece in self.pretokenize.find_iter(&text) {
            let piece = piece.as_str();
            if piece == BOS_TOKEN {
                out.push(self.bos);
                continue;
            }
            if piece == EOS_TOKEN {
                out.push(self.eos);
                continue;
            }
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(piece);
            out.extend_from_slice(&ids);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(piece.to_string(), ids);
        }
    }

    /// The merge rank of a symbol pair.
    fn rank(&self, a: &str, b: &str) -> Option<usize> {
        self.ranks.get(a).and_then(|m| m.get(b)).copied()
    }

    /// BPE of one pre-tokenised piece, as ids.
    fn bpe(&self, piece: &str) -> Vec<u32> {
        let mut word: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_chars[usize::from(b)].to_string())
            .collect();
        match word.last_mut() {
            Some(last) => last.push_str(END_OF_WORD),
            None => return Vec::new(),
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.rank(&w[0], &w[1]))
                .min();
            let Some(best) = best else { break };
            let (first, second) = word
                .windows(2)
                .find(|w| self.rank(&w[0], &w[1]) == Some(best))
                .map(|w| (w[0].clone(), w[1].clone()))
                .unwrap_or_default();
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word.iter()
            .map(|s| self.vocab.get(s).copied().unwrap_or(self.eos))
            .collect()
    }
}
